"""Soak: a 50-trial CNN search at a tiny size, end to end, with nothing lost.

    python benchmarks/soak.py [--num-samples 50 --epochs 10 --image-size 32] [--work-dir DIR]

Runs `python -m tuning.run --synthetic` as a user would (ASHA + TPE, a local Ray, MLflow to a
local store), samples the memory of every process of the job (the driver and the Ray processes
it starts) once a second, then checks the records: every trial finished in Optuna, one MLflow
child run per trial, a summary. Prints and writes results/soak.json: trials per hour, epochs,
peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def session_rss(sid: int) -> int:
    """Resident bytes of every process in session `sid`."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: the session id
                total += int((stat.parent / "statm").read_text().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.mkdtemp(prefix="fracture-soak-")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()
    name = "soak"
    env = {**os.environ, "FRACTURE_MLFLOW_DIR": str(args.work_dir / "mlflow"), "FRACTURE_CACHE_DIR": str(args.work_dir / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        sys.executable,
        "-m",
        "tuning.run",
        "--synthetic",
        "--arch",
        "cnn",
        "--num-samples",
        str(args.num_samples),
        "--epochs",
        str(args.epochs),
        "--image-size",
        str(args.image_size),
        "--storage-path",
        str(args.work_dir / "tune"),
        "--name",
        name,
    ]
    log = args.work_dir / "search.log"
    start = time.monotonic()
    with log.open("w") as out:
        job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        peak = 0
        while job.poll() is None:
            peak = max(peak, session_rss(job.pid))
            time.sleep(1.0)
    wall = time.monotonic() - start
    if job.returncode != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        return job.returncode

    import optuna
    from mlflow import MlflowClient

    experiment = args.work_dir / "tune" / name
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{experiment / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    summary = json.loads((experiment / "summary.json").read_text())
    client = MlflowClient(f"sqlite:///{args.work_dir / 'mlflow' / 'mlflow.db'}")
    mlflow_experiment = client.get_experiment_by_name("fracture-cnn").experiment_id
    parent = client.search_runs([mlflow_experiment], f"tags.job_name = '{name}' and tags.role = 'search'")[0]
    children = client.search_runs([mlflow_experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000)
    checks = {
        "optuna_trials": len(states),
        "optuna_finished": sum(s in ("COMPLETE", "PRUNED") for s in states),
        "mlflow_child_runs": len(children),
        "mlflow_child_runs_finished": sum(c.info.status == "FINISHED" for c in children),
        "summary_trials": summary["num_trials"],
        "outbox_pending": sum(1 for line in (experiment / "mlflow_outbox.jsonl").read_text().splitlines() if line.strip())
        if (experiment / "mlflow_outbox.jsonl").is_file()
        else 0,
    }
    nothing_lost = (
        checks["optuna_trials"]
        == checks["optuna_finished"]
        == checks["mlflow_child_runs_finished"]
        == checks["summary_trials"]
        == args.num_samples
        and checks["outbox_pending"] == 0
    )
    result = {
        "machine": f"{os.cpu_count()} CPUs",
        "command": " ".join(command[1:]),
        "wall_s": round(wall, 1),
        "trials_per_hour": round(args.num_samples / (wall / 3600), 1),
        "epochs_trained": summary["epochs_trained"],
        "epochs_budget": summary["epochs_budget"],
        "trials_stopped_early": summary["trials_stopped_early"],
        "peak_memory_gib": round(peak / 2**30, 2),
        "checks": checks,
        "nothing_lost": nothing_lost,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if nothing_lost else 1


if __name__ == "__main__":
    sys.exit(main())
