"""Plots a user reads without a legend hunt: Optuna's parallel coordinates keep every line visible."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgb

from tuning.summary import _readable_lines, optuna_plots


def _luminance(rgb) -> float:
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(rgb)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _worst_contrast(axes) -> float:
    """The lowest WCAG contrast ratio of a trial's line against the plot's background."""
    lines = next(c for c in axes.collections if isinstance(c, LineCollection) and c.get_array() is not None)
    background = _luminance(axes.get_facecolor())
    return min((max(_luminance(c), background) + 0.05) / (min(_luminance(c), background) + 0.05) for c in lines.to_rgba(lines.get_array()))


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_every_parallel_coordinate_line_stands_out_from_the_background(direction: str, tmp_path: Path):
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plt

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: 50 * t.suggest_float("lr", 1e-5, 1e-2, log=True) + t.suggest_float("gamma", 0.05, 0.5), n_trials=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = optuna_plt.plot_parallel_coordinate(study)
    before = _worst_contrast(axes)
    _readable_lines(axes)
    after = _worst_contrast(axes)
    plt.close("all")
    assert before < 1.4 <= after, (before, after)  # Optuna's own palette fades the worst trial into the grey
    written = {p.name for p in optuna_plots(study, tmp_path)}
    assert "optuna_parallel_coordinates.png" in written and np.all([(tmp_path / n).stat().st_size > 0 for n in written])
