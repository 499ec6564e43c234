"""Classification metrics with `fractured` as the positive class, named explicitly.

`classification_metrics` returns a flat dict of scalars (easy to report to any tracker) plus
two structured entries: `confusion_matrix` (counts with labelled rows = true class and
columns = predicted class) and `per_class` (scikit-learn's report with support).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

from fracture_models.labels import CLASS_NAMES, NEGATIVE_LABEL, POSITIVE_CLASS, POSITIVE_LABEL

SCALAR_METRICS = (
    "loss",
    "accuracy",
    "fracture_precision",
    "fracture_recall",
    "fracture_f1",
    "fracture_sensitivity",
    "fracture_specificity",
    "roc_auc",
    "fractures_detected",
    "fractures_missed",
    "false_alarms",
    "true_negatives",
)


@dataclass(frozen=True)
class Metric:
    """What the platform knows of a metric: the one place its mode and names are stated."""

    name: str  # without a split prefix: "fracture_f1" is reported as val_fracture_f1 and test_fracture_f1
    mode: str  # "max" or "min": which way is better
    thresholded: bool  # depends on the 0.5 decision threshold (a poor early ranking signal)
    display: str


CATALOGUE: Mapping[str, Metric] = MappingProxyType(
    {
        m.name: m
        for m in (
            Metric("fracture_f1", "max", True, "fracture F1"),
            Metric("accuracy", "max", True, "accuracy"),
            Metric("roc_auc", "max", False, "ROC AUC"),
            Metric("fracture_sensitivity", "max", True, "fracture sensitivity"),
            Metric("fracture_specificity", "max", True, "fracture specificity"),
            Metric("fracture_precision", "max", True, "fracture precision"),
            Metric("loss", "min", False, "loss"),
        )
    }
)
SELECTION_METRICS = tuple(
    f"val_{name}" for name in ("fracture_f1", "accuracy", "roc_auc", "fracture_sensitivity", "fracture_specificity", "loss")
)
DEFAULT_SELECTION_METRIC = "val_fracture_f1"  # selection is on validation, always
_PREFIXES = ("best_", "confirm_", "val_", "test_", "train_")


def metric_info(name: str) -> Metric:
    """The catalogue entry of a (prefixed) metric name: `val_loss`, `test_accuracy`, `best_val_roc_auc`."""
    bare = name
    for prefix in _PREFIXES:
        bare = bare.removeprefix(prefix)
    if bare not in CATALOGUE:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(CATALOGUE)}")
    return CATALOGUE[bare]


def metric_mode(name: str) -> str:
    return metric_info(name).mode


def is_better(value: float, than: float, mode: str) -> bool:
    return value > than if mode == "max" else value < than


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def classification_metrics(
    labels: np.ndarray,
    fracture_probability: np.ndarray,
    *,
    threshold: float = 0.5,
    loss: float | None = None,
) -> dict:
    """Metrics for binary fracture detection; a prediction is `fractured` when p >= threshold."""
    labels = np.asarray(labels, dtype=np.int64)
    probability = np.asarray(fracture_probability, dtype=np.float64)
    if labels.shape != probability.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and probabilities {probability.shape} must be equal 1-D shapes")
    predicted = np.where(probability >= threshold, POSITIVE_LABEL, NEGATIVE_LABEL)
    order = list(range(len(CLASS_NAMES)))
    matrix = confusion_matrix(labels, predicted, labels=order)
    tp = int(matrix[POSITIVE_LABEL, POSITIVE_LABEL])
    fn = int(matrix[POSITIVE_LABEL, NEGATIVE_LABEL])
    fp = int(matrix[NEGATIVE_LABEL, POSITIVE_LABEL])
    tn = int(matrix[NEGATIVE_LABEL, NEGATIVE_LABEL])
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    both_classes = len(np.unique(labels)) == 2
    report = classification_report(labels, predicted, labels=order, target_names=list(CLASS_NAMES), output_dict=True, zero_division=0)
    return {
        "loss": float(loss) if loss is not None else math.nan,
        "accuracy": _ratio(tp + tn, len(labels)),
        "fracture_precision": precision,
        "fracture_recall": sensitivity,
        "fracture_f1": _ratio(2 * precision * sensitivity, precision + sensitivity),
        "fracture_sensitivity": sensitivity,
        "fracture_specificity": _ratio(tn, tn + fp),
        "roc_auc": float(roc_auc_score(labels, probability)) if both_classes else math.nan,
        "fractures_detected": tp,
        "fractures_missed": fn,
        "false_alarms": fp,
        "true_negatives": tn,
        "threshold": threshold,
        "positive_class": POSITIVE_CLASS,
        "num_images": int(len(labels)),
        "confusion_matrix": {"labels": list(CLASS_NAMES), "matrix": matrix.tolist()},
        "per_class": report,
    }


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """Only the numeric entries: what a tracker plots per epoch."""
    return {k: v for k, v in metrics.items() if k in SCALAR_METRICS}


def predicts_one_class(metrics: Mapping, prefix: str = "") -> bool:
    """True when every image got the same prediction: the model tells nothing apart.

    Threshold metrics flatter such a model: answering `fractured` for all gives sensitivity 1 and
    F1 = 2p/(1+p) (0.67 on a balanced split), better than many early real classifiers.
    """
    predicted_positive = metrics[f"{prefix}fractures_detected"] + metrics[f"{prefix}false_alarms"]
    predicted_negative = metrics[f"{prefix}fractures_missed"] + metrics[f"{prefix}true_negatives"]
    return bool(predicted_positive == 0 or predicted_negative == 0)


def selection_score(metrics: Mapping, name: str, mode: str, prefix: str = "") -> float:
    """`metrics[name]` for ranking checkpoints, demoted below every real classifier when the model
    predicts one class, so that a constant answer is never selected over one that discriminates."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    value = float(metrics[name])
    if not predicts_one_class(metrics, prefix):
        return value
    return value - DEMOTION if mode == "max" else value + DEMOTION


DEMOTION = 1e6  # far beyond the range of any metric here, so order within demoted epochs is kept


def confusion_from_counts(metrics: Mapping, prefix: str = "") -> dict:
    """The labelled confusion matrix (as in `classification_metrics`) rebuilt from the four counts
    that every epoch reports."""
    matrix = [[0, 0], [0, 0]]
    matrix[POSITIVE_LABEL][POSITIVE_LABEL] = int(metrics[f"{prefix}fractures_detected"])
    matrix[POSITIVE_LABEL][NEGATIVE_LABEL] = int(metrics[f"{prefix}fractures_missed"])
    matrix[NEGATIVE_LABEL][POSITIVE_LABEL] = int(metrics[f"{prefix}false_alarms"])
    matrix[NEGATIVE_LABEL][NEGATIVE_LABEL] = int(metrics[f"{prefix}true_negatives"])
    return {"labels": list(CLASS_NAMES), "matrix": matrix}


def best_epoch(history: Sequence[Mapping], metric: str, mode: str, prefix: str = "val_") -> Mapping | None:
    """The row of `history` (one per epoch) with the best selection score: the metric, demoted
    where the model answered one class. The one rule for a run's best epoch: checkpoints kept,
    summaries, tracking and the leaderboard all use it. Equal scores keep the earlier epoch."""
    best = None
    for row in history:
        if best is None or is_better(selection_score(row, metric, mode, prefix), selection_score(best, metric, mode, prefix), mode):
            best = row
    return best


def run_state(epochs_trained: int, max_epochs: int, *, failed: bool) -> str:
    """How a run ended: "failed", "stopped early" (fewer epochs than its budget) or "completed"."""
    return "failed" if failed else ("stopped early" if epochs_trained < max_epochs else "completed")
