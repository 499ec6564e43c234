"""PNG plots a user would otherwise draw by hand: confusion matrix and loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(confusion: dict, path: str | Path, title: str = "Confusion matrix") -> Path:
    """Counts with labelled axes (rows true class, columns predicted), as in `metrics`."""
    plt = _pyplot()
    labels, matrix = confusion["labels"], confusion["matrix"]
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=120)
    image = ax.imshow(matrix, cmap="Blues")
    high = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > high / 2 else "black", fontsize=13)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_loss_curves(history: Sequence[dict], path: str | Path, title: str = "Loss") -> Path:
    """Training and validation loss per epoch from a run's history."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    ax.plot(epochs, [row["val_loss"] for row in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_learning_curves(
    curves: dict[str, tuple[Sequence[int], Sequence[float]]],
    path: str | Path,
    *,
    metric: str,
    highlight: str | None = None,
    title: str = "Trials",
) -> Path:
    """One line per trial (`name -> (epochs, values)`); a line that ends early ends with an x.

    Shows at a glance which trials early stopping cut and where; `highlight` is drawn on top.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    longest = max((max(epochs) for epochs, _ in curves.values() if len(epochs)), default=1)
    for name, (epochs, values) in curves.items():
        if not len(epochs):
            continue
        chosen = name == highlight
        (line,) = ax.plot(epochs, values, lw=2.4 if chosen else 1.0, alpha=1.0 if chosen else 0.6, zorder=3 if chosen else 2,
                          color="black" if chosen else None, label=f"{name} (selected)" if chosen else None)
        if max(epochs) < longest:
            ax.plot(epochs[-1], values[-1], "x", color=line.get_color(), ms=7)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if highlight is not None:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
