"""The MLflow UI's landing for the project (issue 17): from the server's front page, a click on an
experiment opens its runs table in the model-training view, with the columns that compare trials;
every link the project prints goes there too. Real server, real search, real Chromium, driven
over the DevTools protocol so that it can click."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import MlflowServer, search_args
from tuning.run import main as search
from tuning.tracking.names import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    RUNS_VIEW_TAG,
    best_metric_name,
)
from tuning.tracking.ui import experiment_tags, runs_table_url, trials_columns

METRIC = "val_fracture_f1"  # the search's default selection metric
COLUMNS = [best_metric_name(METRIC), "best_val_fracture_sensitivity", "best_val_fracture_specificity", "state", "stopped_early"]


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe):
    JSON messages ending in a NUL byte, written to its fd 3 and read from its fd 4."""

    def __init__(self, profile: Path, size: tuple[int, int] = (2560, 1200)) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.fail("Chromium is missing: apt-get install chromium (see README, Development)")
        to_browser, from_browser = os.pipe(), os.pipe()
        its_input, its_output = to_browser[0], from_browser[1]

        def on_fds_3_and_4() -> None:  # in the child: dup first, so neither end is already 3 or 4
            reading, writing = os.dup(its_input), os.dup(its_output)
            os.dup2(reading, 3)
            os.dup2(writing, 4)

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            + ["--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}"]
            + [f"--window-size={size[0]},{size[1]}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=on_fds_3_and_4,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(its_input)
        os.close(its_output)
        self._send = os.fdopen(to_browser[1], "wb", buffering=0)
        self._receive = os.fdopen(from_browser[0], "rb", buffering=0)
        self._ids = itertools.count(1)
        self._replies: dict[int, dict] = {}
        self._arrived = threading.Condition()
        threading.Thread(target=self._read_replies, daemon=True).start()
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def _read_replies(self) -> None:
        pending = b""
        while chunk := self._receive.read(1 << 16):
            pending += chunk
            *messages, pending = pending.split(b"\0")
            for message in map(json.loads, messages):
                if "id" in message:  # events are not needed here
                    with self._arrived:
                        self._replies[message["id"]] = message
                        self._arrived.notify_all()

    def call(self, method: str, session: str | None = None, timeout_s: float = 60, **params) -> dict:
        number = next(self._ids)
        message = {"id": number, "method": method, "params": params, **({"sessionId": session} if session else {})}
        self._send.write(json.dumps(message).encode() + b"\0")
        with self._arrived:
            if not self._arrived.wait_for(lambda: number in self._replies, timeout_s):
                raise TimeoutError(f"Chromium did not answer {method} within {timeout_s} s")
            reply = self._replies.pop(number)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=self.session, url=url)

    def js(self, expression: str):
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", session=self.session, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 90):
        """The first truthy value of `expression`, polled while the page loads and renders."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if value := self.js(expression):
                return value
            time.sleep(0.25)
        raise AssertionError(f"never true within {timeout_s} s: {expression}\npage: {self.js('location.href')}\n{self.text()[:2000]}")

    def click(self, selector_expression: str) -> None:
        """A real mouse click (move, press, release) on the middle of the element the expression finds."""
        x, y = self.wait_for(
            f"(() => {{ const e = {selector_expression}; if (!e) return null; e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return r.width && [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=self.session, type=kind, x=x, y=y, button="left", clickCount=1)

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout_s=10)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._send.close()
        self._receive.close()


def _link_named(name: str) -> str:
    return f"[...document.querySelectorAll('a')].find(a => a.textContent.trim() === {json.dumps(name)})"


HEADERS = "[...document.querySelectorAll('[role=columnheader]')].map(e => e.innerText.trim()).filter(Boolean)"


@pytest.fixture(scope="module")
def landing(ray_session, tiny_download: Path, tmp_path_factory) -> dict:
    """A server holding `fracture-cnn` made bare, as before issue 17, then used by one search; the
    server restarted after it, as a user would to browse; the search's printed output."""
    root = tmp_path_factory.mktemp("landing")
    server = MlflowServer(root / "store").start()
    try:
        experiment = MlflowClient(server.url).create_experiment("fracture-cnn")  # no kind, no view
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            flags = ["--num-samples", "2", "--epochs", "2", "--scheduler", "none", "--confirm-top", "0", "--tracking-uri", server.url]
            assert search(search_args(tiny_download, root / "runs", "landing", *flags)) == 0
        server.stop()
        server.start()
        yield {"server": server, "experiment": experiment, "printed": printed.getvalue(), "profiles": root}
    finally:
        server.stop()


def test_the_front_page_leads_to_the_runs_table_with_the_trials_columns(landing):
    server, experiment = landing["server"], landing["experiment"]
    client = MlflowClient(server.url)
    [job] = client.search_runs([experiment], "tags.role = 'search'")
    trials = {r.info.run_name: r for r in client.search_runs([experiment], "tags.role = 'trial'")}
    assert len(trials) == 2

    browser = Chromium(landing["profiles"] / "front-page")  # a browser that never chose anything in MLflow
    try:
        browser.open(server.url)
        browser.click(_link_named("fracture-cnn"))
        browser.wait_for(f"location.hash.startsWith('#/experiments/{experiment}/runs?')")
        assert "workflowType=machine_learning" in browser.js("location.hash")
        headers = browser.wait_for(f"(h => {json.dumps(COLUMNS)}.every(c => h.includes(c)) && h)({HEADERS})")
        assert "Run Name" in headers
        page = browser.text()
        assert "Token Usage" not in page and "Latency" not in page  # not the GenAI overview
        assert browser.js("document.querySelector('[data-component-id^=\"mlflow.assistant.chat_panel\"]')") is None  # assistant closed

        # The job's row opens into its trials, each with its values at its best epoch as MLflow holds them.
        browser.click(f"{_link_named(job.info.run_name)}.closest('.ag-cell').querySelector('button')")
        for name, run in trials.items():
            cells = browser.wait_for(
                f"(() => {{ const a = {_link_named(name)}; if (!a) return null; const row = a.closest('[role=row]').getAttribute('row-id');"
                ' return Object.fromEntries([...document.querySelectorAll(`[role=row][row-id="${row}"] [col-id]`)]'
                ".map(c => [c.getAttribute('col-id'), c.innerText.trim()])); })()"
            )
            assert cells["tags.`state`"] == run.data.tags["state"] == "completed"
            assert cells["tags.`stopped_early`"] == "false"
            for metric in COLUMNS[:3]:
                assert float(cells[f"metrics.`{metric}`"]) == pytest.approx(run.data.metrics[metric], abs=5e-3), (name, metric)
    finally:
        browser.close()


def test_every_printed_link_goes_to_the_runs_table(landing):
    from tuning.leaderboard import collect_jobs

    server, experiment = landing["server"], landing["experiment"]
    runs_table = runs_table_url(server.url, experiment)
    assert runs_table == f"{server.url}/#/experiments/{experiment}/runs?workflowType=machine_learning"
    assert f"browse: {runs_table}" in landing["printed"]  # the end of the search
    assert f"Runs of fracture-cnn: {runs_table}" in server.output.read_text()  # the server's start message
    assert [job.link for job in collect_jobs(MlflowClient(server.url), server.url, METRIC)] == [runs_table]  # the leaderboard

    browser = Chromium(landing["profiles"] / "printed-link")
    try:
        browser.open(runs_table)
        browser.wait_for(f"(h => {json.dumps(COLUMNS)}.every(c => h.includes(c)) && h)({HEADERS})")
        assert browser.js("location.hash").startswith(f"#/experiments/{experiment}/runs?")
    finally:
        browser.close()


def test_an_experiment_made_before_gets_the_kind_and_the_view_and_trials_their_best_epoch(landing):
    server, experiment = landing["server"], landing["experiment"]
    client = MlflowClient(server.url)
    tags = client.get_experiment(experiment).tags
    assert tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    view = json.loads(tags[RUNS_VIEW_TAG])
    assert view["name"] == "Trials" and json.loads(view["state"])["selectedColumns"] == trials_columns([METRIC])
    for run in client.search_runs([experiment], "tags.role = 'trial'"):
        best = int(run.data.tags["best_epoch"])
        for name in (METRIC, "val_fracture_sensitivity", "val_fracture_specificity"):
            [at_best] = [m.value for m in client.get_metric_history(run.info.run_id, name) if m.step == best]
            assert run.data.metrics[best_metric_name(name)] == pytest.approx(at_best)


def test_the_view_keeps_what_it_holds_and_gains_a_new_selection_metric():
    fresh = experiment_tags({}, METRIC, now_ms=1000)
    assert fresh[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert experiment_tags(fresh, METRIC, now_ms=2000) == {}  # nothing missing: nothing written again

    loss = experiment_tags(fresh, "val_loss", now_ms=2000)[RUNS_VIEW_TAG]
    assert json.loads(json.loads(loss)["state"])["selectedColumns"] == ["metrics.`best_val_loss`", *trials_columns([METRIC])]
    assert (json.loads(loss)["createdAt"], json.loads(loss)["updatedAt"]) == (1000, 2000)

    chosen = {EXPERIMENT_KIND_TAG: "genai_development", RUNS_VIEW_TAG: '{"name": "Trials", "state": "H4sIAAAA"}'}
    assert experiment_tags(chosen, "val_loss", now_ms=3000) == {}  # a kind someone chose, a view saved compressed: kept


def test_the_page_presets_the_columns_only_of_experiments_the_user_may_read(tmp_path: Path, monkeypatch):
    import base64
    import urllib.error
    import urllib.request

    from mlflow.server.auth.client import AuthServiceClient

    from mlflow_server.app import runs_layout_key
    from tests.conftest import DIRECT

    password = "admin-secret-for-this-test"
    server = MlflowServer(
        tmp_path / "store", "--auth", "--default-permission", "NO_PERMISSIONS", env={"MLFLOW_AUTH_ADMIN_PASSWORD": password}
    ).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        experiment = MlflowClient(server.url).create_experiment("fracture-cnn", tags=experiment_tags({}, METRIC, now_ms=1))
        AuthServiceClient(server.url).create_user("newcomer", "newcomer-password-1")  # granted nothing

        def page(user: str, secret: str) -> str:
            login = base64.b64encode(f"{user}:{secret}".encode()).decode()
            request = urllib.request.Request(f"{server.url}/", headers={"Authorization": f"Basic {login}"})
            with DIRECT.open(request, timeout=60) as response:
                assert response.headers["Cache-Control"] == "no-store"
                return response.read().decode()

        layout = json.dumps(runs_layout_key(experiment))  # the key of the experiment's columns, as the page has it
        admin, newcomer = page("admin", password), page("newcomer", "newcomer-password-1")
        assert layout in admin and "best_val_fracture_sensitivity" in admin
        assert layout not in newcomer and "best_val_fracture_sensitivity" not in newcomer
        assert '"mlflow.workflowType_v1"' in newcomer  # the model-training view is for everyone
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            DIRECT.open(f"{server.url}/", timeout=60)
        assert anonymous.value.code == 401
    finally:
        server.stop()
