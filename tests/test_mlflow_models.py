"""The models a search puts in MLflow, used as a user would: the registered champion, and every
trial's best checkpoint as an MLflow 3 logged model of its run. Real server, real Ray, real files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus
from PIL import Image

from fracture_models.data import load_split, resolve_dataset_root
from fracture_models.engine import load_checkpoint
from fracture_models.predict import FracturePredictor
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


def job_models(client: MlflowClient, job: str) -> list:
    experiment = client.get_experiment_by_name("fracture-cnn")
    return list(client.search_logged_models([experiment.experiment_id], filter_string=f"tags.job_name = '{job}'"))


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
        {
            "path": str(image),
            "fracture_probability": pytest.approx(expected[relative], abs=1e-6),
            "decision": by_path["decision"][0],
            "threshold": pytest.approx(threshold),
        }
    ]


def test_every_trials_best_checkpoint_is_a_logged_model_of_its_run(
    searched, server, tiny_download: Path, tmp_path: Path, user_tracking_uri: str
):
    experiment, summary = searched
    client = MlflowClient(server.url)
    rows = {row["trial_id"]: row for row in summary["trials"]}
    assert any(row["status"] == "stopped early" for row in rows.values())

    # Found through the client: one READY model per trial, stopped early or not.
    models = {m.tags["ray_trial_id"]: m for m in job_models(client, "models")}
    assert set(models) == set(rows)
    assert all(m.status == LoggedModelStatus.READY for m in models.values())
    for trial_id, model in models.items():
        run = client.get_run(model.source_run_id)
        assert run.data.tags["ray_trial_id"] == trial_id and run.data.tags["role"] == "trial"
        # Linked to the run (an output at the best epoch) and to the best epoch's metrics.
        assert [(o.model_id, o.step) for o in run.outputs.model_outputs] == [(model.model_id, rows[trial_id]["best_epoch"])]
        linked = {m.key: m for m in model.metrics}
        assert linked["val_loss"].step == rows[trial_id]["best_epoch"]
        assert linked["val_loss"].value == pytest.approx(rows[trial_id]["best_value"])
        assert model.params["lr"] == run.data.params["lr"]
        assert model.tags["best_epoch"] == str(rows[trial_id]["best_epoch"])

    # Loaded as a user would, an early-stopped trial's model predicts as its checkpoint file does.
    stopped = next(row for row in rows.values() if row["status"] == "stopped early")
    loaded = mlflow.pyfunc.load_model(models[stopped["trial_id"]].model_uri)
    data_root = resolve_dataset_root(tiny_download)
    paths = [str(data_root / p) for p in load_split(data_root, "test", IMAGE_SIZE).paths]
    from_mlflow = loaded.predict(pd.DataFrame({"path": paths}))["fracture_probability"].to_numpy()
    checkpoint = best_checkpoint_file(Path(stopped["path"]), stopped["best_epoch"])
    from_file = np.array([r["fracture_probability"] for r in FracturePredictor.from_file(checkpoint).predict(paths)])
    np.testing.assert_allclose(from_mlflow, from_file, atol=1e-6)

    # Weights only: no optimiser state travels; the staged copies are gone from the experiment folder.
    weights = mlflow.artifacts.download_artifacts(
        f"{models[stopped['trial_id']].artifact_location}/artifacts/model.pt", dst_path=str(tmp_path)
    )
    saved = torch.load(weights, weights_only=True)
    assert not {"optimizer", "scheduler", "scaler"} & set(saved) and saved["epoch"] == stopped["best_epoch"]
    assert not list(experiment.glob("mlflow/trial_*/model"))
    assert not (experiment / "mlflow_outbox.jsonl").exists()


def _stored_model_files(server: MlflowServer) -> set[str]:
    """Logged model ids whose weights are in the server's artifact store."""
    return {p.parts[-4] for p in (server.store / "artifacts").rglob("models/m-*/artifacts/artifacts/model.pt")}


def test_mlflow_checkpoints_bounds_what_the_artifact_store_keeps(ray_session, tiny_download: Path, tmp_path: Path, server):
    client = MlflowClient(server.url)
    common = ["--epochs", "1", "--scheduler", "none", "--confirm-top", "0", "--metric", "val_loss", "--tracking-uri", server.url]

    # top-1: only the best trial's model stays; the others' weights are deleted from the store as better ones arrive.
    assert main(search_args(tiny_download, tmp_path, "top1", "--num-samples", "3", "--mlflow-checkpoints", "top-1", *common)) == 0
    summary = json.loads((tmp_path / "top1" / "summary.json").read_text())
    kept = job_models(client, "top1")
    assert [m.tags["ray_trial_id"] for m in kept] == [summary["best_trial"]["trial_id"]]
    listed = {m.model_id for m in client.search_logged_models([client.get_experiment_by_name("fracture-cnn").experiment_id])}
    stored = _stored_model_files(server)
    assert kept[0].model_id in stored and stored <= listed  # no deleted model left its weights behind

    # winner: the tested winner's model only, logged once the winner is known.
    assert main(search_args(tiny_download, tmp_path, "winner1", "--num-samples", "2", "--mlflow-checkpoints", "winner", *common)) == 0
    summary = json.loads((tmp_path / "winner1" / "summary.json").read_text())
    assert [m.tags["ray_trial_id"] for m in job_models(client, "winner1")] == [summary["tested_trial"]["trial_id"]]
    assert json.loads((tmp_path / "winner1" / "job.json").read_text())["mlflow_checkpoints"] == "winner"
