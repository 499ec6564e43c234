"""Clinical metrics by hand, temperature scaling on an over-confident model, Grad-CAM per architecture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fracture_models.clinical import (
    apply_temperature,
    auc_with_interval,
    calibration_report,
    clinical_report,
    expected_calibration_error,
    rates_with_intervals,
    threshold_for_sensitivity,
    wilson_interval,
)
from fracture_models.config import TrainConfig
from fracture_models.data import load_dataset
from fracture_models.engine import build_training, fit, make_loaders, predict
from fracture_models.explain import gradcam, gradcam_layer, heatmap_panels, pick_examples
from fracture_models.loader import BatchLoader
from fracture_models.models import create_model, list_models
from fracture_models.plots import plot_heatmap_grid, plot_reliability, plot_roc_curve


def _scores(tp: int, fn: int, fp: int, tn: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([1] * (tp + fn) + [0] * (fp + tn))
    probability = np.array([0.9] * tp + [0.1] * fn + [0.8] * fp + [0.2] * tn)
    return labels, probability


def test_rates_and_wilson_intervals_match_a_hand_computation():
    # 90 of 100 fractures found, 160 of 200 intact bones cleared.
    labels, probability = _scores(tp=90, fn=10, fp=40, tn=160)
    rates = rates_with_intervals(labels, probability, 0.5)
    # Wilson by hand for 90/100: centre (0.9 + 1.96^2/200) / (1 + 1.96^2/100), half-width
    # 1.96 * sqrt(0.9 * 0.1 / 100 + 1.96^2 / 40000) / (1 + 1.96^2 / 100).
    z = 1.959963984540054
    d = 1 + z * z / 100
    centre, half = (0.9 + z * z / 200) / d, z * math.sqrt(0.0009 + z * z / 40000) / d
    assert rates["fracture_sensitivity"]["value"] == 0.9
    assert rates["fracture_sensitivity"]["ci95"] == pytest.approx([centre - half, centre + half], abs=1e-12)
    assert rates["fracture_sensitivity"]["ci95"] == pytest.approx([0.8256, 0.9448], abs=1e-4)  # published tables
    assert rates["fracture_specificity"]["value"] == 0.8
    assert rates["fracture_specificity"]["ci95"] == pytest.approx([0.7391, 0.8495], abs=1e-4)
    assert rates["fracture_ppv"]["value"] == pytest.approx(90 / 130)
    assert rates["fracture_npv"]["value"] == pytest.approx(160 / 170)
    assert rates["counts"] == {"fractures_detected": 90, "fractures_missed": 10, "false_alarms": 40, "true_negatives": 160}
    assert wilson_interval(0, 20)[0] == 0.0 and 0.15 < wilson_interval(0, 20)[1] < 0.17
    assert wilson_interval(20, 20)[1] == 1.0


def test_auc_interval_covers_the_auc_and_the_threshold_reaches_the_target_on_validation():
    rng = np.random.default_rng(0)
    labels = np.array([1] * 150 + [0] * 150)
    probability = 1 / (1 + np.exp(-(rng.normal(0, 1, 300) + 1.5 * (labels * 2 - 1))))
    auc = auc_with_interval(labels, probability, resamples=500)
    assert auc["ci95"][0] < auc["value"] < auc["ci95"][1] and auc["ci95"][1] - auc["ci95"][0] < 0.12
    threshold = threshold_for_sensitivity(labels, probability, 0.95)
    found = (probability[labels == 1] >= threshold).mean()
    assert found >= 0.95 and (probability[labels == 1] > threshold).mean() < 0.95  # the highest such threshold


def test_bootstrap_auc_is_sklearns_auc_ties_included():
    """The bootstrap's fast AUC (rank counting) gives roc_auc_score's number, ties counting half."""
    from sklearn.metrics import roc_auc_score

    from fracture_models.clinical import _mann_whitney_auc

    rng = np.random.default_rng(1)
    for n in (7, 60, 400):
        labels = np.array([0, 1] + list(rng.integers(0, 2, n - 2)))
        probability = rng.integers(0, 6, n) / 5  # many ties
        positives, negatives = probability[labels == 1], np.sort(probability[labels == 0])
        assert _mann_whitney_auc(positives, negatives) == pytest.approx(roc_auc_score(labels, probability), abs=1e-12)


def test_temperature_scaling_lowers_ece_of_an_over_confident_model(learnable_download, tmp_path):
    """A real CNN trained a few epochs, made over-confident by scaling its last layer by 8."""
    data = load_dataset(learnable_download, 32)
    state = build_training(TrainConfig(arch="cnn", image_size=32, epochs=4, batch_size=16))
    fit(state, *make_loaders(state, data.train, data.val))
    last = state.model.classifier[-1]
    with torch.no_grad():
        last.weight.mul_(8)
        last.bias.mul_(8)
    val_y, val_p, _ = predict(state, BatchLoader(data.val, 64, device=state.device))
    test_y, test_p, _ = predict(state, BatchLoader(data.test, 64, device=state.device))
    report = calibration_report(val_y, val_p, test_y, test_p)
    assert report["temperature"] > 2  # it undoes much of the factor 8
    assert report["after"]["ece"] < report["before"]["ece"] * 0.7, report
    assert report["after"]["brier"] < report["before"]["brier"]
    assert expected_calibration_error(test_y, apply_temperature(test_p, report["temperature"])) == pytest.approx(report["after"]["ece"])
    # The whole clinical report on the same model, and its plots.
    clinical = clinical_report(val_y, val_p, test_y, test_p)
    assert clinical["operating_point"]["val"]["fracture_sensitivity"]["value"] >= 0.95
    assert clinical["num_images"] == len(test_y) and clinical["positive_class"] == "fractured"
    for plot, arg in [(plot_roc_curve, clinical), (plot_reliability, clinical["calibration"])]:
        path = plot(arg, tmp_path / f"{plot.__name__}.png")
        assert path.stat().st_size > 10_000


@pytest.mark.parametrize("arch", list_models())
def test_gradcam_gives_a_heatmap_of_the_input_size_for_every_architecture(arch: str):
    torch.manual_seed(0)
    model = create_model(arch, weights="none", image_size=64).eval()
    assert isinstance(gradcam_layer(model, arch), torch.nn.Module)
    inputs = torch.randn(2, 3, 64, 64)
    heat = gradcam(model, arch, inputs, torch.tensor([0, 1]))
    assert heat.shape == (2, 64, 64) and heat.dtype == torch.float32
    assert float(heat.min()) >= 0 and float(heat.max()) <= 1
    assert all(float(h.max()) == pytest.approx(1.0) for h in heat if float(h.max()) > 0)
    assert any(float(h.max()) > 0 for h in heat)


def test_heatmap_grid_over_correct_and_wrong_examples(tmp_path):
    labels = np.array([0, 0, 0, 1, 1, 1])
    probability = np.array([0.1, 0.3, 0.7, 0.9, 0.6, 0.2])
    examples = pick_examples(labels, probability, per_group=1)
    assert [(e["index"], e["correct"]) for e in examples] == [(0, True), (2, False), (3, True), (5, False)]
    images = torch.randint(0, 256, (6, 1, 48, 48), dtype=torch.uint8)
    model = create_model("cnn", image_size=48).eval()
    panels = heatmap_panels(model, "cnn", images, examples, torch.device("cpu"))
    assert len(panels) == 4 and panels[0]["heatmap"].shape == (48, 48)
    assert plot_heatmap_grid(panels, tmp_path / "gradcam.png").stat().st_size > 10_000
