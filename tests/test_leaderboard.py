"""Leaderboards from a real MLflow server holding real searches of two teams."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.conftest import MlflowServer
from tuning.leaderboard import main as leaderboard
from tuning.run import main as search


@pytest.fixture(scope="module")
def two_teams(ray_session, tiny_download: Path, tmp_path_factory) -> tuple[MlflowServer, dict[str, float]]:
    """A server with one finished search by team alpha and one by team beta."""
    root = tmp_path_factory.mktemp("leaderboard")
    server = MlflowServer(root / "store").start()
    best = {}
    for team, seed in (("alpha", "1"), ("beta", "2")):
        name = f"{team}-job"
        assert (
            search(
                [
                    "--arch",
                    "cnn",
                    "--data-dir",
                    str(tiny_download),
                    "--image-size",
                    "32",
                    "--batch-size",
                    "16",
                    "--epochs",
                    "2",
                    "--num-samples",
                    "2",
                    "--scheduler",
                    "none",
                    "--seed",
                    seed,
                    "--metric",
                    "val_loss",
                    "--team",
                    team,
                    "--name",
                    name,
                    "--storage-path",
                    str(root / "runs"),
                    "--tracking-uri",
                    server.url,
                ]
            )
            == 0
        )
        best[name] = json.loads((root / "runs" / name / "summary.json").read_text())["best_trial"]["best_value"]
    yield server, best
    server.stop()


def _board(server: MlflowServer, tmp_path: Path, *flags: str) -> str:
    out = tmp_path / "board.txt"
    assert leaderboard(["--tracking-uri", server.url, "--metric", "val_loss", "--out", str(out), *flags]) == 0
    return out.read_text()


def test_jobs_rank_by_validation_in_every_format(two_teams, tmp_path: Path):
    server, best = two_teams
    expected = sorted(best, key=best.get)  # val_loss (continuous, so no ties): lower first

    rows = list(csv.DictReader(io.StringIO(_board(server, tmp_path, "--format", "csv"))))
    jobs = [r for r in rows if r["rank"] != "study"]
    assert [r["job"] for r in jobs] == expected
    assert [r["rank"] for r in jobs] == ["1", "2"]
    assert [float(r["best"]) for r in jobs] == pytest.approx(sorted(best.values()), abs=1e-4)
    assert all(r["link"].startswith(f"{server.url}/#/experiments/") for r in jobs)
    assert {r["arch"] for r in rows if r["rank"] == "study"} == {"cnn", "resnet50", "vgg16"}
    assert [r for r in rows if r["arch"] == "vgg16"][0]["test acc"] == "0.9763"

    for fmt in ("table", "markdown", "html"):
        text = _board(server, tmp_path, "--format", fmt)
        assert text.index(expected[0]) < text.index(expected[1]), fmt
        assert "0.8913" in text and "0.9368" in text and "0.9763" in text, fmt  # the study's rows
        assert "reported" in text, fmt
    assert _board(server, tmp_path, "--format", "html").count('<a href="http://127.0.0.1') == 2


def test_filters_and_grouping(two_teams, tmp_path: Path):
    server, _ = two_teams
    alpha = list(csv.DictReader(io.StringIO(_board(server, tmp_path, "--format", "csv", "--team", "alpha"))))
    assert [r["team"] for r in alpha if r["rank"] != "study"] == ["alpha"]
    by_arch = list(csv.DictReader(io.StringIO(_board(server, tmp_path, "--format", "csv", "--by", "arch"))))
    assert len([r for r in by_arch if r["rank"] != "study"]) == 1  # the best cnn job only
    vgg = _board(server, tmp_path, "--arch", "vgg16")
    assert "No finished searches yet for arch vgg16" in vgg and "0.9763" in vgg and "0.8913" not in vgg


def test_an_empty_store_gives_a_friendly_board(tmp_path: Path, capsys):
    from tuning.tracking.store import backend_uri

    assert leaderboard(["--tracking-uri", backend_uri(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert "No finished searches yet" in out and "python -m tuning.run" in out
    assert "0.9763" in out


def test_leaderboard_page_in_chromium(two_teams, tmp_path: Path):
    import shutil
    import subprocess

    from tests.conftest import DIRECT

    server, best = two_teams
    with DIRECT.open(f"{server.url}/leaderboard?metric=val_loss&team=beta", timeout=30) as response:
        filtered = response.read().decode()
    assert "beta-job" in filtered and "alpha-job" not in filtered and "0.9763" in filtered

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium is missing: apt-get install chromium (see README, Development)")
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,900",
    ]
    url = f"{server.url}/leaderboard?metric=val_loss"
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    expected = sorted(best, key=best.get)
    assert dom.index(expected[0]) < dom.index(expected[1])
    assert dom.count('<tr class="job">') == 2 and dom.count('<tr class="study">') == 3
    assert "data:image/png;base64," in dom  # the architecture-vs-study plot
    shot = tmp_path / "leaderboard.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_jobs_on_other_data_or_sizes_are_never_ranked_together():
    from tuning.leaderboard import Job, rank

    def job(name: str, value: float, fingerprint: str, size: str) -> Job:
        return Job("t", "u", "cnn", name, "val_fracture_f1", value, {}, 1, 0, 0.0, 0.0, "", "", fingerprint, size)

    groups = rank(
        [job("a", 0.9, "d1", "224"), job("b", 0.8, "d1", "224"), job("c", 0.99, "d2", "224"), job("d", 0.95, "d1", "128")],
        "val_fracture_f1",
    )
    ranked = {(g.data_fingerprint, g.image_size): [(j.job, j.rank) for j in g.jobs] for g in groups}
    assert ranked == {("d1", "224"): [("a", 1), ("b", 2)], ("d2", "224"): [("c", 1)], ("d1", "128"): [("d", 1)]}
    loss = rank([job("x", 0.5, "d", "s"), job("y", 0.3, "d", "s")], "val_loss")
    assert [j.job for j in loss[0].jobs] == ["y", "x"]  # lower loss ranks first


ADMIN_PASSWORD = "admin-secret-for-this-test"


@pytest.fixture(scope="module")
def guarded_server(ray_session, tiny_download: Path, tmp_path_factory) -> MlflowServer:
    """A basic-auth server whose users get only what they are granted (--default-permission NO_PERMISSIONS),
    holding one finished cnn search (team alpha) and one resnet50 search (team beta): two experiments."""
    from tests.conftest import search_args

    root = tmp_path_factory.mktemp("guarded")
    server = MlflowServer(
        root / "store", "--auth", "--default-permission", "NO_PERMISSIONS", env={"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
    ).start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        mp.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        for arch, team in (("cnn", "alpha"), ("resnet50", "beta")):
            flags = ["--arch", arch, "--weights", "none", "--epochs", "1", "--num-samples", "1", "--scheduler", "none"]
            flags += ["--confirm-top", "0", "--metric", "val_loss", "--team", team, "--tracking-uri", server.url]
            assert search(search_args(tiny_download, root / "runs", f"{team}-{arch}-job", *flags)) == 0  # the last --arch counts
    yield server
    server.stop()


def _page(server: MlflowServer, user: str | None = None, password: str | None = None) -> tuple[int, str]:
    import base64
    import urllib.error
    import urllib.request

    from tests.conftest import DIRECT

    headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()} if user else {}
    try:
        with DIRECT.open(urllib.request.Request(f"{server.url}/leaderboard?metric=val_loss", headers=headers), timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_the_leaderboard_page_shows_each_user_the_experiments_they_may_read(guarded_server, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient

    server = guarded_server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    accounts = AuthServiceClient(server.url)
    cnn = MlflowClient(server.url).get_experiment_by_name("fracture-cnn").experiment_id
    accounts.create_user("reader", "reader-password-1")
    accounts.grant_user_permission("reader", "experiment", cnn, "READ")  # fracture-resnet50: no grant, and the default is none
    accounts.create_user("newcomer", "newcomer-password-1")  # no grant at all

    status, admin_page = _page(server, "admin", ADMIN_PASSWORD)
    assert status == 200 and "alpha-cnn-job" in admin_page and "beta-resnet50-job" in admin_page
    status, reader_page = _page(server, "reader", "reader-password-1")
    assert status == 200, reader_page
    assert "alpha-cnn-job" in reader_page and "beta-resnet50-job" not in reader_page
    assert reader_page.count('<tr class="job">') == 1 and "0.9763" in reader_page  # the study's rows stay
    status, newcomer_page = _page(server, "newcomer", "newcomer-password-1")
    assert status == 200 and '<tr class="job">' not in newcomer_page and "No finished searches yet" in newcomer_page
    assert _page(server)[0] == 401
    assert _page(server, "reader", "wrong-password")[0] == 401
