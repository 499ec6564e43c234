"""What a clinical reader asks of a fracture detector: rates with 95% intervals, an operating
threshold chosen on validation, calibration before and after temperature scaling.

Everything here takes labels and fracture probabilities (numpy), so it runs on any model's
output; `fractured` is the positive class throughout.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

from fracture_models.labels import POSITIVE_CLASS, POSITIVE_LABEL

DEFAULT_TARGET_SENSITIVITY = 0.95
BOOTSTRAP_RESAMPLES = 2000
CALIBRATION_BINS = 15
_EPS = 1e-7


def wilson_interval(successes: int, total: int) -> tuple[float, float]:
    """Wilson score 95% interval for a proportion (sound at 0, 1 and small n, unlike Wald's)."""
    if total == 0:
        return (math.nan, math.nan)
    from scipy.stats import binomtest

    interval = binomtest(successes, total).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(interval.low), float(interval.high))


def _rate(successes: int, total: int) -> dict:
    low, high = wilson_interval(successes, total)
    return {"value": successes / total if total else math.nan, "ci95": [low, high], "n": total}


def rates_with_intervals(labels: np.ndarray, probability: np.ndarray, threshold: float) -> dict:
    """Sensitivity, specificity, PPV and NPV for fractures at `threshold`, each with a Wilson 95% CI."""
    labels = np.asarray(labels)
    predicted = np.asarray(probability) >= threshold
    positive = labels == POSITIVE_LABEL
    tp, fn = int((predicted & positive).sum()), int((~predicted & positive).sum())
    fp, tn = int((predicted & ~positive).sum()), int((~predicted & ~positive).sum())
    return {
        "threshold": float(threshold),
        "positive_class": POSITIVE_CLASS,
        "fracture_sensitivity": _rate(tp, tp + fn),
        "fracture_specificity": _rate(tn, tn + fp),
        "fracture_ppv": _rate(tp, tp + fp),
        "fracture_npv": _rate(tn, tn + fn),
        "counts": {"fractures_detected": tp, "fractures_missed": fn, "false_alarms": fp, "true_negatives": tn},
    }


def _mann_whitney_auc(positive_scores: np.ndarray, sorted_negative_scores: np.ndarray) -> float:
    """ROC AUC as the chance that a fracture outscores a non-fracture, ties counting half: the
    same number as `roc_auc_score`, in O(n log n) without its input checks (the bootstrap calls it
    thousands of times)."""
    below = np.searchsorted(sorted_negative_scores, positive_scores, "left")
    up_to = np.searchsorted(sorted_negative_scores, positive_scores, "right")
    return float((below + up_to).sum() / (2 * len(positive_scores) * len(sorted_negative_scores)))


def auc_with_interval(labels: np.ndarray, probability: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """ROC AUC with a 95% percentile bootstrap interval, resampling within each class."""
    labels, probability = np.asarray(labels), np.asarray(probability)
    positives, negatives = np.flatnonzero(labels == POSITIVE_LABEL), np.flatnonzero(labels != POSITIVE_LABEL)
    if not len(positives) or not len(negatives):
        return {"value": math.nan, "ci95": [math.nan, math.nan], "resamples": 0}
    rng = np.random.default_rng(seed)
    aucs = np.empty(resamples)
    for k in range(resamples):
        positive_scores = probability[rng.choice(positives, len(positives))]
        aucs[k] = _mann_whitney_auc(positive_scores, np.sort(probability[rng.choice(negatives, len(negatives))]))
    low, high = np.percentile(aucs, [2.5, 97.5])
    return {"value": float(roc_auc_score(labels == POSITIVE_LABEL, probability)), "ci95": [float(low), float(high)], "resamples": resamples}


def threshold_for_sensitivity(labels: np.ndarray, probability: np.ndarray, target: float = DEFAULT_TARGET_SENSITIVITY) -> float:
    """The highest threshold whose fracture sensitivity on these (validation) images reaches `target`."""
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    scores = np.sort(np.asarray(probability)[np.asarray(labels) == POSITIVE_LABEL])[::-1]
    if not len(scores):
        raise ValueError("no fractured images to choose a threshold on")
    needed = math.ceil(target * len(scores) - 1e-9)  # fractures that must score >= the threshold
    return float(scores[needed - 1])


def roc_points(labels: np.ndarray, probability: np.ndarray) -> dict:
    fpr, tpr, thresholds = roc_curve(np.asarray(labels) == POSITIVE_LABEL, probability)
    return {"false_positive_rate": fpr.tolist(), "true_positive_rate": tpr.tolist(), "thresholds": np.minimum(thresholds, 1.0).tolist()}


# ---------------------------------------------------------------------------------------------
# Calibration


def _logit(probability: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probability, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probability: np.ndarray, temperature: float) -> np.ndarray:
    """Fracture probabilities with the two-class logits divided by `temperature`.

    For two classes softmax(z / T) keeps only the logit difference, so this is exact on the
    probabilities alone."""
    return 1 / (1 + np.exp(-_logit(probability) / temperature))


def fit_temperature(labels: np.ndarray, probability: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood on (validation) images."""
    from scipy.optimize import minimize_scalar

    y = (np.asarray(labels) == POSITIVE_LABEL).astype(np.float64)
    z = _logit(probability)

    def nll(log_t: float) -> float:
        p = np.clip(1 / (1 + np.exp(-z / math.exp(log_t))), _EPS, 1 - _EPS)
        return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())

    return float(math.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x))


def expected_calibration_error(labels: np.ndarray, probability: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE over equal-width bins of the confidence in the predicted class."""
    return float(
        sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(labels, probability, bins)) / max(len(labels), 1)
    )


def reliability_bins(labels: np.ndarray, probability: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per confidence bin: how many images, their mean confidence and how often the prediction was right."""
    labels, probability = np.asarray(labels), np.asarray(probability, dtype=np.float64)
    predicted = np.where(probability >= 0.5, POSITIVE_LABEL, 1 - POSITIVE_LABEL)
    confidence = np.where(predicted == POSITIVE_LABEL, probability, 1 - probability)
    correct = predicted == labels
    edges = np.linspace(0.5, 1.0, bins + 1)  # a two-class prediction is at least 50% confident
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "count": int(inside.sum()),
                    "confidence": float(confidence[inside].mean()),
                    "accuracy": float(correct[inside].mean()),
                }
            )
    return rows


def brier_score(labels: np.ndarray, probability: np.ndarray) -> float:
    y = (np.asarray(labels) == POSITIVE_LABEL).astype(np.int64)
    return float(brier_score_loss(y, np.asarray(probability, dtype=np.float64), pos_label=1))


def calibration_report(val_labels, val_probability, test_labels, test_probability) -> dict:
    """Temperature fitted on validation; ECE and Brier score on test before and after."""
    temperature = fit_temperature(val_labels, val_probability)
    scaled = apply_temperature(test_probability, temperature)
    return {
        "temperature": temperature,
        "fitted_on": "val",
        "before": {
            "ece": expected_calibration_error(test_labels, test_probability),
            "brier": brier_score(test_labels, test_probability),
            "bins": reliability_bins(test_labels, test_probability),
        },
        "after": {
            "ece": expected_calibration_error(test_labels, scaled),
            "brier": brier_score(test_labels, scaled),
            "bins": reliability_bins(test_labels, scaled),
        },
    }


def clinical_report(
    val_labels: np.ndarray,
    val_probability: np.ndarray,
    test_labels: np.ndarray,
    test_probability: np.ndarray,
    *,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    seed: int = 0,
) -> dict:
    """The winner's test results a reader can defend: rates with intervals at 0.5 and at the
    threshold chosen on validation for `target_sensitivity`, AUC with an interval, the ROC
    curve and calibration. Validation chooses; test is only measured."""
    threshold = threshold_for_sensitivity(val_labels, val_probability, target_sensitivity)
    return {
        "positive_class": POSITIVE_CLASS,
        "num_images": int(len(test_labels)),
        "at_0.5": rates_with_intervals(test_labels, test_probability, 0.5),
        "operating_point": {
            "target_sensitivity": target_sensitivity,
            "chosen_on": "val",
            "val": rates_with_intervals(val_labels, val_probability, threshold),
            "test": rates_with_intervals(test_labels, test_probability, threshold),
        },
        "roc_auc": auc_with_interval(test_labels, test_probability, seed=seed),
        "roc": roc_points(test_labels, test_probability),
        "calibration": calibration_report(val_labels, val_probability, test_labels, test_probability),
    }


def clinical_scalars(report: dict) -> dict[str, float]:
    """The report's numbers as flat names, for trackers (MLflow metrics, leaderboards)."""
    flat: dict[str, float] = {}
    for prefix, rates in [("", report["at_0.5"]), ("operating_", report["operating_point"]["test"])]:
        for key in ("fracture_sensitivity", "fracture_specificity", "fracture_ppv", "fracture_npv"):
            flat[f"{prefix}{key}"] = rates[key]["value"]
            flat[f"{prefix}{key}_ci_low"], flat[f"{prefix}{key}_ci_high"] = rates[key]["ci95"]
    flat["operating_threshold"] = report["operating_point"]["test"]["threshold"]
    flat["roc_auc_ci_low"], flat["roc_auc_ci_high"] = report["roc_auc"]["ci95"]
    calibration = report["calibration"]
    flat.update(
        temperature=calibration["temperature"],
        ece=calibration["before"]["ece"],
        ece_calibrated=calibration["after"]["ece"],
        brier=calibration["before"]["brier"],
        brier_calibrated=calibration["after"]["brier"],
    )
    return flat
