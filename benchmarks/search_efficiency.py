"""Search efficiency: ASHA + TPE against random search without early stopping.

Both run through `tuning.run` (same data, trial count and epoch budget; the baseline is trial 1
in both), one after the other on one local Ray. Both train with the same seed, so a config
trains identically in either search (common random numbers: the two searches optimise the same
function and differ only in which configs they try and how long they train them); the random
sampler draws with seed + 100, so its draws don't repeat TPE's random start-up trials.
`--independent-training` trains the random search with seed + 100 too (the first sessions'
setup). Reported per seed:
- epochs trained in all;
- epochs consumed (all trials, in wall-clock order) until some trial first reaches the random
  search's best validation value, and the same for random search itself;
- how well each epoch's ranking of the random-search trials predicts their final ranking
  (Spearman), the measurement behind the choice of ASHA's grace period.

    # the default ASHA (AUC rungs at 3 and 6); the searches in --work-dir are reused by later runs
    python benchmarks/search_efficiency.py --seeds 0 1 2 --work-dir W --label asha-auc36 \
        --out benchmarks/results/search_efficiency_50_auc_rungs36.json
    # stock rungs, the old default, against the same random searches
    python benchmarks/search_efficiency.py --seeds 0 1 2 --work-dir W --label asha \
        --asha='--rung-metric val_fracture_f1 --rung-epochs 3 9' --out benchmarks/results/search_efficiency_50.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from fracture_models.metrics import selection_score
from fracture_models.records import write_json
from fracture_models.synthetic import SyntheticSpec, ensure_generated
from tuning.run import METRICS, get_args_parser, run_search


def task_spec(train: int, val: int, difficulty: float) -> SyntheticSpec:
    """The benchmark's generated data (objective_noise.py trains on the same)."""
    return SyntheticSpec(train=train, val=val, test=200, image_size=128, seed=100, difficulty=difficulty)


def trial_histories(experiment: Path) -> pd.DataFrame:
    """Every reported epoch of every trial: trial, epoch, time, metrics."""
    frames = []
    for result in sorted(experiment.glob("trial_*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        frames.append(pd.DataFrame(rows).assign(trial=result.parent.name))
    history = pd.concat(frames, ignore_index=True)
    # Ray's `timestamp` has 1 s resolution; its start time plus time_total_s orders epochs finely.
    history["finished_at"] = history["timestamp"] - history["time_since_restore"] + history["time_total_s"]
    return history.sort_values("finished_at", kind="stable").reset_index(drop=True)


def selectable(history: pd.DataFrame, metric: str, mode: str) -> pd.Series:
    """The value selection would see: the metric, demoted where the model answered one class."""
    return history.apply(lambda row: selection_score(row, metric, mode, prefix="val_"), axis=1)


def epochs_to_reach(history: pd.DataFrame, score: pd.Series, target: float, mode: str) -> int | None:
    """Epochs consumed (all trials, in order of finishing) until one first scores `target` or better."""
    reached = score >= target - 1e-12 if mode == "max" else score <= target + 1e-12
    hits = reached[reached].index
    return int(hits[0]) + 1 if len(hits) else None


def rank_correlations(history: pd.DataFrame, score: pd.Series, epochs: int, final: pd.Series | None = None) -> dict[int, float]:
    """Spearman correlation between trials' `score` at epoch k and their best `final` (default: `score`) over all epochs."""
    frame = history.assign(score=score, final=score if final is None else final)
    table = frame.pivot_table(index="trial", columns="training_iteration", values="score")
    best = frame.groupby("trial")["final"].max()
    out = {}
    for k in range(1, epochs):
        if k in table:
            out[k] = float(table[k].rank().corr(best.loc[table.index].rank()))
    return out


def run_one(data_dir: Path, storage: Path, name: str, seed: int, common: list[str], extra: list[str]) -> tuple[dict, float]:
    args = get_args_parser().parse_args(
        ["--data-dir", str(data_dir), "--storage-path", str(storage), "--name", name, "--seed", str(seed), *common, *extra]
    )
    start = time.perf_counter()
    code = run_search(args)
    if code != 0:
        raise SystemExit(f"{name} ended with {code}")
    return json.loads((storage / name / "summary.json").read_text()), time.perf_counter() - start


def run_or_reuse(
    data_dir: Path, storage: Path, name: str, seed: int, common: list[str], extra: list[str], wall_s: float
) -> tuple[dict, float]:
    done = storage / name / "summary.json"
    return (json.loads(done.read_text()), wall_s) if done.exists() else run_one(data_dir, storage, name, seed, common, extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-samples", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train", type=int, default=1200, help="generated training images (default: %(default)s)")
    parser.add_argument("--val", type=int, default=1000, help="generated validation images (default: %(default)s)")
    parser.add_argument("--independent-training", action="store_true", help="train the random search with its own seed (seed + 100)")
    parser.add_argument("--difficulty", type=float, default=1.0, help="generated task difficulty (default: %(default)s)")
    parser.add_argument("--metric", default="val_fracture_f1", choices=sorted(METRICS))
    parser.add_argument(
        "--asha",
        type=shlex.split,
        default=[],
        help="extra tuning.run flags for the ASHA + TPE side, quoted: --asha='--rung-metric val_roc_auc'",
    )
    parser.add_argument("--label", default="asha", help="name of the ASHA + TPE runs (runs already in --work-dir are reused)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_efficiency.json"))
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    mode = METRICS[args.metric]

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="search-efficiency-"))
    os.environ["FRACTURE_MLFLOW_DIR"] = str(work / "mlflow")
    spec = task_spec(args.train, args.val, args.difficulty)
    data_dir = ensure_generated(work / "data", spec)
    common = [
        "--arch",
        "cnn",
        "--num-samples",
        str(args.num_samples),
        "--epochs",
        str(args.epochs),
        "--image-size",
        str(args.image_size),
        "--metric",
        args.metric,
        "--cpus-per-trial",
        "1",
        "--cache-dir",
        str(work / "cache"),
    ]
    report = {"settings": {**vars(args), "out": str(args.out), "work_dir": str(work), "data": spec.__dict__}, "seeds": []}
    # Searches already in --work-dir are reused (their wall time from a previous --out, if any).
    previous = {r["seed"]: r for r in json.loads(args.out.read_text())["seeds"]} if args.out.exists() else {}
    for seed in args.seeds:
        training_seed = seed + 100 if args.independent_training else seed
        random_summary, random_s = run_or_reuse(
            data_dir,
            work / "runs",
            f"random-{seed}",
            training_seed,
            common,
            ["--sampler", "random", "--sampler-seed", str(seed + 100), "--scheduler", "none"],
            previous.get(seed, {}).get("random", {}).get("wall_s") or math.nan,
        )
        asha_summary, asha_s = run_or_reuse(
            data_dir,
            work / "runs",
            f"{args.label}-{seed}",
            seed,
            common,
            args.asha,
            previous.get(seed, {}).get("asha_tpe", {}).get("wall_s") or math.nan,
        )
        random_history = trial_histories(work / "runs" / f"random-{seed}")
        asha_history = trial_histories(work / "runs" / f"{args.label}-{seed}")
        random_score, asha_score = selectable(random_history, args.metric, mode), selectable(asha_history, args.metric, mode)
        target = float(random_score.max() if mode == "max" else random_score.min())

        def within(history: pd.DataFrame, score: pd.Series) -> dict[str, int | None]:
            """Not the target, a reading of it: epochs until a value just short of random search's best."""
            return {
                str(tol): epochs_to_reach(history, score, target - tol if mode == "max" else target + tol, mode)
                for tol in (0.005, 0.01, 0.02)
            }

        row = {
            "seed": seed,
            "random": {
                "epochs": int(len(random_history)),
                "best": target,
                "wall_s": round(random_s, 1),
                "epochs_to_best": epochs_to_reach(random_history, random_score, target, mode),
                "epochs_to_within": within(random_history, random_score),
                "best_is_baseline": random_summary["best_trial"]["trial_id"] == (random_summary["baseline_trial"] or {}).get("trial_id"),
                "test_fracture_f1": random_summary["test"]["fracture_f1"],
            },
            "asha_tpe": {
                "epochs": int(len(asha_history)),
                "wall_s": round(asha_s, 1),
                "best": float(asha_score.max() if mode == "max" else asha_score.min()),
                "epochs_to_random_best": epochs_to_reach(asha_history, asha_score, target, mode),
                # Not the target, a reading of it: the same count for a value just under random's best.
                "epochs_to_within": within(asha_history, asha_score),
                "trials_stopped_early": asha_summary["trials_stopped_early"],
                "test_fracture_f1": asha_summary["test"]["fracture_f1"],
            },
            # Equal under common random numbers: the same config, trained the same way in both searches.
            "baseline_final": (random_summary["baseline_trial"] or {}).get("best_value"),
            "baseline_final_asha_tpe": (asha_summary["baseline_trial"] or {}).get("best_value"),
            "rank_correlation_by_epoch": rank_correlations(random_history, random_score, args.epochs),
            # Would a smoother signal rank early epochs better? Rank at epoch k by it, final rank by the metric.
            "rank_correlation_by_epoch_roc_auc": rank_correlations(
                random_history, random_history["val_roc_auc"], args.epochs, final=random_score
            ),
            "rank_correlation_by_epoch_neg_val_loss": rank_correlations(
                random_history, -random_history["val_loss"], args.epochs, final=random_score
            ),
        }
        reached = row["asha_tpe"]["epochs_to_random_best"]
        row["fraction_of_random_epochs_to_reach"] = None if reached is None else reached / row["random"]["epochs"]
        report["seeds"].append(row)
        print(json.dumps(row, indent=1), flush=True)
        write_json(args.out, report)
    ray.shutdown()

    lines = [
        "| seed | random: epochs / best | ASHA+TPE: epochs / best | ASHA+TPE epochs to random's best | fraction | to within 0.01 |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["seeds"]:
        fraction = r["fraction_of_random_epochs_to_reach"]
        lines.append(
            f"| {r['seed']} | {r['random']['epochs']} / {r['random']['best']:.4f} | {r['asha_tpe']['epochs']} / {r['asha_tpe']['best']:.4f} "
            f"| {r['asha_tpe']['epochs_to_random_best'] or 'not reached'} | {'-' if fraction is None else f'{fraction:.2f}'} "
            f"| {r['asha_tpe']['epochs_to_within']['0.01'] or 'not reached'} |"
        )
    for key, label in [
        ("rank_correlation_by_epoch", args.metric),
        ("rank_correlation_by_epoch_roc_auc", "val_roc_auc"),
        ("rank_correlation_by_epoch_neg_val_loss", "val_loss"),
    ]:
        correlations = pd.DataFrame([r[key] for r in report["seeds"]])
        lines.append(
            f"Spearman(rank by {label} at epoch k, rank by best {args.metric}), random-search trials, mean over seeds: "
            + ", ".join(f"k={k}: {v:.2f}" for k, v in correlations.mean().items() if not math.isnan(v))
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
