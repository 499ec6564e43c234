"""Early stopping for the search: ASHA, optionally cutting its rungs on another validation signal.

After 3 epochs the trials' order by fracture F1 predicts their final F1 order poorly (Spearman
0.51, benchmarks/README.md), while ROC AUC (0.60) and loss (0.68) do better: threshold-free
signals are less noisy early on. `RungMetricASHA` lets the rungs compare on such a signal while
the search (Optuna, checkpoints, the winner) stays on the search metric.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler


class RungMetricASHA(ASHAScheduler):
    """ASHA whose own metric and mode are kept when Tune passes the search's."""

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # keep the rung metric given at construction


def make_scheduler(name: str, *, metric: str, mode: str, rung_metric: str | None, rung_mode: str | None, max_epochs: int, grace_period: int, reduction_factor: float):
    if name == "none":
        return FIFOScheduler()
    common = dict(max_t=max_epochs, grace_period=min(grace_period, max_epochs), reduction_factor=reduction_factor)
    if rung_metric is None or rung_metric == metric:
        return ASHAScheduler(**common)
    return RungMetricASHA(metric=rung_metric, mode=rung_mode, **common)
