"""PNG plots a user would otherwise draw by hand: confusion matrix, curves, ROC, reliability, heatmaps.

Figures are made with matplotlib's object API (`matplotlib.figure.Figure`), not pyplot: saving a
file needs no display and leaves the backend of a notebook or application as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)


def _figure(rows: int = 1, columns: int = 1, **kwargs):
    from matplotlib.figure import Figure

    figure = Figure(figsize=kwargs.pop("figsize"), dpi=kwargs.pop("dpi"))
    return figure, figure.subplots(rows, columns, **kwargs)


def plot_confusion_matrix(confusion: dict, path: str | Path, title: str = "Confusion matrix") -> Path | None:
    """Counts with labelled axes (rows true class, columns predicted), as in `metrics`."""
    labels, matrix = confusion["labels"], confusion["matrix"]
    fig, ax = _figure(figsize=(4.6, 4.0), dpi=120)
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
    return _save(fig, path)


def plot_loss_curves(history: Sequence[dict], path: str | Path, title: str = "Loss") -> Path | None:
    """Training and validation loss per epoch from a run's history."""
    epochs = [row["epoch"] for row in history]
    fig, ax = _figure(figsize=(5.5, 3.6), dpi=120)
    ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    ax.plot(epochs, [row["val_loss"] for row in history], marker="o", label="validation")
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_learning_curves(
    curves: dict[str, tuple[Sequence[int], Sequence[float]]],
    path: str | Path,
    *,
    metric: str,
    highlight: str | None = None,
    title: str = "Trials",
    mode: str = "max",
    named: int = 5,
) -> Path | None:
    """One line per trial (`name -> (epochs, values)`), coloured by the trial's best value (the
    colour bar reads it); a line that ends early ends with an x. The `named` best trials and
    `highlight` (drawn on top, black) are named in the legend, so every line can be identified.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig, ax = _figure(figsize=(7.6, 4.4), dpi=120)
    drawn = {name: (list(e), list(v)) for name, (e, v) in curves.items() if len(e)}
    best = {name: (max(v) if mode == "max" else min(v)) for name, (_, v) in drawn.items()}
    longest = max((max(epochs) for epochs, _ in drawn.values()), default=1)
    low, high = (min(best.values()), max(best.values())) if best else (0.0, 1.0)
    norm = Normalize(low, high if high > low else low + 1e-9)
    colours = colormaps["viridis"] if mode == "max" else colormaps["viridis_r"]
    ranked = sorted(best, key=best.get, reverse=mode == "max")
    labelled = set(ranked[:named])
    for name in sorted(drawn, key=lambda n: (n == highlight, best[n] if mode == "max" else -best[n])):
        epochs, values = drawn[name]
        chosen = name == highlight
        colour = "black" if chosen else colours(norm(best[name]))
        label = f"{name} (selected, best {best[name]:.3f})" if chosen else (f"{name} (best {best[name]:.3f})" if name in labelled else None)
        ax.plot(
            epochs,
            values,
            lw=2.4 if chosen else 1.2,
            alpha=1.0 if chosen or name in labelled else 0.55,
            zorder=3 if chosen else 2,
            color=colour,
            label=label,
        )
        if max(epochs) < longest:
            ax.plot(epochs[-1], values[-1], "x", color=colour, ms=7)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if drawn:
        fig.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=ax, fraction=0.04, pad=0.02).set_label(f"trial's best {metric}")
        ax.legend(loc="best", fontsize=7, title=f"best {min(named, len(drawn))} of {len(drawn)} trials", title_fontsize=7)
    return _save(fig, path)


def _save(fig, path: str | Path, tight: bool = True) -> Path | None:
    """Write the PNG; a plot that cannot be written (disk full, no permission) is a warning, never
    the end of a job whose results are already safe elsewhere. Returns the path, or None."""
    if tight:
        fig.tight_layout()
    path = Path(path)
    try:
        fig.savefig(path)
    except OSError as exc:
        logger.warning("Could not write the plot %s (%s); the job goes on without it.", path, exc)
        if path.is_file() and not path.is_symlink():
            path.unlink()  # no half-written PNG left behind
        return None
    return path


def plot_roc_curve(report: dict, path: str | Path, title: str = "ROC curve (test)") -> Path | None:
    """The test ROC curve with its AUC interval, the 0.5 threshold and the validation-chosen operating point."""
    roc, auc = report["roc"], report["roc_auc"]
    fig, ax = _figure(figsize=(4.8, 4.6), dpi=120)
    ax.plot(
        roc["false_positive_rate"],
        roc["true_positive_rate"],
        lw=2,
        label=f"AUC {auc['value']:.3f} (95% CI {auc['ci95'][0]:.3f}-{auc['ci95'][1]:.3f})",
    )
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


def plot_reliability(calibration: dict, path: str | Path, title: str = "Reliability (test)") -> Path | None:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    fig, ax = _figure(figsize=(4.8, 4.6), dpi=120)
    ax.plot([0.5, 1], [0.5, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for key, name in [("before", "before"), ("after", f"after T = {calibration['temperature']:.2f}")]:
        bins = calibration[key]["bins"]
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            "o-",
            label=f"{name}: ECE {calibration[key]['ece']:.3f}, Brier {calibration[key]['brier']:.3f}",
        )
    ax.set_xlabel("confidence in the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plot_heatmap_grid(panels: Sequence[dict], path: str | Path, title: str = "Grad-CAM") -> Path | None:
    """Images with their heatmaps overlaid; each panel has `image` [H, W] in 0..1, `heatmap`
    [H, W] in 0..1 and a `caption`."""
    columns = min(4, max(1, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    fig, axes = _figure(rows, columns, figsize=(2.8 * columns, 3.3 * rows + 0.4), dpi=110, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, panel in zip(axes.ravel(), panels):
        ax.imshow(panel["image"], cmap="gray", vmin=0, vmax=1)
        ax.imshow(panel["heatmap"], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(panel["caption"], fontsize=7)
    fig.suptitle(title, fontsize=9)
    # Two-line captions need their own room: the rows are spaced so no title overlaps the image above.
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.8 / fig.get_figheight(), hspace=0.35, wspace=0.08)
    return _save(fig, path, tight=False)
