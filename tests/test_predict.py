"""`python -m fracture_models.predict` on checkpoint files: real training, real image files, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fracture_models.cli import run_main
from fracture_models.config import TrainConfig
from fracture_models.data import DATASET_FOLDER, load_split
from fracture_models.engine import build_training, load_checkpoint, predict, restore_training
from fracture_models.loader import BatchLoader
from fracture_models.predict import main as predict_main

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def evaluation_probabilities(checkpoint_path: Path, data_root: Path, split: str, image_size: int) -> dict[str, float]:
    """The project's own evaluation of a split with a checkpoint (as `fracture_models.evaluate`
    does it), by file path relative to the dataset root."""
    checkpoint = load_checkpoint(checkpoint_path)
    state = build_training(TrainConfig.from_dict({**checkpoint["config"], "device": "cpu", "weights": "none"}))
    restore_training(state, checkpoint)
    decoded = load_split(data_root, split, image_size)
    _, probability, _ = predict(state, BatchLoader(decoded, 16, device=state.device, channels_last=state.channels_last))
    return dict(zip(decoded.paths, probability.tolist()))


def run_predict(*args: str, env: dict | None = None) -> tuple[int, list[dict], str]:
    done = subprocess.run(
        [sys.executable, "-m", "fracture_models.predict", *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines, done.stderr


@pytest.fixture(scope="module")
def trained(small_download: Path, tmp_path_factory) -> Path:
    """A CNN trained for one epoch by `python -m fracture_models.train` (32 px), its output folder."""
    from fracture_models.train import main as train_main

    out = tmp_path_factory.mktemp("trained")
    args = ["--arch", "cnn", "--data-dir", str(small_download), "--image-size", "32", "--batch-size", "16", "--epochs", "1"]
    assert train_main([*args, "--weights", "none", "--out", str(out), "--quiet"]) == 0
    return out


def test_predict_cli_gives_evaluations_probabilities_and_decides_at_the_validation_threshold(
    trained: Path, small_download: Path, tmp_path: Path
):
    data_root = small_download / DATASET_FOLDER / DATASET_FOLDER
    expected = evaluation_probabilities(trained / "checkpoint.pt", data_root, "test", 32)
    threshold = json.loads((trained / "metrics.json").read_text())["clinical"]["operating_point"]["val"]["threshold"]

    # Beside the test split: an 8-bit image, the same pixels as a 16-bit PNG (windowed back to the
    # same 8 bits), a 128 px RGB JPEG, and two files that are not images.
    extra = tmp_path / "extra"
    extra.mkdir()
    pixels = np.array(Image.open(data_root / next(iter(expected))).convert("L"))
    pixels[0, 0], pixels[0, 1] = 0, 255  # the window of the 16-bit copy is then 0..65535: the same 8 bits back
    Image.fromarray(pixels, mode="L").save(extra / "eight.png")
    Image.fromarray(pixels.astype(np.uint16) * 257).save(extra / "sixteen.png")
    assert Image.open(extra / "sixteen.png").mode.startswith("I")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(extra / "big.jpg", quality=90)
    (extra / "truncated.png").write_bytes((extra / "eight.png").read_bytes()[:60])
    (extra / "notes.png").write_text("not an image")

    cams = tmp_path / "cams"
    code, lines, stderr = run_predict(
        "--model", str(trained / "checkpoint.pt"), str(data_root / "test"), str(extra), "--gradcam", str(cams)
    )

    assert code == 1, stderr  # two files failed; every other one was predicted
    by_path = {Path(line["path"]): line for line in lines}
    assert len(lines) == len(expected) + 5
    for relative, probability in expected.items():
        line = by_path[data_root / relative]
        assert line["fracture_probability"] == pytest.approx(probability, abs=1e-6)
        assert line["threshold"] == pytest.approx(threshold)
        assert line["decision"] == ("fractured" if line["fracture_probability"] >= threshold else "not fractured")
        assert Path(line["gradcam"]).read_bytes()[:8] == PNG
    assert by_path[extra / "sixteen.png"]["fracture_probability"] == pytest.approx(by_path[extra / "eight.png"]["fracture_probability"])
    assert 0 <= by_path[extra / "big.jpg"]["fracture_probability"] <= 1
    assert by_path[extra / "truncated.png"]["error"].startswith("does not decode")
    assert by_path[extra / "notes.png"]["error"].startswith("does not decode")
    assert "gradcam" not in by_path[extra / "notes.png"]
    assert len(list(cams.glob("*.png"))) == len(expected) + 3
    assert "Traceback" not in stderr


def test_predict_refuses_what_is_not_a_model(tmp_path: Path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(image)
    assert run_main(predict_main, ["--model", str(image), str(image)]) == 2
    assert "is not a checkpoint of this project" in capsys.readouterr().err
    assert run_main(predict_main, ["--model", str(tmp_path / "gone.pt"), str(image)]) == 2
    assert "Model not found" in capsys.readouterr().err
    assert run_main(predict_main, ["--model", "s3://bucket/model.pt", str(image)]) == 2
    assert "No loader for s3:/ model URIs (known: models, runs)" in capsys.readouterr().err


def test_a_training_runs_checkpoint_carries_its_operating_point(trained: Path):
    # What predict reads loads with weights_only=True and carries the threshold chosen on validation.
    checkpoint = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert checkpoint["operating_point"]["chosen_on"] == "val"
