"""The one thin adapter between Ray Tune and fracture_models: the only caller of `tune.report`.

A trial gets the decoded train and validation splits once through Ray's object store
(`tune.with_parameters`), never the test split, and never re-decodes a file. Every epoch it
reports the validation metrics (confusion-matrix counts included) and `checkpoint_score` with a
checkpoint; Tune keeps the best by that score (the search metric, demoted for an epoch whose
model answers one class for every image) and the latest. A retried or resumed trial continues from its last
checkpoint. Its first report also says which GPUs it was given (`tuning.placement`), for its
MLflow run's tags. The optimiser's state (twice the model's size with Adam) goes in a file of its own,
which `tuning.checkpoints` deletes once the trial has ended: a finished trial keeps its weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ray import tune

from fracture_models.config import TrainConfig
from fracture_models.data import DecodedSplit
from fracture_models.engine import build_training, fit, load_checkpoint, make_checkpoint, make_loaders, restore_training, save_checkpoint
from fracture_models.metrics import selection_score
from fracture_models.models import Architecture, ensure_registered
from tuning.placement import devices

CHECKPOINT_FILE = "checkpoint.pt"  # weights, schedule, epoch, config, metrics: all a finished trial keeps
OPTIMIZER_FILE = "optimizer.pt"  # the optimiser and grad-scaler state, for continuing training only
_OPTIMIZER_KEYS = ("optimizer", "scaler")
CHECKPOINT_SCORE = "checkpoint_score"


def train_fracture_model(
    hyperparameters: dict,
    *,
    base_config: dict,
    metric: str,
    mode: str,
    train_split: DecodedSplit,
    val_split: DecodedSplit,
    architecture: Architecture | None = None,
) -> None:
    """Train one configuration, `base_config` (arch, epochs, ...) + the sampled hyperparameters,
    checkpoints ranked by `metric` in `mode`. `architecture` is the driver's registry entry, so
    an architecture registered only there (in a notebook, a test) trains on every worker too."""
    if architecture is not None:
        ensure_registered(architecture)
    config = TrainConfig.from_dict({**base_config, **hyperparameters})
    state = build_training(config)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            restore_training(state, read_checkpoint(Path(folder)))
    train_loader, val_loader = make_loaders(state, train_split, val_split)
    placement = devices()  # reported once per start: where this trial runs

    def report(row: dict, val_metrics: dict, state) -> None:
        row = {**row, CHECKPOINT_SCORE: selection_score(row, metric, mode, prefix="val_"), **placement}
        placement.clear()
        with tempfile.TemporaryDirectory() as folder:
            write_checkpoint(make_checkpoint(state, row), Path(folder))
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))

    fit(state, train_loader, val_loader, on_epoch_end=report)


def write_checkpoint(checkpoint: dict, folder: Path) -> None:
    """`checkpoint` as two files: the optimiser state apart from everything else."""
    optimizer_state = {key: checkpoint[key] for key in _OPTIMIZER_KEYS}
    save_checkpoint({key: value for key, value in checkpoint.items() if key not in _OPTIMIZER_KEYS}, folder / CHECKPOINT_FILE)
    save_checkpoint(optimizer_state, folder / OPTIMIZER_FILE)


def read_checkpoint(folder: Path) -> dict:
    """The checkpoint in `folder`, with its optimiser state where the trial still has it."""
    checkpoint = load_checkpoint(folder / CHECKPOINT_FILE)
    if (folder / OPTIMIZER_FILE).exists():
        checkpoint.update(load_checkpoint(folder / OPTIMIZER_FILE))
    return checkpoint
