"""Early stopping for the search: ASHA with its rungs where rankings are informative, compared on
the signal that ranks best early. Both defaults come from 150 random-search trials on generated
data (benchmarks/README.md, "Search efficiency"):

* Rungs. Stock ASHA puts them at grace x factor^k: for 10 epochs, grace 3 and factor 3 that is
  epochs 3 and 9, where a stop saves one epoch. Here the grace period doubles instead (3, 6),
  keeping the top 1/factor at each rung; `--rung-epochs` places them anywhere.
* Signal. Early on, validation ROC AUC orders trials much closer to their final fracture F1
  order than F1 itself does (Spearman 0.65 vs 0.47 at epoch 3, 0.88 vs 0.77 at epoch 6); loss
  does worse than both. So rungs compare AUC when the search metric is a thresholded one, while
  the search (Optuna, checkpoints, the winner) stays on the search metric.
"""

from __future__ import annotations

from typing import Sequence

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from fracture_models.metrics import metric_info

RANKING_SIGNAL = "val_roc_auc"  # what rungs compare when the search metric is a thresholded one


def default_rung_metric(metric: str) -> str:
    """ROC AUC for thresholded metrics (F1, accuracy, sensitivity, specificity), else the metric itself."""
    return RANKING_SIGNAL if metric_info(metric).thresholded else metric


def rung_epochs(max_epochs: int, grace_period: int, given: Sequence[int] | None = None) -> list[int]:
    """The epochs where trials are compared: `given` inside the budget, else the grace period
    doubled until the budget (3, 6 for 10 epochs; 3, 6, 12, 24 for 30)."""
    if given:
        return sorted({e for e in given if e < max_epochs})
    rungs, epoch = [], max(1, grace_period)
    while epoch < max_epochs:
        rungs.append(epoch)
        epoch *= 2
    return rungs


class FractureASHA(ASHAScheduler):
    """ASHA with rungs at the given epochs and, when told, its own metric kept over the search's."""

    def __init__(self, *, rung_epochs: Sequence[int], own_metric: bool = False, **kwargs):
        super().__init__(grace_period=min(rung_epochs), **kwargs)
        self._own_metric = own_metric
        milestones = sorted(set(rung_epochs), reverse=True)  # ASHA walks its rungs from the last one
        for bracket in self._brackets:
            bracket._rungs = [(epoch, {}) for epoch in milestones]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        if self._own_metric:
            return True  # keep the rung metric given at construction
        return super().set_search_properties(metric, mode, **spec)


def make_scheduler(
    name: str,
    *,
    metric: str,
    rung_metric: str,
    rung_mode: str,
    max_epochs: int,
    rung_epochs: Sequence[int],
    reduction_factor: float,
):
    """ASHA over `rung_epochs` (from `rung_epochs()`); with no rung inside the budget nothing can be stopped early."""
    if name == "none" or not rung_epochs:
        return FIFOScheduler()
    own_metric = rung_metric != metric
    return FractureASHA(
        metric=rung_metric if own_metric else None,
        mode=rung_mode if own_metric else None,
        own_metric=own_metric,
        max_t=max_epochs,
        reduction_factor=reduction_factor,
        rung_epochs=rung_epochs,
    )
