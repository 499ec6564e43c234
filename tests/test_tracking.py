"""MLflow tracking with real servers (`python -m mlflow_server` on loopback), real Ray, real files."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus
from ray import tune

from fracture_models.data import load_split, resolve_dataset_root
from fracture_models.errors import UserError
from tests.conftest import DIRECT, MlflowServer, free_port, search_args
from tuning.run import main
from tuning.tracking import CHAMPION, champion_decision

PNG = b"\x89PNG\r\n\x1a\n"


_args = search_args


def _job_runs(client: MlflowClient, job: str, role: str = "trial") -> tuple[object, list]:
    """The job's parent run and its children of one role (trial or confirmation)."""
    experiment = client.get_experiment_by_name("fracture-cnn")
    parents = client.search_runs([experiment.experiment_id], f"tags.job_name = '{job}' and tags.role = 'search'")
    assert len(parents) == 1
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}' and tags.role = '{role}'"
    )
    return parents[0], children


def test_search_is_tracked_on_the_team_server(ray_session, tiny_download: Path, tmp_path: Path, tracking_server, postgres_database):
    # The team path end to end: MLflow on PostgreSQL behind the server, the Optuna study in PostgreSQL too.
    optuna_url = postgres_database("optuna")
    args = _args(
        tiny_download,
        tmp_path,
        "tracked",
        "--num-samples",
        "4",
        "--epochs",
        "3",
        "--grace-period",
        "1",
        "--reduction-factor",
        "2",
        "--metric",
        "val_loss",
        "--tracking-uri",
        tracking_server.url,
        "--optuna-storage",
        optuna_url,
    )
    assert main(args) == 0
    summary = json.loads((tmp_path / "tracked" / "summary.json").read_text())
    client = MlflowClient(tracking_server.url)
    parent, children = _job_runs(client, "tracked")

    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["arch"] == "cnn" and tags["data_fingerprint"] == summary["job"]["data_fingerprint"]
    assert json.loads(tags["search_space"])["lr"] and json.loads(tags["baseline"])["step_size"] == 7
    assert json.loads(tags["package_versions"])["torch"] == version("torch")
    assert parent.data.metrics["test_accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert parent.data.metrics["best_val_loss"] == pytest.approx(summary["best_trial"]["best_value"])
    assert parent.data.metrics["trial_hours"] > 0 and parent.data.metrics["gpu_hours"] == 0  # CPU trials
    assert parent.data.metrics["trials"] == 4
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/summary.json", "report/trials.csv", "report/test_confusion_matrix.png", "report/optuna_history.png"} <= report
    assert {"report/test_roc_curve.png", "report/test_reliability.png", "report/test_gradcam.png"} <= report
    # The clinical figures and the data audit are on the parent run too.
    sensitivity = summary["clinical"]["at_0.5"]["fracture_sensitivity"]
    assert parent.data.metrics["test_fracture_sensitivity_ci_low"] == pytest.approx(sensitivity["ci95"][0])
    assert parent.data.metrics["test_ece_calibrated"] == pytest.approx(summary["clinical"]["calibration"]["after"]["ece"])
    assert tags["audit_cross_split_groups"] == str(summary["job"]["audit"]["cross_split_groups"]) and tags["audit_dedupe"] == "False"
    assert {"audit/audit.json", "audit/duplicates.csv", "audit/attributes.csv"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "audit")
    }

    # One nested run per trial, each with its per-epoch history, state and confusion matrix.
    assert len(children) == 4
    assert {c.data.tags["ray_trial_id"] for c in children} == {r["trial_id"] for r in summary["trials"]}
    by_trial = {r["trial_id"]: r for r in summary["trials"]}
    for child in children:
        row = by_trial[child.data.tags["ray_trial_id"]]
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == list(range(1, row["epochs"] + 1))
        assert child.data.tags["state"] == row["status"]
        assert child.data.tags["stopped_early"] == str(row["status"] == "stopped early").lower()
        assert set(child.data.params) >= {"lr", "step_size", "gamma", "aug_strength", "arch", "epochs"}
        assert {"val_fracture_f1", "val_fracture_specificity", "val_roc_auc", "learning_rate", "train_loss"} <= set(child.data.metrics)
        png = Path(client.download_artifacts(child.info.run_id, "plots/confusion_matrix.png", str(tmp_path / child.info.run_id)))
        assert png.read_bytes()[:8] == PNG
    assert any(c.data.tags["stopped_early"] == "true" for c in children)

    # The winner is registered; `champion` points at it; it loads and predicts like the tested checkpoint.
    champion = client.get_model_version_by_alias("fracture-cnn", CHAMPION)
    assert champion.run_id == parent.info.run_id
    assert champion.tags["trial_id"] == summary["best_trial"]["trial_id"]
    mlflow.set_tracking_uri(tracking_server.url)
    try:
        model = mlflow.pyfunc.load_model("models:/fracture-cnn@champion")
        requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/fracture-cnn@champion")).read_text().split()
    finally:
        mlflow.set_tracking_uri(None)  # it also sets $MLFLOW_TRACKING_URI, which later searches would follow
    # What serving it needs, stated rather than inferred (inference loads the model in a subprocess).
    needed = {"mlflow", "torch", "torchvision", "numpy", "pillow", "scikit-learn", "scipy", "pandas"}
    assert {r.split("==")[0] for r in requirements} == needed
    root = resolve_dataset_root(tiny_download)
    test = load_split(root, "test", 32)
    probability = model.predict(pd.DataFrame({"path": [str(root / p) for p in test.paths]}))["fracture_probability"].to_numpy()
    predicted = torch.from_numpy((probability >= 0.5).astype("int64"))
    assert (predicted == test.labels).float().mean().item() == pytest.approx(summary["test"]["accuracy"])

    # `champion` moves only for a better value on the same data and metric.
    value = float(champion.tags["value"])
    same = {"metric": "val_loss", "mode": "min", "data_fingerprint": champion.tags["data_fingerprint"]}
    assert champion_decision(client, "fracture-cnn", {**same, "value": value + 0.1}).startswith("kept")
    assert champion_decision(client, "fracture-cnn", {**same, "value": value - 0.1}).startswith("promoted")
    assert "other data" in champion_decision(client, "fracture-cnn", {**same, "data_fingerprint": "x", "value": value - 0.1})


def test_unreachable_tracking_server_fails_before_training(ray_session, tiny_download: Path, tmp_path: Path):
    start = time.monotonic()
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match="Cannot reach the MLflow tracking store"):
        main(_args(tiny_download, tmp_path, "offline", "--num-samples", "2", "--epochs", "1", "--tracking-uri", dead))
    assert time.monotonic() - start < 60
    assert not (tmp_path / "offline").exists()


class _Outage(tune.Callback):
    """Stops the tracking server after the first trial ends and starts it again after the third.

    The server lives on the class: Tune pickles callbacks with the experiment.
    """

    server: MlflowServer | None = None

    def __init__(self) -> None:
        self.ended = 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended += 1
        if self.ended == 1:
            type(self).server.stop()
        elif self.ended == 3:
            type(self).server.start()


def test_tracking_outage_mid_job_loses_no_metric(ray_session, tiny_download: Path, tmp_path: Path):
    from tuning.run import get_args_parser, run_search

    server = MlflowServer(tmp_path / "store").start()
    _Outage.server = server
    try:
        args = _args(
            tiny_download, tmp_path, "outage", "--num-samples", "4", "--epochs", "3", "--scheduler", "none", "--tracking-uri", server.url
        )
        assert run_search(get_args_parser().parse_args(args), callbacks=[_Outage()]) == 0
        assert server.healthy()
        client = MlflowClient(server.url)
        parent, children = _job_runs(client, "outage")
        _, confirmations = _job_runs(client, "outage", role="confirmation")
        assert len(children) == 4 and len(confirmations) == 1  # 25% of the search's 12 epochs: one 3-epoch run
        for child in children + confirmations:
            for key in ("val_loss", "val_fracture_f1", "train_loss"):
                assert sorted(m.step for m in client.get_metric_history(child.info.run_id, key)) == [1, 2, 3]
            assert child.info.status == "FINISHED"
            # Its best checkpoint reached MLflow through the outbox too, as the run's logged model.
            [output] = child.outputs.model_outputs
            assert client.get_logged_model(output.model_id).status == LoggedModelStatus.READY
        assert "test_fracture_f1" in parent.data.metrics and parent.info.status == "FINISHED"
        assert client.get_model_version_by_alias("fracture-cnn", CHAMPION).run_id == parent.info.run_id
        assert not (tmp_path / "outage" / "mlflow_outbox.jsonl").exists()
    finally:
        server.stop()


def _get(url: str, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with DIRECT.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_auth_server_refuses_anonymous_and_lets_the_admin_log(tmp_path: Path, monkeypatch):
    password = "s3cret-for-this-test"
    server = MlflowServer(
        tmp_path / "store",
        "--auth",
        "--allowed-hosts",
        "mlflow.team.test,mlflow.team.test:*",
        env={"MLFLOW_AUTH_ADMIN_PASSWORD": password},
    ).start()
    try:
        search = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _get(search) == 401
        # The team's DNS name passes the host check (then needs a login); any other name is refused.
        assert _get(search, {"Host": f"mlflow.team.test:{server.port}"}) == 401
        assert _get(search, {"Host": f"rebound.example:{server.port}"}) == 403
        token = base64.b64encode(f"admin:{password}".encode()).decode()
        assert _get(search, {"Authorization": f"Basic {token}"}) == 200
        assert _get(search, {"Authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()}) == 401
        assert _get(f"{server.url}/leaderboard") == 401  # fracture-tune's page obeys --auth too
        assert _get(f"{server.url}/leaderboard", {"Authorization": f"Basic {token}"}) == 200

        from tuning.tracking import check_reachable

        with pytest.raises(UserError, match="refused these credentials"):
            check_reachable(server.url)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        check_reachable(server.url)
        client = MlflowClient(server.url)
        run = client.create_run(client.create_experiment("auth-check"))
        client.log_metric(run.info.run_id, "val_fracture_f1", 0.5, step=1)
        assert client.get_run(run.info.run_id).data.metrics["val_fracture_f1"] == 0.5
        assert password not in (tmp_path / "store" / "logs" / f"server-{server.port}.log").read_text()
    finally:
        server.stop()
    # Ctrl-C stopped the server and its workers: clean exit, nothing answers any more.
    assert server.process.returncode == 0 and not server.healthy()


def test_a_rotated_admin_password_takes_effect_and_the_auth_files_are_private(tmp_path: Path):
    import stat

    store = tmp_path / "store"
    (store / "auth").mkdir(parents=True, mode=0o755)  # made earlier, world-readable
    search = "/api/2.0/mlflow/experiments/search?max_results=1"

    def basic(password: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}

    for old, new in ((None, "first-password-1"), ("first-password-1", "rotated-password-2")):
        server = MlflowServer(store, "--auth", env={"MLFLOW_AUTH_ADMIN_PASSWORD": new}).start()
        try:
            assert _get(server.url + search, basic(new)) == 200
            if old is not None:
                assert _get(server.url + search, basic(old)) == 401  # the old password no longer works
        finally:
            server.stop()
    assert stat.S_IMODE((store / "auth").stat().st_mode) == 0o700
    for private in (store / "auth" / "users.db", store / "mlflow.db"):
        assert stat.S_IMODE(private.stat().st_mode) & 0o077 == 0, private


@pytest.mark.parametrize(
    "flags, env, message",
    [
        (["--auth"], {}, "MLFLOW_AUTH_ADMIN_PASSWORD"),
        (["--host", "0.0.0.0"], {}, "--auth"),
    ],
)
def test_server_refuses_unsafe_starts(tmp_path: Path, flags, env, message):
    import os

    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_AUTH_ADMIN_PASSWORD"} | env
    done = subprocess.run(
        [sys.executable, "-m", "mlflow_server", "--store", str(tmp_path), "--port", str(free_port()), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def _render(chromium: str, url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, from headless Chromium."""
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=30000",
            "--window-size=1600,1000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout


def test_mlflow_ui_shows_the_experiment_and_its_runs_in_chromium(tracking_server, tmp_path: Path):
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium is missing: apt-get install chromium (see README, Development)")
    client = MlflowClient(tracking_server.url)
    experiment = client.create_experiment("fracture-ui-check")
    parent = client.create_run(experiment, run_name="ui-search-parent", tags={"role": "search"})
    children = []
    for name in ("ui-trial-one", "ui-trial-two"):
        child = client.create_run(experiment, run_name=name, tags={"mlflow.parentRunId": parent.info.run_id})
        client.log_metric(child.info.run_id, "val_fracture_f1", 0.8, step=1)
        client.set_terminated(child.info.run_id)
        children.append(child.info.run_id)
    client.set_terminated(parent.info.run_id)

    runs_page = _render(chromium, f"{tracking_server.url}/#/experiments/{experiment}/runs", tmp_path / "a")
    assert "fracture-ui-check" in runs_page and "ui-search-parent" in runs_page
    child_page = _render(chromium, f"{tracking_server.url}/#/experiments/{experiment}/runs/{children[0]}", tmp_path / "b")
    assert "ui-trial-one" in child_page and "ui-search-parent" in child_page and "val_fracture_f1" in child_page


def test_urls_are_recorded_without_passwords():
    from fracture_models.records import redact_url

    assert redact_url("postgresql://mlflow:hunter2@db.internal:5432/mlflow") == "postgresql://mlflow:***@db.internal:5432/mlflow"
    assert redact_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redact_url("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"


def test_an_oversized_request_gets_413_and_the_server_stays_up(tmp_path: Path):
    server = MlflowServer(tmp_path / "store", "--max-request-mb", "2").start()
    try:
        body = b'{"max_results": 1, "filter": "' + b"x" * (20 * 2**20) + b'"}'
        request = urllib.request.Request(
            f"{server.url}/api/2.0/mlflow/experiments/search", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with DIRECT.open(request, timeout=60) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (ConnectionResetError, BrokenPipeError, urllib.error.URLError):
            status = "connection closed"
        assert status == 413
        assert server.healthy()
        # Ordinary requests and artifact uploads still work.
        client = MlflowClient(server.url)
        run = client.create_run(client.create_experiment("after-413"))
        big = tmp_path / "artifact.bin"
        big.write_bytes(b"\0" * (3 * 2**20))  # over the 2 MB cap: uploads are not capped
        client.log_artifact(run.info.run_id, str(big))
        assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["artifact.bin"]
    finally:
        server.stop()


def _epoch(epoch: int, val_loss: float) -> dict:
    counts = {"val_fractures_detected": 4, "val_fractures_missed": 4, "val_false_alarms": 2, "val_true_negatives": 6}
    return {"training_iteration": epoch, "val_loss": val_loss, "train_loss": val_loss + 0.5, "val_fracture_f1": 0.5 + epoch / 100, **counts}


def test_a_trial_trained_again_from_an_earlier_epoch_keeps_each_epoch_once_from_the_attempt_that_went_on(tmp_path: Path):
    """A driver restored from a snapshot older than what reached MLflow trains epochs its trial's run
    already holds: the run's history must hold each epoch once, with the values of the attempt that
    went on, and no model of the attempt that did not."""
    import pickle

    from fracture_models.config import TrainConfig
    from fracture_models.engine import build_training, make_checkpoint, save_checkpoint
    from tuning.job import JobSpec
    from tuning.tracking.tracker import SearchTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = JobSpec.from_json(
        {
            "name": "restarted",
            "arch": "cnn",
            "weights": "none",
            "num_samples": 1,
            "epochs": 3,
            "image_size": 32,
            "batch_size": 8,
            "seed": 0,
            "metric": "val_fracture_f1",
            "team": "t",
            "user": "u",
            "data_root": str(tmp_path),
            "data_fingerprint": "f",
            "sampler": "tpe",
            "sampler_seed": 0,
            "scheduler": {"name": "none"},
            "search_space": {},
            "baseline": {"lr": 1e-3},
        }
    )
    checkpoint = make_checkpoint(build_training(TrainConfig(arch="cnn", image_size=32, batch_size=8)), _epoch(3, 1.0))
    checkpoint_file = save_checkpoint({**checkpoint, "epoch": 3}, tmp_path / "checkpoint.pt")

    @contextmanager
    def best_checkpoint():
        yield checkpoint_file

    first = SearchTracker(uri, job, tmp_path / "job")
    first.start()
    snapshot = pickle.dumps(first)  # Ray Tune's snapshot of the experiment, taken before the trial reported
    first.trial_started("t1", {"lr": 1e-3})
    history = [_epoch(e, 1.0 + e) for e in (1, 2, 3)]
    for row in history:
        first.trial_result("t1", row)
    first.trial_ended("t1", history, failed=False, checkpoint=best_checkpoint, params={"lr": 1e-3})
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fracture-cnn").experiment_id
    [old] = client.search_runs([experiment], "tags.ray_trial_id = 't1'")
    [old_model] = client.search_logged_models([experiment])
    assert [(m.step, m.value) for m in client.get_metric_history(old.info.run_id, "val_loss")] == [(1, 2.0), (2, 3.0), (3, 4.0)]

    restored = pickle.loads(snapshot)  # the driver killed and restored: the trial goes on from its epoch-1 checkpoint
    # The outbox replaying a write that had reached MLflow before the kill is no restart.
    [sent] = [m for m in client.get_metric_history(old.info.run_id, "val_loss") if m.step == 3]
    restored._send({"op": "epoch", "trial_id": "t1", "step": 3, "metrics": {"val_loss": 4.0}, "timestamp_ms": sent.timestamp})
    assert client.search_runs([experiment], "tags.ray_trial_id = 't1'")[0].info.run_id == old.info.run_id
    again = [history[0]] + [_epoch(e, 10.0 + e) for e in (2, 3)]
    for row in again[1:]:
        restored.trial_result("t1", row)
    restored.trial_ended("t1", again, failed=False, checkpoint=best_checkpoint, params={"lr": 1e-3})

    [new] = client.search_runs([experiment], "tags.ray_trial_id = 't1'")
    assert new.info.run_id != old.info.run_id and new.info.status == "FINISHED"
    for key, values in (("val_loss", [2.0, 12.0, 13.0]), ("train_loss", [2.5, 12.5, 13.5])):
        assert [(m.step, m.value) for m in client.get_metric_history(new.info.run_id, key)] == list(zip((1, 2, 3), values)), key
    assert [(m.step, m.value) for m in client.get_metric_history(new.info.run_id, "best_val_fracture_f1")] == [(3, 0.53)]
    assert new.data.params == old.data.params and new.data.tags["restarted_from_run"] == old.info.run_id
    assert new.data.tags["mlflow.parentRunId"] == old.data.tags["mlflow.parentRunId"] and new.data.tags["role"] == "trial"
    gone = client.get_run(old.info.run_id)
    assert gone.info.lifecycle_stage == "deleted" and gone.data.tags["restarted_as_run"] == new.info.run_id
    [model] = client.search_logged_models([experiment])
    assert model.model_id != old_model.model_id and model.source_run_id == new.info.run_id
