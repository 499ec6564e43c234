"""Adding an architecture is one registration: in a test alone, or from a package's entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fracture_models import models
from fracture_models.models import ENTRY_POINT_GROUP, architecture, list_models, register_model

TINY_SOURCE = '''
from torch import nn

from fracture_models.errors import UserError


class Tiny(nn.Module):
    """One convolution, global pooling and a linear layer: the smallest model with a Grad-CAM layer."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    def forward(self, x):
        return self.head(self.conv(x))


def build_tiny(*, num_classes: int, weights: str, image_size: int) -> nn.Module:
    if weights != "none":
        raise UserError("tiny has no pretrained weights")
    return Tiny(num_classes)
'''


@pytest.fixture
def private_registry(monkeypatch):
    """Registrations made in a test vanish with it."""
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))


def _tiny_builder():
    namespace: dict = {}
    exec(compile(TINY_SOURCE, "tiny_in_test", "exec"), namespace)  # defined here, in no importable module
    return namespace["build_tiny"]


def test_a_name_alone_gives_every_fact_its_default(private_registry):
    register_model("tiny", _tiny_builder())
    entry = architecture("tiny")
    assert entry.default_weights == "none" and entry.channels_last_on_cpu is False and dict(entry.search_space) == {}
    model = entry.builder(num_classes=2, weights="none", image_size=32)
    assert entry.gradcam_layer(model) is model.conv  # the last Conv2d
    assert "tiny" in list_models()


def test_a_tiny_architecture_registered_in_the_test_searches_trains_and_explains(
    private_registry, ray_session, tiny_download: Path, tmp_path: Path
):
    from fracture_models.train import main as train_main
    from tuning.run import main as search_main

    register_model("tiny", _tiny_builder())
    common = ["--arch", "tiny", "--data-dir", str(tiny_download), "--image-size", "32", "--batch-size", "16", "--epochs", "2"]

    # A one-trial search: the trial runs in a Ray worker, which gets the driver's registry entry.
    assert (
        search_main(
            [
                *common,
                "--num-samples",
                "1",
                "--scheduler",
                "none",
                "--confirm-top",
                "0",
                "--storage-path",
                str(tmp_path),
                "--name",
                "tiny-search",
                "--cpus-per-trial",
                "1",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "tiny-search" / "summary.json").read_text())
    assert summary["arch"] == "tiny" and summary["best_trial"]["epochs"] == 2 and summary["test"]["num_images"] == 16
    assert (tmp_path / "tiny-search" / "test_gradcam.png").stat().st_size > 10_000  # Grad-CAM on its last Conv2d
    assert json.loads((tmp_path / "tiny-search" / "job.json").read_text())["search_space"]["lr"]["low"] == 1e-4  # the common space

    # A single run.
    assert train_main([*common, "--out", str(tmp_path / "single"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert metrics["config"]["arch"] == "tiny" and len(metrics["history"]) == 2


def _plugin_package(site: Path) -> None:
    """A package outside this repository, installed as a distribution on `site` (its metadata
    declares the entry point), that registers `tiny-plugin` on import."""
    package = site / "tiny_fracture_arch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        TINY_SOURCE
        + textwrap.dedent("""
        from fracture_models.models import register_model

        register_model("tiny-plugin", build_tiny)
    """)
    )
    info = site / "tiny_fracture_arch-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-fracture-arch\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntiny = tiny_fracture_arch\n")
    (info / "RECORD").write_text("")


def test_an_architecture_from_another_package_is_found_through_its_entry_point(tiny_download: Path, tmp_path: Path):
    site = tmp_path / "site"
    _plugin_package(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    helped = subprocess.run([sys.executable, "-m", "tuning.run", "--help"], capture_output=True, text=True, timeout=300, env=env)
    assert helped.returncode == 0 and "tiny-plugin" in helped.stdout
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuning.run",
            "--arch",
            "tiny-plugin",
            "--data-dir",
            str(tiny_download),
            "--image-size",
            "32",
            "--batch-size",
            "16",
            "--epochs",
            "1",
            "--num-samples",
            "2",
            "--scheduler",
            "none",
            "--confirm-top",
            "0",
            "--cpus-per-trial",
            "1",
            "--storage-path",
            str(tmp_path / "runs"),
            "--name",
            "plugin",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "plugin" / "summary.json").read_text())
    assert summary["arch"] == "tiny-plugin" and summary["num_trials"] == 2
    assert all(row["status"] == "completed" for row in summary["trials"])


UNSTABLE_SOURCE = (
    TINY_SOURCE
    + '''
import torch


class Unstable(Tiny):
    """Tiny with a gain that sends every output to NaN once large steps move it: a model that
    diverges at a high learning rate and trains at the baseline's."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, x):
        logits = super().forward(x) * self.gain
        return logits if (self.gain - 1).abs() < 0.5 else logits * float("nan")


def build_unstable(*, num_classes: int, weights: str, image_size: int) -> nn.Module:
    return Unstable(num_classes)
'''
)


def test_a_diverged_trial_fails_with_its_reason_and_the_search_goes_on(private_registry, ray_session, tiny_download: Path, tmp_path: Path):
    import optuna

    from fracture_models.train import main as train_main
    from tuning.run import main as search_main

    namespace: dict = {}
    exec(compile(UNSTABLE_SOURCE, "unstable_in_test", "exec"), namespace)
    register_model("unstable", namespace["build_unstable"], search_space={"lr": {"low": 1e-3, "high": 1e3, "log": True}})
    common = ["--arch", "unstable", "--data-dir", str(tiny_download), "--image-size", "32", "--batch-size", "16", "--epochs", "2"]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert (
        search_main(
            [*common, "--num-samples", "2", "--sampler", "random", "--sampler-seed", "1", "--scheduler", "none", "--confirm-top", "0"]
            + ["--storage-path", str(tmp_path), "--name", "diverges", "--cpus-per-trial", "1"]  # retried from its last epoch, fails again
            + ["--optuna-storage", storage]
        )
        == 0
    )
    summary = json.loads((tmp_path / "diverges" / "summary.json").read_text())
    assert summary["trials_failed"] == 1 and summary["best_trial"]["lr"] == 1e-3  # the baseline, the only score
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert failed.params["lr"] > 0.05
    errors = list((tmp_path / "diverges").rglob("error.txt"))
    assert errors and "Training diverged" in errors[0].read_text()

    # A single run says so in one line and exits 2, no traceback.
    from fracture_models.cli import run_main

    assert run_main(train_main, [*common, "--lr", "10", "--out", str(tmp_path / "single"), "--quiet"]) == 2
