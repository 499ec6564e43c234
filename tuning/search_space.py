"""The search space, centred on the study's baseline: the common ranges here, and an architecture's
overrides in its registry entry (`fracture_models.models`, fact `search_space`).

Every range contains the baseline (lr 1e-3, StepLR step 7, gamma 0.1, augmentation 1.0),
which is always the first trial evaluated.

* lr (log scale). From scratch (the CNN, and the default for any architecture): 1e-4..1e-2, a
  decade each side of Adam's default. ResNet50 and VGG16 are fine-tuned from ImageNet weights,
  where 1e-3 is already at the high end for Adam: their entries override it with 1e-5..3e-3
  (VGG16's 138 M parameters diverge easily above).
* step_size (integer epochs, 2..10): how long StepLR holds the rate before decaying it. With a
  10-epoch budget, 10 means "never decay"; 2 decays early and often.
* gamma (log scale, 0.01..0.5): the decay factor; 0.1 is the study's one-decade drop, 0.5 a
  gentle halving, 0.01 nearly stops learning after the step.
* aug_strength (0..2): 0 = no augmentation, 1.0 = the documented baseline, 2.0 = twice the
  rotation and jitter (see fracture_models.augment).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from fracture_models.study import BASELINE_HYPERPARAMETERS


@dataclass(frozen=True)
class Range:
    """One searched hyperparameter: `log` and `int` pick Optuna's distribution."""

    low: float
    high: float
    log: bool = False
    integer: bool = False


COMMON_SPACE: Mapping[str, Range] = MappingProxyType(
    {
        "lr": Range(1e-4, 1e-2, log=True),
        "step_size": Range(2, 10, integer=True),
        "gamma": Range(0.01, 0.5, log=True),
        "aug_strength": Range(0.0, 2.0),
    }
)


def baseline_point() -> dict:
    """The study's configuration, evaluated first in every search."""
    return dict(BASELINE_HYPERPARAMETERS)


def search_space(arch: str) -> Mapping[str, Range]:
    """The common space with the architecture's overrides; every range keeps the baseline inside."""
    from fracture_models.models import architecture

    overrides = architecture(arch).search_space
    unknown = set(overrides) - set(COMMON_SPACE)
    if unknown:
        raise ValueError(f"architecture {arch!r} overrides unknown hyperparameters {sorted(unknown)}; searched: {sorted(COMMON_SPACE)}")
    space = {name: Range(**overrides[name]) if name in overrides else r for name, r in COMMON_SPACE.items()}
    outside = [n for n, r in space.items() if not r.low <= BASELINE_HYPERPARAMETERS[n] <= r.high]
    if outside:
        raise ValueError(f"architecture {arch!r}: the baseline lies outside its range for {outside}")
    return MappingProxyType(space)


def to_optuna(space: Mapping[str, Range]) -> dict:
    """Optuna distributions for the same ranges (what OptunaSearch samples from)."""
    from optuna.distributions import FloatDistribution, IntDistribution

    return {
        name: IntDistribution(int(r.low), int(r.high)) if r.integer else FloatDistribution(r.low, r.high, log=r.log)
        for name, r in space.items()
    }


def describe(space: Mapping[str, Range]) -> dict:
    """Plain, JSON-ready description (for summaries and tracking tags)."""
    return {name: {"low": r.low, "high": r.high, "log": r.log, "integer": r.integer} for name, r in space.items()}
