"""PNG plots a user would otherwise draw by hand: confusion matrix, curves, ROC, reliability, heatmaps."""

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


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_roc_curve(report: dict, path: str | Path, title: str = "ROC curve (test)") -> Path:
    """The test ROC curve with its AUC interval, the 0.5 threshold and the validation-chosen operating point."""
    plt = _pyplot()
    roc, auc = report["roc"], report["roc_auc"]
    fig, ax = plt.subplots(figsize=(4.8, 4.6), dpi=120)
    ax.plot(roc["false_positive_rate"], roc["true_positive_rate"], lw=2, label=f"AUC {auc['value']:.3f} (95% CI {auc['ci95'][0]:.3f}-{auc['ci95'][1]:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    for key, marker, name in [("at_0.5", "o", "threshold 0.5"), ("operating_point", "s", None)]:
        rates = report[key] if key == "at_0.5" else report[key]["test"]
        if name is None:
            name = f"threshold {rates['threshold']:.3g} (val sensitivity >= {report[key]['target_sensitivity']:.2f})"
        ax.plot(1 - rates["fracture_specificity"]["value"], rates["fracture_sensitivity"]["value"], marker, ms=8, label=name)
    ax.set_xlabel("1 - fracture specificity")
    ax.set_ylabel("fracture sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plot_reliability(calibration: dict, path: str | Path, title: str = "Reliability (test)") -> Path:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.6), dpi=120)
    ax.plot([0.5, 1], [0.5, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for key, name in [("before", "before"), ("after", f"after T = {calibration['temperature']:.2f}")]:
        bins = calibration[key]["bins"]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label=f"{name}: ECE {calibration[key]['ece']:.3f}, Brier {calibration[key]['brier']:.3f}")
    ax.set_xlabel("confidence in the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plot_heatmap_grid(panels: Sequence[dict], path: str | Path, title: str = "Grad-CAM") -> Path:
    """Images with their heatmaps overlaid; each panel has `image` [H, W] in 0..1, `heatmap`
    [H, W] in 0..1 and a `caption`."""
    plt = _pyplot()
    columns = min(4, max(1, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), dpi=110, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, panel in zip(axes.ravel(), panels):
        ax.imshow(panel["image"], cmap="gray", vmin=0, vmax=1)
        ax.imshow(panel["heatmap"], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(panel["caption"], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
