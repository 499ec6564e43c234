"""The one test evaluation of a selected checkpoint, as a single run and a search both report it:
test metrics for `fractured` as the positive class, the clinical report (intervals, an operating
point and a temperature chosen on validation), and the ROC, reliability and Grad-CAM plots.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fracture_models.clinical import DEFAULT_TARGET_SENSITIVITY, clinical_report
from fracture_models.config import TrainConfig
from fracture_models.data import DecodedSplit
from fracture_models.engine import build_training, load_checkpoint, predict, restore_training, select_device
from fracture_models.explain import heatmap_panels, pick_examples
from fracture_models.loader import BatchLoader
from fracture_models.metrics import classification_metrics
from fracture_models.plots import plot_heatmap_grid, plot_reliability, plot_roc_curve

ROC_FILE = "test_roc_curve.png"
RELIABILITY_FILE = "test_reliability.png"
GRADCAM_FILE = "test_gradcam.png"


def evaluate_checkpoint(
    checkpoint_path: Path,
    val_split: DecodedSplit,
    test_split: DecodedSplit,
    batch_size: int,
    folder: Path,
    *,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    seed: int = 0,
    device: torch.device | None = None,
) -> tuple[dict, dict, list[Path]]:
    """The single test evaluation of a selected checkpoint, and what a reader needs beside it.

    Validation (never test) picks the operating threshold and fits the temperature; the test
    split is predicted once. Returns the test metrics, the clinical report and its plots (ROC,
    reliability, Grad-CAM of correct and wrong test images).
    """
    checkpoint = load_checkpoint(checkpoint_path)
    config = TrainConfig.from_dict({**checkpoint["config"], "device": "auto", "weights": "none"})
    state = build_training(config, device or select_device())
    restore_training(state, checkpoint)
    common = dict(device=state.device, channels_last=state.channels_last)
    val_labels, val_probability, _ = predict(state, BatchLoader(val_split, batch_size, **common))
    test_labels, test_probability, test_loss = predict(state, BatchLoader(test_split, batch_size, **common))
    test = classification_metrics(test_labels, test_probability, loss=test_loss)
    test["checkpoint_epoch"] = int(checkpoint["epoch"])
    clinical = clinical_report(val_labels, val_probability, test_labels, test_probability, target_sensitivity=target_sensitivity, seed=seed)
    panels = heatmap_panels(
        state.model, config.arch, test_split.images, pick_examples(test_labels, test_probability), state.device, state.channels_last
    )
    folder.mkdir(parents=True, exist_ok=True)
    files = [
        plot_roc_curve(clinical, folder / ROC_FILE, title=f"{config.arch}: ROC curve on test"),
        plot_reliability(clinical["calibration"], folder / RELIABILITY_FILE, title=f"{config.arch}: reliability on test"),
        plot_heatmap_grid(panels, folder / GRADCAM_FILE, title=f"{config.arch}: Grad-CAM on test images, correct and wrong"),
    ]
    return test, clinical, [f for f in files if f is not None]


def _with_interval(rate: dict) -> str:
    if not rate["n"]:
        return "undefined (n=0)"
    low, high = rate["ci95"]
    return f"{rate['value']:.3f} (95% CI {low:.3f}-{high:.3f}, n={rate['n']})"


def format_clinical(clinical: dict) -> list[str]:
    """The winner's clinical figures: rates with Wilson intervals, AUC, operating point, calibration."""
    at_half, point, auc, calibration = clinical["at_0.5"], clinical["operating_point"], clinical["roc_auc"], clinical["calibration"]
    chosen = point["test"]
    lines = [f"Winner on test, for '{clinical['positive_class']}' at threshold 0.5:"]
    for key, label in [
        ("fracture_sensitivity", "sensitivity"),
        ("fracture_specificity", "specificity"),
        ("fracture_ppv", "PPV"),
        ("fracture_npv", "NPV"),
    ]:
        lines.append(f"{label:>24}  {_with_interval(at_half[key])}")
    lines.append(f"{'ROC AUC':>24}  {auc['value']:.3f} (95% bootstrap CI {auc['ci95'][0]:.3f}-{auc['ci95'][1]:.3f})")
    lines += [
        f"Operating threshold {chosen['threshold']:.3g}, chosen on validation for sensitivity >= {point['target_sensitivity']:.2f}; on test:",
        f"{'sensitivity':>24}  {_with_interval(chosen['fracture_sensitivity'])}",
        f"{'specificity':>24}  {_with_interval(chosen['fracture_specificity'])}",
        f"Calibration on test: ECE {calibration['before']['ece']:.3f} -> {calibration['after']['ece']:.3f}, "
        f"Brier {calibration['before']['brier']:.3f} -> {calibration['after']['brier']:.3f} "
        f"(temperature {calibration['temperature']:.2f}, fitted on validation)",
    ]
    return lines
