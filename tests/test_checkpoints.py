"""A trial's checkpoint: weights apart from optimiser state, which only training on needs."""

from __future__ import annotations

from pathlib import Path

import torch

from fracture_models.config import TrainConfig
from fracture_models.data import load_dataset
from fracture_models.engine import build_training, fit, make_checkpoint, make_loaders, restore_training
from tuning.trainable import CHECKPOINT_FILE, OPTIMIZER_FILE, read_checkpoint, write_checkpoint

CONFIG = dict(arch="cnn", image_size=32, batch_size=8, seed=5, lr=3e-4)


def _fit(dataset, state):
    return fit(state, *make_loaders(state, dataset.train, dataset.val))


def test_split_checkpoint_resumes_exactly_and_loads_without_its_optimiser_file(small_download: Path, tmp_path: Path):
    dataset = load_dataset(small_download, 32)
    straight = build_training(TrainConfig(epochs=2, **CONFIG))
    history = _fit(dataset, straight)

    first = build_training(TrainConfig(epochs=1, **CONFIG))
    _fit(dataset, first)
    write_checkpoint(make_checkpoint(first), tmp_path)
    assert "optimizer" not in torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert torch.load(tmp_path / OPTIMIZER_FILE, weights_only=True)["optimizer"]["state"]  # Adam's moments

    # With its optimiser file, training on is exactly training straight through.
    resumed = build_training(TrainConfig(epochs=2, **CONFIG))
    restore_training(resumed, read_checkpoint(tmp_path))
    tail = _fit(dataset, resumed)
    assert [row["epoch"] for row in tail] == [2] and tail[0]["train_loss"] == history[1]["train_loss"]

    # A finished trial's checkpoint (optimiser file gone) still gives the same model to evaluate.
    (tmp_path / OPTIMIZER_FILE).unlink()
    weights_only = read_checkpoint(tmp_path)
    assert "optimizer" not in weights_only and weights_only["epoch"] == 1
    evaluated = build_training(TrainConfig(epochs=1, **CONFIG))
    restore_training(evaluated, weights_only)
    assert not evaluated.optimizer.state_dict()["state"]
    for name, value in first.model.state_dict().items():
        assert torch.equal(evaluated.model.state_dict()[name], value), name
