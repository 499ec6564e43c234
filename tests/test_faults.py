"""Faults on a real multi-node Ray cluster (`ray.cluster_utils.Cluster`, every node on this
machine): a worker node lost mid-search, the driver killed with SIGKILL. The searches run as
`python -m tuning.run --address ...` processes, as a user would start them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import optuna
import pytest

from fracture_models.synthetic import SyntheticSpec, generate
from tests.conftest import trial_results
from tuning.searcher import LOST_WITH_DRIVER, RAY_TRIAL_ID, REQUEUED_FROM

TRIALS, EPOCHS = 4, 4


@pytest.fixture(scope="module")
def fault_download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough images that an epoch takes a second or two on one CPU: time to act mid-search."""
    out = tmp_path_factory.mktemp("faults")
    generate(out, SyntheticSpec(train=320, val=64, test=32, image_size=64, seed=4))
    return out


@pytest.fixture
def cluster(monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep the nodes on loopback
    made = []

    def start(head_cpus: int, workers: int) -> Cluster:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "num_gpus": 0})
        for _ in range(workers):
            c.add_node(num_cpus=1, num_gpus=0)
        c.wait_for_nodes()
        made.append(c)
        return c

    yield start
    for c in made:
        c.shutdown()


def _search(data: Path, storage: Path, name: str, address: str, log: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "tuning.run",
        "--arch",
        "cnn",
        "--data-dir",
        str(data),
        "--image-size",
        "48",
        "--batch-size",
        "16",
        "--storage-path",
        str(storage),
        "--name",
        name,
        "--num-samples",
        str(TRIALS),
        "--epochs",
        str(EPOCHS),
        "--scheduler",
        "none",
        "--cpus-per-trial",
        "1",
        "--address",
        address,
        *extra,
    ]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait(condition: Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the search ended early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def _study(storage: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{storage / name / 'optuna.db'}")


def _finished(storage: Path, name: str) -> int:
    try:
        return sum(t.state.is_finished() for t in _study(storage, name).trials)
    except Exception:  # noqa: BLE001 - the study is not created yet
        return 0


def _node_of(cluster, pid: int):
    """The cluster node whose raylet started process `pid` (walking up its parents)."""
    from ray._private import ray_constants

    raylets = {node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid: node for node in cluster.worker_nodes}
    while pid > 1:
        if pid in raylets:
            return raylets[pid]
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return None
    return None


def _assert_every_trial_once(storage: Path, name: str) -> dict:
    """TRIALS complete trials in Optuna, one finished MLflow child run each, every epoch logged
    once. A trial that started after Tune's last snapshot of a killed driver is FAIL in Optuna
    (marked lost), KILLED in MLflow, and its configuration ran again as a complete trial."""
    trials = _study(storage, name).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    lost = [t for t in trials if t not in complete]
    assert len(complete) == TRIALS
    assert all(t.state == optuna.trial.TrialState.FAIL and t.user_attrs[LOST_WITH_DRIVER] for t in lost)
    ran_again = {}
    for t in lost:
        again = [c for c in complete if c.user_attrs.get(REQUEUED_FROM) == t.number]
        ran_again[t.number] = again[0].number if again else None
        # Killed inside Optuna's ask, its configuration is whole only where it was queued with one.
        whole = t.params if set(t.params) == set(complete[0].params) else t.system_attrs.get("fixed_params")
        if whole:
            assert len(again) == 1 and again[0].params == whole
        else:  # drawn, not whole: nothing to run again, and no Tune trial
            assert again == [] and RAY_TRIAL_ID not in t.user_attrs
    ray_ids = sorted(t.user_attrs[RAY_TRIAL_ID] for t in complete)
    assert len(set(ray_ids)) == TRIALS
    summary = json.loads((storage / name / "summary.json").read_text())
    assert sorted(r["trial_id"] for r in summary["trials"]) == ray_ids
    assert all(r["epochs"] == EPOCHS for r in summary["trials"])
    assert {x["optuna_number"]: x["ran_again_as"] for x in summary["trials_lost_with_driver"]} == ran_again

    from mlflow import MlflowClient

    from tuning.tracking.store import backend_uri, store_dir

    client = MlflowClient(backend_uri(store_dir()))
    experiment = client.get_experiment_by_name("fracture-cnn").experiment_id
    parents = client.search_runs([experiment], f"tags.job_name = '{name}' and tags.role = 'search'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}' and tags.role = 'trial'")
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(c.data.tags["ray_trial_id"] for c in finished) == ray_ids
    others = [c for c in children if c not in finished]
    # A trial killed between Optuna's ask and its Ray id's write has no id, and no run either.
    assert {c.data.tags["ray_trial_id"] for c in others} <= {t.user_attrs.get(RAY_TRIAL_ID) for t in lost}
    assert all(c.info.status == "KILLED" for c in others)
    for child in finished:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (child.data.tags["ray_trial_id"], steps)
    return summary


def test_a_lost_worker_node_costs_no_trial(cluster, fault_download: Path, tmp_path: Path):
    c = cluster(head_cpus=0, workers=2)  # the head only coordinates; one trial per worker
    log = tmp_path / "search.log"
    search = _search(fault_download, tmp_path, "lost-node", c.address, log)
    doomed = []

    def node_of_a_trial_mid_way() -> bool:
        """The worker node running a trial that has checkpointed and has two epochs to go."""
        for trial_dir in tmp_path.glob("lost-node/trial_*"):
            rows = trial_results(trial_dir)
            if rows and 1 <= rows[-1]["training_iteration"] <= EPOCHS - 2:
                node = _node_of(c, rows[-1]["pid"])
                if node is not None:
                    doomed.append(node)
                    return True
        return False

    try:
        _wait(node_of_a_trial_mid_way, search, log)
        c.remove_node(doomed[0], allow_graceful=False)
        assert search.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
    summary = _assert_every_trial_once(tmp_path, "lost-node")
    # The trial on the lost node failed mid-way and continued from its checkpoint on the other
    # node: epochs from before the failure, then the rest, none reported twice.
    failed = [Path(row["path"]) for row in summary["trials"] if (Path(row["path"]) / "error.txt").is_file()]
    assert failed, "the lost node ran no trial"
    for trial_dir in failed:
        rows = trial_results(trial_dir)
        failed_at = (trial_dir / "error.txt").stat().st_mtime
        assert [r["training_iteration"] for r in rows if r["timestamp"] <= failed_at], "it failed before its first checkpoint"
        assert [r["training_iteration"] for r in rows] == list(range(1, EPOCHS + 1))


def test_a_killed_driver_resumes_to_n_trials(cluster, fault_download: Path, tmp_path: Path):
    c = cluster(head_cpus=2, workers=0)
    log = tmp_path / "search.log"
    search = _search(fault_download, tmp_path, "killed", c.address, log, "--max-concurrent", "1")
    try:
        _wait(lambda: _finished(tmp_path, "killed") >= 2, search, log)
    finally:
        os.killpg(search.pid, signal.SIGKILL)  # no handler runs, no state is saved on the way out
    search.wait(timeout=30)
    assert not (tmp_path / "killed" / "summary.json").exists()
    finished_before = {t.number: t.datetime_complete for t in _study(tmp_path, "killed").trials if t.state.is_finished()}

    resume_log = tmp_path / "resume.log"
    resumed = _search(fault_download, tmp_path, "killed", c.address, resume_log, "--max-concurrent", "1", "--resume")
    assert resumed.wait(timeout=400) == 0, resume_log.read_text()[-3000:]
    lost = _assert_every_trial_once(tmp_path, "killed")["trials_lost_with_driver"]
    printed = resume_log.read_text()
    assert ("each ran again from the start" in printed) == any(t["ran_again_as"] is not None for t in lost)
    assert ("fresh trials were drawn in their place" in printed) == any(t["ran_again_as"] is None for t in lost)
    after = {t.number: t.datetime_complete for t in _study(tmp_path, "killed").trials}
    assert all(after[n] == done for n, done in finished_before.items())  # finished trials were not run again


def test_a_trial_started_after_the_last_snapshot_is_failed_and_its_config_queued_again(tmp_path: Path):
    """The searcher side of a killed driver, deterministically: Optuna holds a RUNNING trial
    that the restored searcher state never saw."""
    from tuning.search_space import search_space
    from tuning.searcher import StudyAwareOptunaSearch, make_searcher, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")

    first = make_searcher(
        search_space("cnn"), metric="val_fracture_f1", mode="max", study_name="s", storage=storage, seed=0, num_samples=4, max_epochs=2
    )
    first.suggest("a")
    first.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot
    lost_config = first.suggest("b")  # started, then the driver died

    restored = StudyAwareOptunaSearch.__new__(StudyAwareOptunaSearch)  # as Tune unpickles it, no __init__
    restored.restore(str(tmp_path / "searcher.pkl"))
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert trials[1].state == optuna.trial.TrialState.FAIL and trials[1].user_attrs[LOST_WITH_DRIVER]
    assert trials[0].state == optuna.trial.TrialState.RUNNING  # known to the snapshot: Tune resumes it
    assert restored.suggest("c") == lost_config  # the lost configuration runs again
    assert optuna.load_study(study_name="s", storage=storage).trials[2].user_attrs[REQUEUED_FROM] == 1


def test_a_trial_killed_inside_optunas_ask_is_failed_and_its_whole_configuration_alone_queued_again(tmp_path: Path):
    """SIGKILL between Optuna creating a trial and writing its last parameter leaves a RUNNING
    trial with some parameters or none. A trial drawn by TPE has no whole configuration to run
    again: it is failed and a fresh one drawn. One that was queued (the baseline) still holds the
    configuration it was queued with, and that runs again."""
    from tuning.search_space import baseline_point, search_space
    from tuning.searcher import StudyAwareOptunaSearch, make_searcher, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    first = make_searcher(
        search_space("cnn"), metric="val_fracture_f1", mode="max", study_name="s", storage=storage, seed=0, num_samples=6, max_epochs=2
    )
    first.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot: no trial yet
    study = optuna.load_study(study_name="s", storage=storage)
    baseline_asked = study.ask()  # the queued baseline, popped; killed before its first parameter's write
    drawn_none = study.ask()  # drawn by the sampler, killed before its first parameter
    drawn_some = study.ask()
    drawn_some.suggest_float("lr", 1e-4, 1e-2, log=True)  # killed after its first parameter
    assert baseline_asked.params == drawn_none.params == {} and len(drawn_some.params) == 1

    restored = StudyAwareOptunaSearch.__new__(StudyAwareOptunaSearch)
    restored.restore(str(tmp_path / "searcher.pkl"))
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert all(trials[n].state == optuna.trial.TrialState.FAIL and trials[n].user_attrs[LOST_WITH_DRIVER] for n in (0, 1, 2))
    requeued = [t for t in trials if REQUEUED_FROM in t.user_attrs]
    assert [t.user_attrs[REQUEUED_FROM] for t in requeued] == [0]  # the baseline alone
    assert restored.suggest("a") == baseline_point()
    fresh = restored.suggest("b")
    assert set(fresh) == set(baseline_point()) and fresh != baseline_point()
    after = optuna.load_study(study_name="s", storage=storage).trials
    assert REQUEUED_FROM not in after[-1].user_attrs and len(after) == 5


@pytest.fixture
def s3_endpoint(tmp_path: Path, monkeypatch):
    """An S3-compatible server on loopback (moto's), with one bucket; the AWS variables point at it."""
    import boto3

    from tests.conftest import free_port

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=(tmp_path / "s3.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    deadline = time.monotonic() + 30
    while True:
        try:
            client.create_bucket(Bucket="fracture")
            break
        except Exception:  # noqa: BLE001 - not listening yet
            assert time.monotonic() < deadline, (tmp_path / "s3.log").read_text()
            time.sleep(0.3)
    yield client
    server.terminate()
    server.wait(timeout=30)


def test_s3_experiment_storage_holds_checkpoints_report_and_audit(s3_endpoint, tiny_download: Path, tmp_path: Path):
    command = [
        sys.executable,
        "-m",
        "tuning.run",
        "--arch",
        "cnn",
        "--data-dir",
        str(tiny_download),
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--storage-path",
        "s3://fracture/tune",
        "--name",
        "remote",
        "--num-samples",
        "2",
        "--epochs",
        "2",
        "--scheduler",
        "none",
        "--optuna-storage",
        f"sqlite:///{tmp_path / 'optuna.db'}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400)  # its own local Ray, with the S3 variables
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    keys = {o["Key"] for o in s3_endpoint.list_objects_v2(Bucket="fracture", Prefix="tune/remote/")["Contents"]}
    checkpoints = [k for k in keys if k.endswith("/checkpoint.pt")]
    assert len({k.split("/")[2] for k in checkpoints}) == 2  # both trials' checkpoints live in the bucket
    assert not [k for k in keys if k.endswith("/optimizer.pt")]  # deleted from the bucket as each trial ended
    assert {"tune/remote/summary.json", "tune/remote/trials.csv", "tune/remote/test_roc_curve.png", "tune/remote/audit/audit.json"} <= keys
    summary = json.loads(s3_endpoint.get_object(Bucket="fracture", Key="tune/remote/summary.json")["Body"].read())
    assert summary["num_trials"] == 2 and summary["test"]["num_images"] == 16
    study = optuna.load_study(study_name="remote", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # Each trial's best checkpoint, read from the bucket, is its run's logged model in the (default, local) MLflow store.
    from mlflow import MlflowClient

    from tuning.tracking.store import backend_uri, store_dir

    assert "MLflow tracking of a trial failed" not in done.stderr
    client = MlflowClient(backend_uri(store_dir()))
    experiment = client.get_experiment_by_name("fracture-cnn").experiment_id
    models = client.search_logged_models([experiment], filter_string="tags.job_name = 'remote'")
    assert sorted(m.tags["ray_trial_id"] for m in models) == sorted(r["trial_id"] for r in summary["trials"])
