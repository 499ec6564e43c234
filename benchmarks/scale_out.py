"""Scale-out: trials per hour at 1, 2 and 4 Ray nodes, and the driver's cost per 100 trials.

    python benchmarks/scale_out.py [--nodes 1 2 4] [--driver-trials 50 500] [--out benchmarks/results/scale_out.json]

Only the platform is measured: every trial's epochs are fixed sleeps, so trials/hour can grow
only as far as the platform lets it. Each measurement runs in a process of its own, which
starts a `ray.cluster_utils.Cluster` on loopback (logical CPUs, one Ray node per raylet), and
drives the real search stage of `tuning.run` (its Optuna searcher, Tuner settings, MLflow
callback to a SQLite store, checkpoints, progress table) with the sleeping trainable in place
of the CNN; the job's data audit, test and export are outside the timings.

- trials/hour at N nodes of `--cpus-per-node` slots: steady state, the trials completed after
  the first wave over the time they took (start-up and the last wave's tail are a cost per job,
  shown apart as the whole-run figure). Target: >= 0.9 x N x the 1-node figure.
- the driver: CPU seconds (user + system, all its threads) and resident memory of the process
  running the search, per 100 trials, at --driver-trials (one node holding --driver-slots
  trials of short sleeps). Target: flat from 50 to 500 trials.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

from ray import tune

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def sleeping_trial(hyperparameters: dict, *, epochs: int, epoch_s: float, metric: str, names: dict) -> None:
    """A trial as the platform sees one: an epoch's metrics, a checkpoint of two files, its devices
    in the first report; the training is a sleep. `names` are `tuning.trainable`'s file and score
    names, passed in so the trial's process does not import torch."""
    from tuning.placement import devices

    placement = devices()
    for epoch in range(1, epochs + 1):
        time.sleep(epoch_s)
        score = 0.5 + 0.4 * (1 - 1 / (epoch + hyperparameters["lr"] * 1000))
        row = {
            "train_loss": 1 / epoch,
            "val_loss": 1.2 / epoch,
            metric: score,
            names["score"]: score,
            "learning_rate": hyperparameters["lr"],
            "val_fractures_detected": 10,
            "val_fractures_missed": 4,
            "val_false_alarms": 3,
            "val_true_negatives": 11,
            **placement,
        }
        placement = {}
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / names["checkpoint"]).write_bytes(b"w" * 4096)
            (Path(folder) / names["optimizer"]).write_bytes(b"o" * 8192)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))


class Completions(tune.Callback):
    """When each trial completed (monotonic seconds), recorded on the driver."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.times.append(time.monotonic())


class PeakRss:
    """Samples this process's resident memory every 50 ms in a thread."""

    def __init__(self) -> None:
        self.peak = self.start = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.now())

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        end = self.now()
        return {"start_mb": self.start / 2**20, "peak_mb": max(self.peak, end) / 2**20, "end_mb": end / 2**20}


def one_run(spec: dict) -> dict:
    """In a fresh process: a cluster of spec["nodes"] nodes, the platform's search stage over the sleeping trainable."""
    import ray
    from ray.cluster_utils import Cluster

    from fracture_models.cli import configure_logging
    from fracture_models.synthetic import SyntheticSpec, ensure_generated
    from tuning.run import claim_name, get_args_parser, load, open_job, prepare, search
    from tuning.trainable import CHECKPOINT_FILE, CHECKPOINT_SCORE, OPTIMIZER_FILE

    configure_logging()
    work = Path(spec["work"])
    data = ensure_generated(work / "data", SyntheticSpec(train=24, val=8, test=8, image_size=32, seed=1))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": spec["cpus_per_node"]})
    for _ in range(spec["nodes"] - 1):
        cluster.add_node(num_cpus=spec["cpus_per_node"])
    cluster.wait_for_nodes()
    argv = ["--arch", "cnn", "--data-dir", str(data), "--image-size", "32", "--storage-path", str(work / "runs"), "--name", spec["name"]]
    argv += ["--num-samples", str(spec["trials"]), "--epochs", str(spec["epochs"]), "--scheduler", "none", "--cpus-per-trial", "1"]
    argv += [
        "--tracking-uri",
        f"sqlite:///{work / 'mlflow' / 'mlflow.db'}",
        "--address",
        cluster.address,
        "--cache-dir",
        str(work / "cache"),
    ]
    try:
        args, experiment, record, resources = prepare(get_args_parser().parse_args(argv), None)
        with claim_name(args, experiment) as claim:
            job = open_job(args, experiment, record, resources, claim, *load(args, record))
            names = {"checkpoint": CHECKPOINT_FILE, "optimizer": OPTIMIZER_FILE, "score": CHECKPOINT_SCORE}
            trainable = tune.with_resources(
                tune.with_parameters(sleeping_trial, epochs=spec["epochs"], epoch_s=spec["epoch_s"], metric=job.spec.metric, names=names),
                {"cpu": 1, "gpu": 0},
            )
            completions = Completions()
            memory = PeakRss()
            cpu_before, start = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            search(job, trainable, resume=False, callbacks=[completions])
            cpu_after, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - start
            rss = memory.stop()
    finally:
        ray.shutdown()
        cluster.shutdown()
    cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        **{k: spec[k] for k in ("nodes", "cpus_per_node", "trials", "epochs", "epoch_s")},
        "wall_s": wall,
        "completed_at_s": [t - start for t in sorted(completions.times)],
        "driver_cpu_s": cpu_s,
        "driver_rss": rss,
    }


def run_in_process(spec: dict) -> dict:
    """`one_run` in a child process: its own Ray, its own driver figures. Ray stays on loopback."""
    with tempfile.TemporaryDirectory(prefix="fracture-scale-") as work:
        spec = {**spec, "work": work}
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(ROOT)}
        code = "import json, sys; from benchmarks.scale_out import one_run; print('RESULT ' + json.dumps(one_run(json.loads(sys.argv[1]))))"
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise SystemExit(f"{spec['name']} failed:\n{done.stderr[-4000:]}")
        return json.loads(lines[-1].removeprefix("RESULT "))


def steady_trials_per_hour(run: dict, slots: int) -> float:
    """Trials completed after the first wave, over the time they took."""
    times = run["completed_at_s"]
    if len(times) <= slots:
        return len(times) / run["wall_s"] * 3600
    return (len(times) - slots) / (times[-1] - times[slots - 1]) * 3600


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()}-core {platform.machine()} CPU, {memory:.0f} GiB, no GPU (logical CPUs per Ray node)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4], help="node counts (default: %(default)s)")
    parser.add_argument("--cpus-per-node", type=int, default=2, help="logical CPUs, so trial slots, per node (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default: %(default)s)")
    parser.add_argument("--epoch-s", type=float, default=10.0, help="sleep per epoch in the scaling runs (default: %(default)s)")
    parser.add_argument("--waves", type=int, default=2, help="trials per slot in the scaling runs (default: %(default)s)")
    parser.add_argument("--driver-trials", type=int, nargs="+", default=[50, 500], help="trials of the driver runs (default: %(default)s)")
    parser.add_argument("--driver-slots", type=int, default=8, help="trial slots of the driver runs' node (default: %(default)s)")
    parser.add_argument("--driver-epoch-s", type=float, default=0.2, help="sleep per epoch in the driver runs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale_out.json")
    args = parser.parse_args()

    scaling = {}
    for nodes in args.nodes:
        slots = nodes * args.cpus_per_node
        spec = dict(name=f"scale-{nodes}", nodes=nodes, cpus_per_node=args.cpus_per_node, trials=slots * args.waves)
        run = run_in_process({**spec, "epochs": args.epochs, "epoch_s": args.epoch_s})
        run["trials_per_hour"] = steady_trials_per_hour(run, slots)
        run["trials_per_hour_whole_run"] = run["trials"] / run["wall_s"] * 3600
        scaling[nodes] = run
        print(
            f"{nodes} node(s), {slots} slots: {run['trials_per_hour']:.0f} trials/hour ({run['trials_per_hour_whole_run']:.0f} whole run)"
        )
    base = scaling[min(scaling)]["trials_per_hour"] / min(scaling)
    driver = {}
    for trials in args.driver_trials:
        spec = dict(name=f"driver-{trials}", nodes=1, cpus_per_node=args.driver_slots, trials=trials)
        run = run_in_process({**spec, "epochs": args.epochs, "epoch_s": args.driver_epoch_s})
        run["cpu_s_per_100_trials"] = run["driver_cpu_s"] / trials * 100
        run["rss_growth_mb_per_100_trials"] = (run["driver_rss"]["peak_mb"] - run["driver_rss"]["start_mb"]) / trials * 100
        run.pop("completed_at_s")
        driver[trials] = run
        print(
            f"driver, {trials} trials: {run['cpu_s_per_100_trials']:.1f} CPU s and "
            f"{run['rss_growth_mb_per_100_trials']:.1f} MB per 100 trials (peak {run['driver_rss']['peak_mb']:.0f} MB)"
        )
    result = {
        "machine": machine(),
        "date": date.today().isoformat(),
        "trials_per_hour": {str(n): r["trials_per_hour"] for n, r in scaling.items()},
        "trials_per_hour_whole_run": {str(n): r["trials_per_hour_whole_run"] for n, r in scaling.items()},
        "scaling_vs_ideal": {str(n): r["trials_per_hour"] / (n * base) for n, r in scaling.items()},
        "driver_per_100_trials": {
            str(t): {
                "cpu_s": r["cpu_s_per_100_trials"],
                "rss_growth_mb": r["rss_growth_mb_per_100_trials"],
                "rss_peak_mb": r["driver_rss"]["peak_mb"],
            }
            for t, r in driver.items()
        },
        "settings": vars(args) | {"out": str(args.out)},
        "scaling_runs": scaling,
        "driver_runs": driver,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
