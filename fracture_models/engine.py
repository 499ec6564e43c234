"""The training loop as plain functions: `train_one_epoch`, `evaluate`, `fit`, checkpoints.

The study's recipe is the default: CrossEntropyLoss, Adam, StepLR. On CUDA the loop uses mixed
precision (bf16 where supported, else fp16 with a gradient scaler) and channels_last.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from fracture_models.config import TrainConfig
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

    @property
    def channels_last(self) -> bool:
        return uses_channels_last(self.config, self.device)


# Where channels_last pays without CUDA is a fact of each architecture (`channels_last_on_cpu`):
# measured 1.25x for resnet50 at 224 px on a 2-core CPU, 0.9-1.07x for the others (benchmarks/README.md).


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
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype(device) == torch.float16 else None
    return TrainingState(config, device, model, optimizer, scheduler, scaler)


def make_loaders(state: TrainingState, train_split, val_split) -> tuple[BatchLoader, BatchLoader]:
    config = state.config
    common = dict(batch_size=config.batch_size, device=state.device, channels_last=state.channels_last)
    train = BatchLoader(train_split, train=True, aug_strength=config.aug_strength, seed=config.seed, **common)
    val = BatchLoader(val_split, **common)
    return train, val


def train_one_epoch(state: TrainingState, loader: BatchLoader, *, progress: bool = False, desc: str = "train") -> dict:
    """One pass over the training batches; returns mean loss, accuracy, lr and throughput."""
    model, optimizer = state.model, state.optimizer
    criterion = nn.CrossEntropyLoss()
    amp = autocast_dtype(state.device)
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    lr = optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=None)  # None: off when not a terminal
    for inputs, labels in batches:
        with torch.autocast(state.device.type, dtype=amp, enabled=amp is not None):
            logits = model(inputs)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            state.scaler.step(optimizer)
            state.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = labels.numel()
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == labels).sum())
        seen += n
        if progress:
            batches.set_postfix(loss=f"{total_loss / seen:.4f}")
    elapsed = time.perf_counter() - start
    return {
        "train_loss": total_loss / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "learning_rate": lr,  # the epoch's scheduled rate; `lr` is the hyperparameter (StepLR's start)
        "train_images_per_second": seen / elapsed if elapsed > 0 else 0.0,
    }


@torch.no_grad()
def predict(state: TrainingState, loader: BatchLoader) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, fracture probabilities, mean cross-entropy loss) over a whole split."""
    model = state.model
    amp = autocast_dtype(state.device)
    model.eval()
    labels, probabilities, total_loss = [], [], 0.0
    for inputs, target in loader:
        with torch.autocast(state.device.type, dtype=amp, enabled=amp is not None):
            logits = model(inputs)
        logits = logits.float()
        total_loss += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        probabilities.append(logits.softmax(1)[:, POSITIVE_LABEL].cpu())
        labels.append(target.cpu())
    y = torch.cat(labels).numpy()
    return y, torch.cat(probabilities).numpy(), total_loss / max(len(y), 1)


def evaluate(state: TrainingState, loader: BatchLoader) -> dict:
    """Metrics over a split (no augmentation): see `fracture_models.metrics`."""
    labels, probability, loss = predict(state, loader)
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
