from __future__ import annotations

import math

import numpy as np
import pytest

from fracture_models.labels import POSITIVE_LABEL
from fracture_models.metrics import classification_metrics, confusion_from_counts, predicts_one_class, scalar_metrics, selection_score
from fracture_models.plots import plot_confusion_matrix, plot_loss_curves

F, N = POSITIVE_LABEL, 1 - POSITIVE_LABEL


def test_fracture_metrics_for_a_known_confusion_matrix():
    # 10 fractured: 8 detected, 2 missed. 10 not fractured: 7 correct, 3 false alarms.
    labels = np.array([F] * 10 + [N] * 10)
    probability = np.array([0.9] * 8 + [0.2] * 2 + [0.1] * 7 + [0.7] * 3)
    m = classification_metrics(labels, probability, loss=0.5)
    assert (m["fractures_detected"], m["fractures_missed"], m["false_alarms"], m["true_negatives"]) == (8, 2, 3, 7)
    assert m["fracture_sensitivity"] == pytest.approx(0.8)
    assert m["fracture_specificity"] == pytest.approx(0.7)
    assert m["fracture_precision"] == pytest.approx(8 / 11)
    assert m["fracture_f1"] == pytest.approx(2 * (8 / 11) * 0.8 / (8 / 11 + 0.8))
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["positive_class"] == "fractured"
    assert m["confusion_matrix"] == {"labels": ["not fractured", "fractured"], "matrix": [[7, 3], [2, 8]]}
    assert m["per_class"]["fractured"]["support"] == 10
    assert m["per_class"]["not fractured"]["recall"] == pytest.approx(0.7)
    # AUC by hand: fractured scores 0.9 (x8) beat every negative; 0.2 (x2) beat only the seven 0.1s.
    assert m["roc_auc"] == pytest.approx((8 * 10 + 2 * 7) / 100)


def test_single_class_gives_nan_auc_not_an_error():
    m = classification_metrics(np.array([F, F]), np.array([0.9, 0.4]))
    assert math.isnan(m["roc_auc"]) and m["fracture_sensitivity"] == 0.5


def test_plots_are_png_files(tmp_path):
    m = classification_metrics(np.array([F, N, F, N]), np.array([0.8, 0.3, 0.4, 0.6]))
    cm = plot_confusion_matrix(m["confusion_matrix"], tmp_path / "cm.png")
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e} for e in (1, 2, 3)]
    curves = plot_loss_curves(history, tmp_path / "loss.png")
    for path in (cm, curves):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_a_constant_answer_is_never_selected_over_a_classifier():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    all_fractured = classification_metrics(labels, np.full(8, 0.9), loss=0.5)
    weak = classification_metrics(labels, np.array([0.9, 0.9, 0.2, 0.2, 0.9, 0.2, 0.2, 0.2]))
    # F1 flatters the constant answer (2p/(1+p) = 0.667) over a real, weak classifier (0.571).
    assert all_fractured["fracture_f1"] == pytest.approx(2 / 3)
    assert weak["fracture_f1"] == pytest.approx(4 / 7)
    assert predicts_one_class(all_fractured) and not predicts_one_class(weak)
    assert selection_score(weak, "fracture_f1", "max") == pytest.approx(4 / 7)
    assert selection_score(all_fractured, "fracture_f1", "max") < selection_score(weak, "fracture_f1", "max")
    assert selection_score(all_fractured, "loss", "min") > 1e5
    rows = {f"val_{k}": v for k, v in all_fractured.items()}
    assert predicts_one_class(rows, prefix="val_")


def test_confusion_matrix_rebuilt_from_reported_counts():
    labels = np.array([F, F, F, N, N, N, N])
    metrics = classification_metrics(labels, np.array([0.9, 0.8, 0.1, 0.7, 0.2, 0.3, 0.1]))
    row = {f"val_{k}": v for k, v in scalar_metrics(metrics).items()}
    assert confusion_from_counts(row, prefix="val_") == metrics["confusion_matrix"]


def test_a_plot_that_cannot_be_written_is_a_warning_not_an_error(tmp_path, caplog):
    # /dev/full answers every write with "No space left on device": a full disk, for real.
    for name in ("confusion.png", "loss.png"):
        (tmp_path / name).symlink_to("/dev/full")
    confusion = {"labels": ["not fractured", "fractured"], "matrix": [[5, 1], [2, 4]]}
    assert plot_confusion_matrix(confusion, tmp_path / "confusion.png") is None
    assert plot_loss_curves([{"epoch": 1, "train_loss": 0.7, "val_loss": 0.8}], tmp_path / "loss.png") is None
    assert "No space left on device" in caplog.text
