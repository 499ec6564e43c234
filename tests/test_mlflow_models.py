"""The models a search puts in MLflow, used as a user would: the registered champion. Real server,
real Ray, real files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fracture_models.data import resolve_dataset_root
from fracture_models.engine import load_checkpoint
from tests.conftest import MlflowServer, search_args
from tests.test_predict import evaluation_probabilities, run_predict
from tuning.run import main

IMAGE_SIZE = 32  # search_args trains at 32 px


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("models") / "store").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def searched(ray_session, tiny_download: Path, tmp_path_factory, server) -> tuple[Path, dict]:
    """A search with the default --mlflow-checkpoints all: 4 trials, ASHA stopping some after one epoch."""
    storage = tmp_path_factory.mktemp("models-search")
    schedule = ["--num-samples", "4", "--epochs", "2", "--grace-period", "1", "--reduction-factor", "2", "--confirm-top", "0"]
    assert main(search_args(tiny_download, storage, "models", *schedule, "--metric", "val_loss", "--tracking-uri", server.url)) == 0
    return storage / "models", json.loads((storage / "models" / "summary.json").read_text())


@pytest.fixture
def user_tracking_uri(server, monkeypatch):
    """What a user sets to load models: $MLFLOW_TRACKING_URI (undone after the test)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    return server.url


def best_checkpoint_file(trial_dir: Path, epoch: int) -> Path:
    """The trial's kept checkpoint of its best epoch, in the experiment folder."""
    return next(p for p in sorted(trial_dir.glob("checkpoint_*/checkpoint.pt")) if load_checkpoint(p)["epoch"] == epoch)


def test_the_champion_predicts_an_image_file_as_the_projects_evaluation_does(
    searched, tiny_download: Path, tmp_path: Path, user_tracking_uri: str
):
    _, summary = searched
    data_root = resolve_dataset_root(tiny_download)
    tested = summary["tested_trial"]
    expected = evaluation_probabilities(best_checkpoint_file(Path(tested["path"]), tested["best_epoch"]), data_root, "test", IMAGE_SIZE)
    threshold = summary["clinical"]["operating_point"]["val"]["threshold"]
    relative = next(iter(expected))
    image = data_root / relative

    model = mlflow.pyfunc.load_model("models:/fracture-cnn@champion")
    by_path = model.predict(pd.DataFrame({"path": [str(image)]}))
    by_bytes = model.predict(pd.DataFrame({"image": [image.read_bytes()]}))
    for answer in (by_path, by_bytes):
        assert answer["fracture_probability"][0] == pytest.approx(expected[relative], abs=1e-6)
        assert answer["threshold"][0] == pytest.approx(threshold)
        assert answer["decision"][0] == ("fractured" if expected[relative] >= threshold else "not fractured")
        assert answer["error"][0] == ""

    # What the model needs and means is written on it: signature, input example, classes, threshold.
    info = mlflow.models.get_model_info("models:/fracture-cnn@champion")
    assert [c.name for c in info.signature.inputs.inputs] == ["image", "path"]
    assert {c.name for c in info.signature.outputs.inputs} == {"fracture_probability", "decision", "threshold", "error"}
    assert info.saved_input_example_info["type"] == "dataframe"
    meta = info.metadata
    assert meta["class_names"] == ["not fractured", "fractured"] and meta["positive_label"] == 1
    assert meta["operating_threshold"] == pytest.approx(threshold) and meta["threshold_chosen_on"] == "val"
    assert meta["image_size"] == IMAGE_SIZE and meta["arch"] == "cnn"

    # Any size of input: a 128 px image (the raw tensor model failed on it) and a damaged file, in one call.
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)).save(big)
    mixed = model.predict(pd.DataFrame({"path": [str(big), str(tmp_path / "gone.png"), str(image)]}))
    assert 0 <= mixed["fracture_probability"][0] <= 1 and mixed["error"][0] == ""
    assert "No such file" in mixed["error"][1] and np.isnan(mixed["fracture_probability"][1])
    assert mixed["fracture_probability"][2] == pytest.approx(expected[relative], abs=1e-6)

    # The command line, with the same URI.
    code, lines, stderr = run_predict("--model", "models:/fracture-cnn@champion", str(image), env={**os.environ})
    assert code == 0, stderr
    assert lines == [
        {"path": str(image), "fracture_probability": pytest.approx(expected[relative], abs=1e-6), "decision": by_path["decision"][0], "threshold": pytest.approx(threshold)}
    ]

