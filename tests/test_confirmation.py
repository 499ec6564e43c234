"""Selection above the noise, on a stub objective whose seed-to-seed noise is known."""

from __future__ import annotations

import numpy as np
import pytest

from fracture_models.study import BASELINE_HYPERPARAMETERS
from tuning.confirmation import CONFIRMS, PlannedRun, max_runs, paired_difference, plan, run_confirmation

NAMES = list(BASELINE_HYPERPARAMETERS)
NOISE_SD = 0.013  # seed-to-seed sd of validation F1 measured by benchmarks/objective_noise.py
SEED = 0
# Each configuration's true mean validation F1 and the noise of each training seed. "lucky" has the
# best single run (seed 0 drew +2.5 sd) but a lower mean than "steady".
TRUE_MEAN = {"lucky": 0.900, "steady": 0.925, "third": 0.905, "baseline": 0.890}
SEED_NOISE = {
    "lucky": [0.0325, -0.004, 0.003],
    "steady": [-0.006, 0.004, -0.002],
    "third": [0.002, 0.0, -0.003],
    "baseline": [0.001, -0.002, 0.004],
}


def _config(name: str) -> dict:
    if name == "baseline":
        return dict(BASELINE_HYPERPARAMETERS)
    lr = {"lucky": 3e-4, "steady": 2e-3, "third": 5e-4}[name]
    return {**BASELINE_HYPERPARAMETERS, "lr": lr}


def _score(name: str, seed: int) -> float:
    return TRUE_MEAN[name] + SEED_NOISE[name][seed - SEED]


def _row(name: str, trial_id: str, seed: int = SEED, status: str = "completed", **extra) -> dict:
    value = _score(name, seed)
    return {
        "trial_id": trial_id,
        **_config(name),
        "best_value": value,
        "checkpoint_score": value,
        "predicts_one_class": False,
        "status": status,
        "epochs": 10,
        "seconds": 1.0,
        **extra,
    }


def _search_rows() -> list[dict]:
    rows = [_row(n, f"t-{n}") for n in TRUE_MEAN] + [_row("third", "t-stopped", status="stopped early")]
    rows[-1]["lr"] = 9e-4  # another configuration, stopped early by ASHA
    return sorted(rows, key=lambda r: -r["checkpoint_score"])


def _stub_train(runs: list[PlannedRun]) -> list[dict]:
    """Trains nothing: each run scores its configuration's true mean plus its seed's noise."""
    name_of = {f"t-{n}": n for n in TRUE_MEAN}
    return [_row(name_of[run.confirms], f"c{i}", seed=run.seed) | {"seed": run.seed, CONFIRMS: run.confirms} for i, run in enumerate(runs)]


def _confirm(**overrides) -> dict:
    settings = dict(
        names=NAMES,
        baseline=BASELINE_HYPERPARAMETERS,
        seed=SEED,
        mode="max",
        metric="val_fracture_f1",
        epochs=10,
        epochs_trained=500,
        top=3,
        extra_seeds=2,
        budget=0.25,
        train=_stub_train,
    )
    return run_confirmation(_search_rows(), **{**settings, **overrides})


def test_the_best_single_run_loses_to_a_better_mean():
    rows = _search_rows()
    assert rows[0]["trial_id"] == "t-lucky"  # what one run per configuration would pick
    confirmation = _confirm()
    assert confirmation["winner"] == "t-steady" != rows[0]["trial_id"]
    assert confirmation["tested_run"] == "t-steady"  # the winner's own search run is the one tested
    by_id = {c["trial_id"]: c for c in confirmation["configurations"]}
    assert set(by_id) == {"t-lucky", "t-steady", "t-third", "t-baseline"}  # the stopped trial is no candidate
    assert by_id["t-steady"]["n"] == 3 and by_id["t-steady"]["mean"] == pytest.approx(TRUE_MEAN["steady"] + np.mean(SEED_NOISE["steady"]))
    assert by_id["t-lucky"]["mean"] < by_id["t-steady"]["mean"] < by_id["t-lucky"]["single_run_value"]
    assert by_id["t-steady"]["sd"] == pytest.approx(np.std([_score("steady", s) for s in (0, 1, 2)], ddof=1))
    assert [c["trial_id"] for c in confirmation["configurations"]][0] == "t-steady"


def test_the_difference_from_the_baseline_is_paired_by_seed_and_judged_in_words():
    confirmation = _confirm()
    difference = confirmation["difference_vs_baseline"]
    expected = [_score("steady", s) - _score("baseline", s) for s in (0, 1, 2)]
    assert difference["seeds"] == [0, 1, 2] and difference["differences"] == pytest.approx(expected)
    low, high = difference["ci95"]
    assert low < difference["mean"] < high and low > 0  # +0.035 with a spread of 0.006: beyond noise
    assert confirmation["verdict"].startswith("Beyond noise")
    # Two configurations the noise cannot tell apart: the verdict says so.
    same = paired_difference({0: 0.90, 1: 0.91, 2: 0.89}, {0: 0.905, 1: 0.895, 2: 0.90})
    assert same["ci95"][0] < 0 < same["ci95"][1]
    assert paired_difference({0: 0.9}, {0: 0.8}) is None  # one pair has no spread to judge by


def test_confirmation_stays_within_its_budget_and_plans_round_by_round():
    # 25% of a 50-trial search's 285 epochs (ASHA, benchmarks/README.md) holds 7 runs of 10 epochs.
    assert max_runs(0.25, 285, 10) == 7
    confirmation = _confirm(epochs_trained=285)
    planned = [(r["confirms"], r["seed"]) for r in confirmation["planned"]]
    # Round 1: every candidate's first extra seed (best single run, then the baseline); round 2 until the budget ends.
    assert planned == [
        ("t-lucky", 1),
        ("t-baseline", 1),
        ("t-steady", 1),
        ("t-third", 1),
        ("t-lucky", 2),
        ("t-baseline", 2),
        ("t-steady", 2),
    ]
    assert confirmation["runs_left_out_by_budget"] == 1
    assert confirmation["extra_epochs"] == 70 and confirmation["extra_fraction"] == pytest.approx(70 / 285) and 70 / 285 <= 0.25
    assert confirmation["winner"] == "t-steady"


def test_a_baseline_stopped_early_is_retrained_with_the_search_seed_first():
    rows = [dict(r, status="stopped early", epochs=3) if r["trial_id"] == "t-baseline" else r for r in _search_rows()]
    runs, left_out = plan(
        [
            {"row": rows[0], "is_baseline": False, "rank": 0},
            {"row": next(r for r in rows if r["trial_id"] == "t-baseline"), "is_baseline": True, "rank": 4},
        ],
        NAMES,
        SEED,
        2,
        limit=10,
    )
    assert [(r.confirms, r.seed) for r in runs] == [("t-lucky", 1), ("t-baseline", 0), ("t-lucky", 2), ("t-baseline", 1), ("t-baseline", 2)]
    assert left_out == 0


def test_no_budget_keeps_the_best_single_run():
    confirmation = _confirm(budget=0.0)
    assert confirmation["planned"] == [] and confirmation["extra_epochs"] == 0
    assert confirmation["winner"] == "t-lucky"
    assert "Too few seeds" in confirmation["verdict"]
