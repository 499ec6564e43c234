"""Placement over several GPUs, with logical GPUs on this CPU: a Ray node that offers 4 GPUs.

Ray hands out logical GPUs exactly as it hands out real ones (ids, `CUDA_VISIBLE_DEVICES`), so
this tests the platform's part of placement on any machine: what each trial asks for, what it
is given, and what its MLflow run says about where it ran. The searches run the real search
stage of `tuning.run` (the CNN trainable, Optuna, the MLflow callback) in a subprocess joined to
the cluster, since this test process may hold the session's own Ray; testing and exporting the
winner are left out, as they are not about placement.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray import tune

from tests.conftest import search_args
from tuning.placement import CUDA_VISIBLE_DEVICES, GPU_IDS, HOSTNAME, NODE_IP, OMP_NUM_THREADS, placement_of


class MostRunning(tune.Callback):
    """Writes to `path`, when the search ends, the most trials Tune had running at one time."""

    def __init__(self, path: str) -> None:
        self.path, self.most = path, 0

    def on_step_end(self, iteration, trials, **info):
        self.most = max(self.most, sum(trial.status == "RUNNING" for trial in trials))

    def on_experiment_end(self, trials, **info):
        Path(self.path).write_text(json.dumps(self.most))


def search_stage(argv: list[str], most_running_file: str) -> None:
    """The stages of `tuning.run.run_search` up to and including the search, for one job."""
    from tuning.run import claim_name, get_args_parser, load, make_trainable, open_job, prepare, search

    args, experiment, record, resources = prepare(get_args_parser().parse_args(argv), None)
    with claim_name(args, experiment) as claim:
        dataset, audit, audit_summary, dropped = load(args, record)
        job = open_job(args, experiment, record, resources, claim, dataset, audit, audit_summary, dropped)
        search(job, make_trainable(job), resume=False, callbacks=[MostRunning(most_running_file)])
        assert job.tracker.flush(force=True)


def searches_on_a_four_gpu_node(jobs: list[tuple[list[str], str]]) -> None:
    """Start a one-node Ray cluster with 4 CPUs and 4 logical GPUs and run `search_stage` for each job on it."""
    import ray
    from ray.cluster_utils import Cluster

    from fracture_models.cli import configure_logging

    configure_logging()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 4})
    try:
        for argv, most_running_file in jobs:
            search_stage([*argv, "--address", cluster.address], most_running_file)
    finally:
        ray.shutdown()
        cluster.shutdown()


# Its own process: this one may hold the session's Ray, and Ray reads at import whether to stay on loopback.
_RUN = "import json, sys; from tests.test_placement import searches_on_a_four_gpu_node as run; run(json.loads(sys.argv[1]))"


@pytest.fixture(scope="module")
def placed_searches(tiny_download: Path, tmp_path_factory):
    """Two 4-trial searches on a node with 4 logical GPUs, one GPU per trial, then half a GPU:
    their trial runs' tags, and how many trials ran at once."""
    work = tmp_path_factory.mktemp("placement")
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    jobs = {"one-gpu": "1", "half-gpu": "0.5"}
    argv = [
        (
            search_args(tiny_download, work, name, "--num-samples", "4", "--epochs", "1", "--scheduler", "none", "--sampler", "random")
            + ["--gpus-per-trial", gpus, "--tracking-uri", tracking],
            str(work / f"{name}.most-running"),
        )
        for name, gpus in jobs.items()
    ]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # the node on 127.0.0.1, not the host's address
    done = subprocess.run([sys.executable, "-c", _RUN, json.dumps(argv)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("fracture-cnn").experiment_id
    out = {}
    for name in jobs:
        runs = client.search_runs([experiment], f"tags.job_name = '{name}' and tags.role = 'trial'")
        out[name] = {
            "tags": [run.data.tags for run in runs],
            "most_running": json.loads((work / f"{name}.most-running").read_text()),
        }
    return out


def test_one_gpu_per_trial_runs_four_trials_at_once_each_on_its_own_device(placed_searches):
    job = placed_searches["one-gpu"]
    assert job["most_running"] == 4
    tags = job["tags"]
    assert len(tags) == 4
    assert sorted(t[GPU_IDS] for t in tags) == ["0", "1", "2", "3"]  # one id each, none shared
    assert all(t[CUDA_VISIBLE_DEVICES] == t[GPU_IDS] for t in tags)  # the trial's process sees only its own device


def test_half_a_gpu_per_trial_puts_two_trials_on_each_device(placed_searches):
    job = placed_searches["half-gpu"]
    assert job["most_running"] == 4
    tags = job["tags"]
    assert len(tags) == 4
    # Ray packs fractions onto the fullest device that fits: two devices, two trials on each.
    assert sorted(Counter(t[GPU_IDS] for t in tags).values()) == [2, 2]
    assert all(t[CUDA_VISIBLE_DEVICES] == t[GPU_IDS] and "," not in t[GPU_IDS] for t in tags)


def test_each_trial_run_records_its_node(placed_searches):
    for job in placed_searches.values():
        for tags in job["tags"]:
            assert tags[NODE_IP] == "127.0.0.1"  # the node's address on the cluster
            assert tags[HOSTNAME] == socket.gethostname()
            assert tags[OMP_NUM_THREADS] == "1"  # torch's threads: one per CPU of the trial (1 in search_args)


def test_only_a_result_with_devices_carries_a_placement():
    first = {GPU_IDS: "", CUDA_VISIBLE_DEVICES: "", OMP_NUM_THREADS: "2", NODE_IP: "10.0.0.7", HOSTNAME: "gpu-3", "val_loss": 0.5}
    assert placement_of(first) == {NODE_IP: "10.0.0.7", HOSTNAME: "gpu-3", GPU_IDS: "", CUDA_VISIBLE_DEVICES: "", OMP_NUM_THREADS: "2"}
    assert placement_of({NODE_IP: "10.0.0.7", HOSTNAME: "gpu-3", "val_loss": 0.4}) is None  # later epochs: no new tags
