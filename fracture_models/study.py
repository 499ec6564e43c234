"""The study's recipe and its reported results: the baseline every run is measured against.

The study does not state the learning rate or batch size; Adam's default 1e-3 and 32 are the
usual reading and are assumed here.
"""

from __future__ import annotations

from types import MappingProxyType

# Hyperparameters that tuning varies, at the study's values.
BASELINE_HYPERPARAMETERS = MappingProxyType(
    {
        "lr": 1e-3,  # assumed: Adam's default (not stated in the study)
        "step_size": 7,  # StepLR(step_size=7, gamma=0.1)
        "gamma": 0.1,
        "aug_strength": 1.0,  # the documented augmentation in fracture_models.augment
    }
)

BASELINE_EPOCHS = 10
BASELINE_BATCH_SIZE = 32  # assumed (not stated in the study)
BASELINE_IMAGE_SIZE = 224

# Test results as the study reports them (506 test images). Its precision/recall/F1 only fit
# the confusion counts if the positive class was `not fractured`; the fracture_* columns are
# the same results read with `fractured` as the positive class (238 fractured / 268 not in
# test; precision and F1 for fractures derived from those counts, see shared STUDY.md).
STUDY_TEST_RESULTS = MappingProxyType(
    {
        "cnn": MappingProxyType(
            {
                "loss": 0.2100,
                "accuracy": 0.8913,
                "reported_precision": 0.8873,
                "reported_recall": 0.9104,
                "reported_f1": 0.8987,
                "fracture_sensitivity": 0.870,
                "fracture_specificity": 0.910,
                "fracture_precision": 0.8961,
                "fracture_f1": 0.8827,
                "fractures_missed": 31,
                "false_alarms": 24,
            }
        ),
        "resnet50": MappingProxyType(
            {
                "loss": 0.1556,
                "accuracy": 0.9368,
                "reported_precision": 1.0000,
                "reported_recall": 0.8806,
                "reported_f1": 0.9365,
                "fracture_sensitivity": 1.000,
                "fracture_specificity": 0.881,
                "fracture_precision": 0.8815,
                "fracture_f1": 0.937,
                "fractures_missed": 0,
                "false_alarms": 32,
            }
        ),
        "vgg16": MappingProxyType(
            {
                "loss": 0.0638,
                "accuracy": 0.9763,
                "reported_precision": 0.9848,
                "reported_recall": 0.9701,
                "reported_f1": 0.9774,
                "fracture_sensitivity": 0.983,
                "fracture_specificity": 0.970,
                "fracture_precision": 0.9669,
                "fracture_f1": 0.975,
                "fractures_missed": 4,
                "false_alarms": 8,
            }
        ),
    }
)
