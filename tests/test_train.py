from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fracture_models.engine import load_checkpoint
from fracture_models.train import main

# Chance on the balanced 200-image validation split is 0.5 with a standard deviation of
# sqrt(0.25 / 200) = 0.035; 0.70 is more than five standard deviations above it.
CLEARLY_BETTER_THAN_CHANCE = 0.70


def test_short_cpu_training_beats_chance_and_writes_every_output(learnable_download: Path, tmp_path: Path):
    out = tmp_path / "run"
    code = main(
        [
            "--arch",
            "cnn",
            "--data-dir",
            str(learnable_download),
            "--image-size",
            "64",
            "--epochs",
            "8",
            "--batch-size",
            "16",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    for name in (
        "metrics.json",
        "config.json",
        "checkpoint.pt",
        "confusion_matrix.png",
        "loss_curves.png",
        "excluded_files.csv",
        "test_roc_curve.png",
        "test_reliability.png",
        "test_gradcam.png",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 8
    best = metrics["best_epoch"]
    assert metrics["best_val"]["fracture_f1"] == max(row["val_fracture_f1"] for row in metrics["history"])
    assert metrics["best_val"]["accuracy"] >= CLEARLY_BETTER_THAN_CHANCE, metrics["history"]
    test = metrics["test"]
    assert test["num_images"] == 100 and test["positive_class"] == "fractured"
    assert sum(map(sum, test["confusion_matrix"]["matrix"])) == 100
    # The clinical report a search's winner gets: intervals, an operating point and calibration chosen on validation.
    clinical = metrics["clinical"]
    assert clinical["num_images"] == 100 and clinical["operating_point"]["chosen_on"] == "val"
    assert clinical["at_0.5"]["fracture_sensitivity"]["value"] == pytest.approx(test["fracture_sensitivity"])
    checkpoint = load_checkpoint(out / "checkpoint.pt")  # weights_only=True
    assert checkpoint["epoch"] == best and checkpoint["config"]["arch"] == "cnn"
    assert set(checkpoint) >= {"model", "optimizer", "scheduler", "epoch", "config"}
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["model"].values())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fracture_models.train", "--quiet", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "make_args, expected",
    [
        (lambda root, tmp: ["--data-dir", str(tmp / "nowhere")], "Dataset folder not found"),
        (lambda root, tmp: ["--data-dir", str(root), "--arch", "alexnet"], "invalid choice: 'alexnet'"),
        (lambda root, tmp: ["--data-dir", str(tmp / "broken")], "Class folder missing"),
        (lambda root, tmp: ["--data-dir", str(root), "--arch", "cnn", "--weights", "imagenet"], "no pretrained weights"),
        (lambda root, tmp: ["--data-dir", str(root), "--lr", "nan"], "--lr: must be a finite number, got nan"),
        (lambda root, tmp: ["--data-dir", str(root), "--lr", "inf"], "--lr: must be a finite number, got inf"),
        (lambda root, tmp: ["--data-dir", str(root), "--gamma", "nan"], "--gamma: must be a finite number"),
        (lambda root, tmp: ["--data-dir", str(root), "--image-size", "100000"], "--image-size: must be at most 1024 px"),
        (lambda root, tmp: ["--data-dir", str(root), "--max-bad-fraction", "nan"], "--max-bad-fraction: must be a finite number"),
        (lambda root, tmp: ["--data-dir", str(root), "--max-bad-fraction", "2"], "--max-bad-fraction: must be a fraction from 0 to 1"),
    ],
    ids=[
        "bad path",
        "unknown arch",
        "missing class folder",
        "weights for the cnn",
        "lr nan",
        "lr inf",
        "gamma nan",
        "huge image size",
        "max-bad-fraction nan",
        "max-bad-fraction above 1",
    ],
)
def test_user_errors_print_one_clear_message(small_download: Path, tmp_path: Path, make_args, expected: str):
    broken = tmp_path / "broken"
    for split in ("train", "val", "test"):
        (broken / split / "fractured").mkdir(parents=True)
    result = _cli(*make_args(small_download, tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


def _offline(tmp_path: Path) -> dict:
    """An empty torch hub cache and a proxy nobody listens on: torchvision's real download path, offline."""
    proxy = "http://127.0.0.1:9"
    return {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "torch"),
        "HTTPS_PROXY": proxy,
        "https_proxy": proxy,
        "HTTP_PROXY": proxy,
        "http_proxy": proxy,
    }


def test_vgg16_starts_from_imagenet_and_says_how_to_fix_missing_weights(tmp_path: Path):
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fracture_models.train",
            "--quiet",
            "--arch",
            "vgg16",
            "--synthetic",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_offline(tmp_path),
    )
    assert time.monotonic() - started < 60
    assert result.returncode == 2 and "Traceback" not in result.stderr
    needed = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert "vgg16-397923af.pth" in result.stderr and str(needed) in result.stderr
    assert "--weights /path/to/vgg16-397923af.pth" in result.stderr and "--weights none" in result.stderr
    assert not (tmp_path / "out").exists()  # stopped before any work


def test_vgg16_trains_from_a_torchvision_state_dict_file(small_download: Path, tmp_path: Path):
    from torchvision.models import vgg16

    torch.manual_seed(0)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(vgg16().state_dict(), path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fracture_models.train",
            "--quiet",
            "--arch",
            "vgg16",
            "--weights",
            str(path),
            "--data-dir",
            str(small_download),
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=_offline(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["config"]["weights"] == str(path) and metrics["test"]["num_images"] == 8
