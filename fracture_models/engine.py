"""The training loop as plain functions: `train_one_epoch`, `evaluate`, `fit`, checkpoints.

The study's recipe is the default: CrossEntropyLoss, Adam, StepLR. On CUDA the loop uses mixed
precision (bf16 where supported, else fp16 with a gradient scaler) and channels_last. The speed
levers of `fracture_models.fast` (no host sync per batch, fused Adam, larger validation batches,
optional torch.compile) are `TrainConfig` settings and leave the recipe as it is.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from fracture_models import fast
from fracture_models.config import TrainConfig
from fracture_models.errors import TrainingDiverged
from fracture_models.labels import POSITIVE_LABEL
from fracture_models.loader import BatchLoader
from fracture_models.metrics import classification_metrics, scalar_metrics
from fracture_models.models import architecture, create_model

logger = logging.getLogger(__name__)


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only: bf16 autocast on this CPU kind is ~14x slower."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass
class TrainingState:
    """What a checkpoint restores: the model, optimiser, scheduler and completed epochs."""

    config: TrainConfig
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    epoch: int = 0
    compiled: Callable | None = None  # torch.compile(model) for full training batches; None: eager

    def __post_init__(self) -> None:
        self.compiled = fast.compiled_forward(self.config, self.device, self.channels_last, self.model, self)

    @property
    def channels_last(self) -> bool:
        return uses_channels_last(self.config, self.device)


# Where channels_last pays without CUDA is a fact of each architecture (`channels_last_on_cpu`):
# on a 2-core CPU, 1.25x for resnet50 at 224 px and 1.2-1.5x for the CNN at batch 32, 0.86-0.96x for
# VGG16 (benchmarks/README.md).


def uses_channels_last(config: TrainConfig, device: torch.device) -> bool:
    """channels_last where asked, else on CUDA (tensor cores want it) and where the CPU gains."""
    if config.channels_last is not None:
        return config.channels_last
    return device.type == "cuda" or architecture(config.arch).channels_last_on_cpu


def build_training(config: TrainConfig, device: torch.device | None = None) -> TrainingState:
    """Seed, build the model on the device and the study's optimiser and scheduler."""
    device = device or select_device(config.device)
    seed_everything(config.seed)
    model = create_model(config.arch, weights=config.weights, image_size=config.image_size).to(device)
    if uses_channels_last(config, device):
        model.to(memory_format=torch.channels_last)
    model = fast.reuse_compiled_model(config, device, uses_channels_last(config, device), model)
    optimizer = fast.make_adam(model.parameters(), config.lr, config.adam, device)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype(device) == torch.float16 else None
    return TrainingState(config, device, model, optimizer, scheduler, scaler)


def make_loaders(state: TrainingState, train_split, val_split) -> tuple[BatchLoader, BatchLoader]:
    config = state.config
    common = dict(batch_size=config.batch_size, device=state.device, channels_last=state.channels_last)
    train = BatchLoader(train_split, train=True, aug_strength=config.aug_strength, seed=config.seed, **common)
    val = BatchLoader(val_split, **{**common, "batch_size": config.batch_size * config.val_batch_factor})
    return train, val


PROGRESS_EVERY = 20  # batches between progress-bar updates


def train_one_epoch(state: TrainingState, loader: BatchLoader, *, progress: bool = False, desc: str = "train") -> dict:
    """One pass over the training batches; returns mean loss, accuracy, lr and throughput.

    Loss and accuracy are summed on the device and read once at the end (`config.sync_every_batch`
    reads them after every batch instead; the figures are the same)."""
    model, optimizer, config = state.model, state.optimizer, state.config
    criterion = nn.CrossEntropyLoss()
    amp = autocast_dtype(state.device)
    cuda_graphs = fast.uses_cuda_graphs(config, state.device)
    model.train()
    tally = fast.MetricTally(state.device)
    total_loss, correct = 0.0, 0
    lr = optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=None)  # None: off when not a terminal
    for step, (inputs, labels) in enumerate(batches):
        # The compiled model takes full batches only: a partial last batch would be a second graph.
        forward = state.compiled if state.compiled is not None and labels.numel() == config.batch_size else model
        if cuda_graphs and forward is state.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(state.device.type, dtype=amp, enabled=amp is not None):
            logits = forward(inputs)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            state.scaler.step(optimizer)
            state.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if config.sync_every_batch:
            n = labels.numel()
            total_loss += loss.item() * n
            correct += int((logits.argmax(1) == labels).sum())
            tally.seen += n
        else:
            tally.add(loss, logits, labels)
        if progress and step % PROGRESS_EVERY == 0:  # the only other sync, and only for a terminal
            batches.set_postfix(loss=f"{(total_loss if config.sync_every_batch else tally.loss_sum.item()) / tally.seen:.4f}")
    if config.sync_every_batch:
        seen = max(tally.seen, 1)
        train_loss, train_accuracy = total_loss / seen, correct / seen
    else:
        train_loss, train_accuracy = tally.read()  # waits for the epoch's last step
    seen = tally.seen
    elapsed = time.perf_counter() - start
    return {
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "learning_rate": lr,  # the epoch's scheduled rate; `lr` is the hyperparameter (StepLR's start)
        "train_images_per_second": seen / elapsed if elapsed > 0 else 0.0,
    }


@torch.no_grad()
def predict(state: TrainingState, loader: BatchLoader) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, fracture probabilities, mean cross-entropy loss) over a whole split.

    Everything stays on the device until the end: one transfer, no sync per batch. The loss is
    summed in float64, the same operations as adding each batch's `.item()` on the host."""
    model = state.model
    amp = autocast_dtype(state.device)
    model.eval()
    labels, probabilities = [], []
    total_loss = torch.zeros((), dtype=torch.float64, device=state.device)
    for inputs, target in loader:
        with torch.autocast(state.device.type, dtype=amp, enabled=amp is not None):
            logits = model(inputs)
        logits = logits.float()
        total_loss += nn.functional.cross_entropy(logits, target, reduction="sum").to(torch.float64)
        probabilities.append(logits.softmax(1)[:, POSITIVE_LABEL])
        labels.append(target)
    y = torch.cat(labels).cpu().numpy()
    return y, torch.cat(probabilities).cpu().numpy(), total_loss.item() / max(len(y), 1)


def evaluate(state: TrainingState, loader: BatchLoader) -> dict:
    """Metrics over a split (no augmentation): see `fracture_models.metrics`."""
    labels, probability, loss = predict(state, loader)
    if not np.isfinite(probability).all():
        raise TrainingDiverged(
            f"Training diverged: the model's outputs are not finite (learning rate {state.config.lr:g}); lower it, or check the data."
        )
    return classification_metrics(labels, probability, loss=loss)


EpochCallback = Callable[[dict, dict, TrainingState], None]


def fit(
    state: TrainingState,
    train_loader: BatchLoader,
    val_loader: BatchLoader,
    *,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = False,
) -> list[dict]:
    """Train from `state.epoch` to `config.epochs`, evaluating validation after every epoch.

    `on_epoch_end(row, val_metrics, state)` gets the epoch's flat row (train_* and val_*
    scalars) and the full validation metrics; it is where callers checkpoint and report.
    """
    history = []
    for epoch in range(state.epoch + 1, state.config.epochs + 1):
        train_loader.set_epoch(epoch)
        train = train_one_epoch(state, train_loader, progress=progress, desc=f"epoch {epoch}/{state.config.epochs}")
        if not math.isfinite(train["train_loss"]):
            raise TrainingDiverged(
                f"Training diverged in epoch {epoch}: the training loss is {train['train_loss']} "
                f"(learning rate {state.config.lr:g}); lower it, or check the data."
            )
        val = evaluate(state, val_loader)
        state.scheduler.step()
        state.epoch = epoch
        row = {"epoch": epoch, **train, **{f"val_{k}": v for k, v in scalar_metrics(val).items()}}
        history.append(row)
        logger.info(
            "epoch %d: train loss %.4f, val loss %.4f, val accuracy %.4f, val fracture F1 %.4f",
            epoch,
            row["train_loss"],
            row["val_loss"],
            row["val_accuracy"],
            row["val_fracture_f1"],
        )
        if on_epoch_end is not None:
            on_epoch_end(row, val, state)
    return history


# ---------------------------------------------------------------------------------------------
# Checkpoints: one dict, loadable with weights_only=True


def make_checkpoint(state: TrainingState, metrics: dict | None = None) -> dict:
    return {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "epoch": state.epoch,
        "config": state.config.to_dict(),
        "metrics": dict(metrics or {}),
    }


def save_checkpoint(checkpoint: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def restore_training(state: TrainingState, checkpoint: dict) -> None:
    """Continue where the checkpoint left off (the next epoch is checkpoint['epoch'] + 1).

    A checkpoint without optimiser state (a finished trial's: weights only) restores the
    weights and schedule; training on from it would start Adam's moments afresh."""
    state.model.load_state_dict(checkpoint["model"])
    if "optimizer" in checkpoint:
        state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    if state.scaler is not None and checkpoint.get("scaler"):
        state.scaler.load_state_dict(checkpoint["scaler"])
    state.epoch = int(checkpoint["epoch"])
