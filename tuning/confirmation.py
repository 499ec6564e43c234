"""Selection above the noise: the search's top configurations and the baseline, retrained with
more training seeds; the winner is the best mean, and its gain over the baseline is paired by seed.

One run per configuration picks the luckiest draw: identical configurations differ by sd 0.013
in validation F1 (benchmarks/objective_noise.py), more than the gaps at the top of a search.
So after the search, each of the top `top` configurations (by their single run) and the
baseline is trained again with seeds `seed + 1 .. seed + extra_seeds` (the search trained every
trial with `seed`). Confirmation runs are full-length (no early stopping), never Optuna trials,
and capped at `budget` x the epochs the search trained: the runs are planned round by round
(each candidate's first extra seed, then the second ...), best single run first, baseline
second, so a cut leaves the comparisons that matter most.

The functions here are plain Python: `run_confirmation` takes the function that trains a plan
(Ray Tune in `tuning.run`, a stub in tests).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

CONFIRMATION_DIR = "confirmation"  # the Tune experiment of the confirmation runs, inside the job's folder
CONFIRMS = "confirms"  # config key of a confirmation run: the search trial whose configuration it repeats
DEFAULT_TOP = 3
DEFAULT_EXTRA_SEEDS = 2
DEFAULT_BUDGET = 0.25  # of the search's trained epochs


@dataclass(frozen=True)
class PlannedRun:
    """One confirmation run: a searched configuration trained with another seed."""

    confirms: str
    seed: int
    hyperparameters: Mapping[str, float]

    def config(self) -> dict:
        """The Tune config of the run: its hyperparameters, seed and the trial it confirms."""
        return {**self.hyperparameters, "seed": self.seed, CONFIRMS: self.confirms}


def candidates(rows: Sequence[Mapping], names: Sequence[str], baseline: Mapping, top: int) -> list[dict]:
    """The `top` best distinct configurations that ran the whole budget, by single run (rows come
    best first), then the baseline's trial when it is not among them."""
    from tuning.summary import is_baseline

    chosen, seen = [], set()
    for rank, row in enumerate(rows):
        key = tuple(round(float(row[n]), 12) for n in names)
        if row["status"] != "completed" or key in seen or is_baseline(row, baseline):
            continue
        seen.add(key)
        if len(chosen) < top:
            chosen.append({"row": row, "is_baseline": False, "rank": rank})
    ranked = [(rank, r) for rank, r in enumerate(rows) if is_baseline(r, baseline)]
    base = next(((k, r) for k, r in ranked if r["status"] != "failed"), ranked[0] if ranked else None)
    if base is not None:  # second in the plan: every comparison with the baseline needs its seeds
        chosen.insert(min(1, len(chosen)), {"row": base[1], "is_baseline": True, "rank": base[0]})
    return chosen


def max_runs(budget: float, epochs_trained: int, epochs: int) -> int:
    """How many full-length runs fit in `budget` x the search's trained epochs."""
    return max(0, math.floor(budget * epochs_trained / epochs + 1e-9))


def plan(picked: Sequence[dict], names: Sequence[str], seed: int, extra_seeds: int, limit: int) -> tuple[list[PlannedRun], int]:
    """The runs to train, round by round, and how many the budget left out.

    A candidate whose own run stopped early or failed (only the baseline can be one) is trained
    with the search's seed first, so that it is compared over the same seeds as the others.
    """
    wanted: list[PlannedRun] = []
    rounds = [[seed] if c["row"]["status"] != "completed" else [] for c in picked]
    for k in range(1, extra_seeds + 1):
        for seeds in rounds:
            seeds.append(seed + k)
    for step in range(max((len(s) for s in rounds), default=0)):
        for candidate, seeds in zip(picked, rounds):
            if step < len(seeds):
                row = candidate["row"]
                wanted.append(PlannedRun(row["trial_id"], seeds[step], {n: row[n] for n in names}))
    return wanted[:limit], max(0, len(wanted) - limit)


def paired_difference(winner: Mapping[int, float], baseline: Mapping[int, float]) -> dict | None:
    """Winner minus baseline over the seeds both have, with a 95% t interval; None under 2 pairs."""
    from scipy import stats

    seeds = sorted(set(winner) & set(baseline))
    if len(seeds) < 2:
        return None
    differences = [winner[s] - baseline[s] for s in seeds]
    mean = statistics.fmean(differences)
    sd = statistics.stdev(differences)
    half = float(stats.t.ppf(0.975, len(seeds) - 1)) * sd / math.sqrt(len(seeds))
    return {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "n": len(seeds), "seeds": seeds, "differences": differences}


def verdict(winner_is_baseline: bool, difference: dict | None, mode: str, metric: str) -> str:
    """The comparison with the baseline in words."""
    if winner_is_baseline:
        return "The baseline itself has the best mean: no searched configuration beat it."
    if difference is None:
        return "Too few seeds shared with the baseline (fewer than 2) to tell whether the winner beats it."
    low, high = difference["ci95"]
    gain = "higher" if mode == "max" else "lower"
    pairs = f"{difference['n']} paired seeds"
    if (mode == "max" and low > 0) or (mode == "min" and high < 0):
        return f"Beyond noise: the winner's {metric} is {gain} than the baseline's, 95% interval {low:+.4f} to {high:+.4f} over {pairs}."
    return (
        f"Within noise: the winner's {metric} differs from the baseline's by {difference['mean']:+.4f}, 95% interval "
        f"{low:+.4f} to {high:+.4f} over {pairs}, which includes 0; not shown to beat the baseline."
    )


def _runs_of(candidate: dict, confirmation_rows: Sequence[Mapping], seed: int) -> list[dict]:
    row = candidate["row"]
    runs = []
    if row["status"] == "completed":
        runs.append(
            {
                "seed": seed,
                "trial_id": row["trial_id"],
                "value": row["best_value"],
                "predicts_one_class": bool(row["predicts_one_class"]),
                "search_run": True,
            }
        )
    for extra in confirmation_rows:
        if extra.get(CONFIRMS) == row["trial_id"] and extra["status"] == "completed":
            runs.append(
                {
                    "seed": int(extra["seed"]),
                    "trial_id": extra["trial_id"],
                    "value": extra["best_value"],
                    "predicts_one_class": bool(extra["predicts_one_class"]),
                    "search_run": False,
                }
            )
    return sorted(runs, key=lambda r: r["seed"])


def summarise(
    picked: Sequence[dict], confirmation_rows: Sequence[Mapping], *, names: Sequence[str], seed: int, mode: str, metric: str
) -> dict:
    """Each candidate's runs, mean and sd; the winner (best mean; one whose model ever answered a
    single class ranks last); its paired difference from the baseline and the verdict."""
    configurations = []
    for candidate in picked:
        runs = _runs_of(candidate, confirmation_rows, seed)
        values = [r["value"] for r in runs]
        configurations.append(
            {
                "trial_id": candidate["row"]["trial_id"],
                "is_baseline": candidate["is_baseline"],
                "hyperparameters": {n: candidate["row"][n] for n in names},
                "single_run_value": candidate["row"]["best_value"],
                "runs": runs,
                "n": len(runs),
                "mean": statistics.fmean(values) if values else math.nan,
                "sd": statistics.stdev(values) if len(values) > 1 else math.nan,
                "any_one_class": any(r["predicts_one_class"] for r in runs),
                "_order": candidate["rank"],  # equal means: the better single run first, as the search ranks
            }
        )
    sign = -1 if mode == "max" else 1
    ranked = sorted(configurations, key=lambda c: (not c["n"], c["any_one_class"], sign * c["mean"] if c["n"] else 0, c["_order"]))
    for c in ranked:
        del c["_order"]
    winner = ranked[0] if ranked and ranked[0]["n"] else None
    base = next((c for c in ranked if c["is_baseline"]), None)
    difference = None
    if winner is not None and base is not None and winner is not base:
        values = lambda c: {r["seed"]: r["value"] for r in c["runs"]}  # noqa: E731
        difference = paired_difference(values(winner), values(base))
    tested = None
    if winner is not None:  # the winner's own search run, else its best run
        own = [r for r in winner["runs"] if r["search_run"]]
        tested = (own or sorted(winner["runs"], key=lambda r: sign * r["value"]))[0]["trial_id"]
    return {
        "metric": metric,
        "mode": mode,
        "seeds": sorted({r["seed"] for c in configurations for r in c["runs"]}),
        "configurations": ranked,
        "winner": winner["trial_id"] if winner else None,
        "tested_run": tested,
        "baseline": base["trial_id"] if base else None,
        "difference_vs_baseline": difference,
        "verdict": verdict(bool(winner and winner["is_baseline"]), difference, mode, metric)
        if winner
        else "No configuration completed a run.",
    }


def run_confirmation(
    rows: Sequence[Mapping],
    *,
    names: Sequence[str],
    baseline: Mapping,
    seed: int,
    mode: str,
    metric: str,
    epochs: int,
    epochs_trained: int,
    top: int = DEFAULT_TOP,
    extra_seeds: int = DEFAULT_EXTRA_SEEDS,
    budget: float = DEFAULT_BUDGET,
    train: Callable[[list[PlannedRun]], list[Mapping]],
) -> dict:
    """Plan, train (with `train`, which returns one trial row per run) and summarise."""
    picked = candidates(rows, names, baseline, top)
    runs, left_out = plan(picked, names, seed, extra_seeds, max_runs(budget, epochs_trained, epochs))
    trained = train(runs) if runs else []
    summary = summarise(picked, trained, names=names, seed=seed, mode=mode, metric=metric)
    extra_epochs = sum(int(r["epochs"]) for r in trained)
    return {
        **summary,
        "top": top,
        "extra_seeds": extra_seeds,
        "budget": budget,
        "planned": [asdict(r) for r in runs],
        "runs_left_out_by_budget": left_out,
        "extra_epochs": extra_epochs,
        "search_epochs": epochs_trained,
        "extra_fraction": extra_epochs / epochs_trained if epochs_trained else math.nan,
        "extra_hours": sum(float(r.get("seconds", 0.0)) for r in trained) / 3600,
    }


def format_confirmation(confirmation: Mapping) -> list[str]:
    """The confirmation as lines of the printed summary."""
    metric = confirmation["metric"]
    lines = [
        f"Confirmation: the top {sum(not c['is_baseline'] for c in confirmation['configurations'])} configurations and the baseline, "
        f"retrained with seeds "
        f"{', '.join(map(str, confirmation['seeds']))} ({len(confirmation['planned'])} extra run{'' if len(confirmation['planned']) == 1 else 's'}, "
        f"{confirmation['extra_epochs']} epochs = "
        f"{confirmation['extra_fraction']:.0%} of the search's {confirmation['search_epochs']}).",
    ]
    if confirmation["runs_left_out_by_budget"]:
        left = confirmation["runs_left_out_by_budget"]
        lines.append(f"  {left} planned run{'' if left == 1 else 's'} did not fit --confirm-budget {confirmation['budget']:g}.")
    lines.append(f"  {'trial':>12}  {'runs':>4}  {f'mean {metric}':>24}  {'sd':>7}  {'single run':>10}")
    for c in confirmation["configurations"]:
        notes = ["baseline"] * c["is_baseline"] + ["winner"] * (c["trial_id"] == confirmation["winner"])
        sd = f"{c['sd']:.4f}" if c["n"] > 1 else "-"
        lines.append(
            f"  {c['trial_id'][-12:]:>12}  {c['n']:>4}  {c['mean']:>24.4f}  {sd:>7}  {c['single_run_value']:>10.4f}  {', '.join(notes)}"
        )
    lines.append("  " + confirmation["verdict"])
    return lines
