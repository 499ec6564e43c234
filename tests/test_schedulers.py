"""ASHA as the search builds it: where its rungs are and which signal they compare."""

from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuning.schedulers import default_rung_metric, make_scheduler, rung_epochs


def _stopped_at(scheduler, curves: list[list[dict]]) -> list[int | None]:
    """Feed each trial's epochs in turn (trial by trial, as async ASHA sees finished trials);
    the epoch at which each was stopped early, or None (ASHA also says STOP at the last epoch)."""
    trials = [Trial("fracture", stub=True) for _ in curves]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    stops = []
    for trial, curve in zip(trials, curves):
        stop = None
        for epoch, row in enumerate(curve, start=1):
            action = scheduler.on_trial_result(None, trial, {"training_iteration": epoch, **row})
            if action == TrialScheduler.STOP and epoch < len(curve):
                stop = epoch
                break
        stops.append(stop)
    return stops


def _curves(values_by_trial: list[float], epochs: int, key: str = "val_fracture_f1") -> list[list[dict]]:
    return [[{key: v} for _ in range(epochs)] for v in values_by_trial]


def test_rung_epochs_put_the_rungs_where_asked():
    rungs = rung_epochs(10, 1, [6, 3, 12])
    assert rungs == [3, 6]  # 12 is past the budget
    scheduler = make_scheduler(
        "asha",
        metric="val_fracture_f1",
        rung_metric="val_fracture_f1",
        rung_mode="max",
        max_epochs=10,
        rung_epochs=rungs,
        reduction_factor=3,
    )
    scheduler.set_search_properties("val_fracture_f1", "max")
    # Not compared before epoch 3 (the first rung), then at 6; stock ASHA would compare at 9.
    good_then_bad = [[{"val_fracture_f1": 0.9}] * 5 + [{"val_fracture_f1": 0.1}] * 5]
    bad_from_start = [[{"val_fracture_f1": 0.1}] * 10]
    assert _stopped_at(scheduler, _curves([0.5, 0.6], 10) + good_then_bad + bad_from_start) == [None, None, 6, 3]


def test_rung_metric_is_kept_over_the_search_metric():
    scheduler = make_scheduler(
        "asha", metric="val_fracture_f1", rung_metric="val_roc_auc", rung_mode="max", max_epochs=4, rung_epochs=[1, 2], reduction_factor=2
    )
    scheduler.set_search_properties("val_fracture_f1", "max")  # what Tune calls with the search's metric
    # F1 says the third trial is best; AUC says it is worst, and AUC decides.
    curves = [[{"val_fracture_f1": f1, "val_roc_auc": auc}] * 4 for f1, auc in [(0.5, 0.8), (0.5, 0.9), (0.99, 0.1)]]
    assert _stopped_at(scheduler, curves) == [None, None, 1]


def test_defaults_double_the_grace_period_and_rank_thresholded_metrics_by_auc():
    assert rung_epochs(10, 3) == [3, 6]
    assert rung_epochs(30, 3) == [3, 6, 12, 24]
    assert rung_epochs(4, 1) == [1, 2]
    assert rung_epochs(3, 3) == [] and rung_epochs(10, 3, [12]) == []  # no rung inside the budget:
    assert isinstance(
        make_scheduler(
            "asha", metric="val_loss", rung_metric="val_loss", rung_mode="min", max_epochs=3, rung_epochs=[], reduction_factor=3
        ),
        FIFOScheduler,
    )  # nothing stops early
    assert default_rung_metric("val_fracture_f1") == default_rung_metric("val_accuracy") == "val_roc_auc"
    assert default_rung_metric("val_loss") == "val_loss" and default_rung_metric("val_roc_auc") == "val_roc_auc"
