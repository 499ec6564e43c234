"""Platform overhead: the same trial configs through `tuning.run` and directly through fracture_models.

`tuning.run` runs K trials one at a time (no early stopping, 2 CPUs per trial, Ray already
started: `ray.init` is timed on its own); then the same K configs are trained in this process
with fracture_models alone (2 threads), loading the cached splits and testing the winner once,
as the search does. The search's extra time = a fixed cost per job (MLflow parent run, Optuna
study, the end-of-search report, plots and model export) + a cost per trial (Ray scheduling,
handing data over, the per-epoch checkpoint and report that make trials resumable, MLflow
logging). Short trials at two K separate the two (slope and intercept); trials of about a
minute give the ratio users feel.

The data set is decoded and audited before any timing (a first job's audit is measured on its
own, `first_job_audit_s`), so every regime compares like with like. Each regime runs both sides
`--repeats` times, alternating (tuning.run, direct, tuning.run, ...), and compares medians: one
run of either side varies by more than the overhead being measured.

    python benchmarks/tuning_overhead.py --out benchmarks/results/tuning_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from fracture_models.audit import audit_dataset
from fracture_models.config import TrainConfig
from fracture_models.data import load_dataset
from fracture_models.engine import build_training, evaluate, fit, make_loaders
from fracture_models.loader import BatchLoader
from fracture_models.records import write_json
from fracture_models.synthetic import SyntheticSpec, ensure_generated
from tuning.run import get_args_parser, run_search

REGIMES = {  # name -> (trials, epochs, image size): seconds-long trials at two K, then trials of about a minute
    "short-2": (2, 1, 32),
    "short-8": (8, 1, 32),
    "minute": (3, 20, 64),
}
HYPERPARAMETERS = ("lr", "step_size", "gamma", "aug_strength")


def through_tuning(
    data_dir: Path, work: Path, name: str, trials: int, epochs: int, size: int, checkpoints: str = "all"
) -> tuple[float, list[dict]]:
    args = get_args_parser().parse_args(
        [
            "--mlflow-checkpoints",
            checkpoints,
            "--arch",
            "cnn",
            "--data-dir",
            str(data_dir),
            "--storage-path",
            str(work / "runs"),
            "--name",
            name,
            "--num-samples",
            str(trials),
            "--epochs",
            str(epochs),
            "--image-size",
            str(size),
            "--sampler",
            "random",
            "--scheduler",
            "none",
            "--max-concurrent",
            "1",
            "--cpus-per-trial",
            "2",
            "--cache-dir",
            str(work / "cache"),
            # Confirmation trains extra runs, measured on its own (benchmarks/README.md, "Confirmation"), not platform overhead.
            "--confirm-top",
            "0",
        ]
    )
    start = time.perf_counter()
    if run_search(args) != 0:
        raise SystemExit(f"{name} failed")
    elapsed = time.perf_counter() - start
    summary = json.loads((work / "runs" / name / "summary.json").read_text())
    return elapsed, [{k: row[k] for k in HYPERPARAMETERS} for row in summary["trials"]]


def directly(data_dir: Path, work: Path, configs: list[dict], epochs: int, size: int) -> float:
    start = time.perf_counter()
    dataset = load_dataset(data_dir, size, cache_dir=work / "cache")
    best = (-1.0, None)
    for hyperparameters in configs:
        state = build_training(TrainConfig(arch="cnn", epochs=epochs, image_size=size, **hyperparameters))
        train, val = make_loaders(state, dataset.train, dataset.val)
        history = fit(state, train, val)
        score = max(row["val_fracture_f1"] for row in history)
        if score > best[0]:
            best = (score, state)
    state = best[1]
    evaluate(state, BatchLoader(dataset.test, state.config.batch_size, device=state.device))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tuning_overhead.json"))
    parser.add_argument(
        "--mlflow-checkpoints", default="all", help="tuning.run's setting: every trial's model to MLflow, or fewer (default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side per regime, alternating (default: %(default)s)")
    args = parser.parse_args(argv)
    import ray

    work = Path(tempfile.mkdtemp(prefix="tuning-overhead-"))
    os.environ["FRACTURE_MLFLOW_DIR"] = str(work / "mlflow")  # tracking is part of the platform's cost
    data_dir = ensure_generated(work / "data", SyntheticSpec(train=600, val=200, test=200, image_size=128, seed=7))
    start = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    report = {"ray_init_s": round(time.perf_counter() - start, 2), "torch_threads": torch.get_num_threads(), "regimes": {}}
    start = time.perf_counter()
    audit_dataset(data_dir, cache_dir=work / "cache")  # a first job's audit, once per data set: not in any regime
    report["first_job_audit_s"] = round(time.perf_counter() - start, 2)
    report["repeats"] = args.repeats
    for name in args.regimes:
        trials, epochs, size = REGIMES[name]
        load_dataset(data_dir, size, cache_dir=work / "cache")  # decode once so both sides read the cache
        tuned, direct = [], []
        for repeat in range(args.repeats):
            tuned_s, configs = through_tuning(data_dir, work, f"{name}-{repeat}", trials, epochs, size, args.mlflow_checkpoints)
            tuned.append(tuned_s)
            direct.append(directly(data_dir, work, configs, epochs, size))
        tuned_s, direct_s = statistics.median(tuned), statistics.median(direct)
        report["regimes"][name] = {
            "trials": trials,
            "epochs": epochs,
            "image_size": size,
            "tuning_runs_s": [round(t, 2) for t in tuned],
            "direct_runs_s": [round(t, 2) for t in direct],
            "tuning_s": round(tuned_s, 2),
            "direct_s": round(direct_s, 2),
            "ratio": round(tuned_s / direct_s, 3),
            "overhead_per_trial_s": round((tuned_s - direct_s) / trials, 2),
            "direct_s_per_trial": round(direct_s / trials, 2),
        }
        print(json.dumps({name: report["regimes"][name]}), flush=True)
        write_json(args.out, report)
    ray.shutdown()
    regimes = report["regimes"]
    if {"short-2", "short-8"} <= set(regimes):
        extra = {k: regimes[k]["tuning_s"] - regimes[k]["direct_s"] for k in ("short-2", "short-8")}
        per_trial = (extra["short-8"] - extra["short-2"]) / 6
        report["per_trial_overhead_s"] = round(per_trial, 2)
        report["per_job_overhead_s"] = round(extra["short-2"] - 2 * per_trial, 2)
        if "minute" in regimes:
            minute = regimes["minute"]
            without_job = minute["tuning_s"] - report["per_job_overhead_s"]
            minute["ratio_without_per_job_cost"] = round(without_job / minute["direct_s"], 3)
            minute["overhead_per_trial_without_per_job_cost_s"] = round((without_job - minute["direct_s"]) / minute["trials"], 2)
        write_json(args.out, report)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
