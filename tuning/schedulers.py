"""Early stopping for the search: ASHA, with its rungs placed where rankings are informative and
optionally compared on another validation signal than the search metric.

Stock ASHA puts rungs at grace × factor^k: for a 10-epoch budget with grace 3 and factor 3 that
is epochs 3 and 9, and a stop at 9 saves one epoch. `rung_epochs` places the rungs at any
epochs (e.g. 3 and 6), still keeping the top 1/factor at each. `rung_metric` lets the rungs
compare a threshold-free signal (ROC AUC ranks trials at epochs 3-5 closer to their final F1
order than F1 itself does; benchmarks/README.md) while the search (Optuna, checkpoints, the
winner) stays on the search metric.
"""

from __future__ import annotations

from typing import Sequence

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler


class FractureASHA(ASHAScheduler):
    """ASHA with rungs at the given epochs and, when told, its own metric kept over the search's."""

    def __init__(self, *, rung_epochs: Sequence[int] | None = None, own_metric: bool = False, **kwargs):
        super().__init__(**kwargs)
        self._own_metric = own_metric
        if rung_epochs:
            milestones = sorted(set(rung_epochs), reverse=True)  # ASHA walks its rungs from the last one
            for bracket in self._brackets:
                bracket._rungs = [(epoch, {}) for epoch in milestones]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        if self._own_metric:
            return True  # keep the rung metric given at construction
        return super().set_search_properties(metric, mode, **spec)


def make_scheduler(
    name: str, *, metric: str, mode: str, rung_metric: str | None, rung_mode: str | None, max_epochs: int,
    grace_period: int, reduction_factor: float, rung_epochs: Sequence[int] | None = None,
):
    if name == "none":
        return FIFOScheduler()
    rungs = sorted(e for e in (rung_epochs or ()) if e < max_epochs)
    own_metric = rung_metric is not None and rung_metric != metric
    return FractureASHA(
        metric=rung_metric if own_metric else None, mode=rung_mode if own_metric else None, own_metric=own_metric,
        max_t=max_epochs, grace_period=rungs[0] if rungs else min(grace_period, max_epochs),
        reduction_factor=reduction_factor, rung_epochs=rungs or None,
    )
