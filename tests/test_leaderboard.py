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
