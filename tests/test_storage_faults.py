"""Faults of a job's storage mid-search (issue 16, case 4), for real: the team's PostgreSQL Optuna
database refusing every connection for a few seconds, and the storage path filling up (a small
tmpfs). A moment's outage is retried and costs nothing; a fault that lasts stops the job cleanly
(one line, the resume command, the parent run FAILED, exit 1), and --resume recovers everything."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from ray import tune

from fracture_models.errors import UserError
from tests.conftest import POSTGRES, search_args, trial_results
from tuning.run import get_args_parser, main, run_search
from tuning.searcher import RAY_TRIAL_ID

TRIALS, EPOCHS = 2, 3


def _flags(data: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return search_args(data, storage, name, "--num-samples", str(TRIALS), "--epochs", str(EPOCHS), "--scheduler", "none", *extra) + [
        "--confirm-top",
        "0",
    ]


def _parent(name: str):
    from mlflow import MlflowClient

    from tuning.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(None))
    experiment = client.get_experiment_by_name("fracture-cnn").experiment_id
    (parent,) = client.search_runs([experiment], f"tags.job_name = '{name}' and tags.role = 'search'")
    return client, experiment, parent


def _assert_every_trial_and_epoch_once(storage: Path, name: str, study: optuna.Study) -> None:
    trials = study.trials
    assert len(trials) == TRIALS and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    summary = json.loads((storage / name / "summary.json").read_text())
    assert sorted(r["trial_id"] for r in summary["trials"]) == sorted(t.user_attrs[RAY_TRIAL_ID] for t in trials)
    client, experiment, parent = _parent(name)
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.role = 'trial'")
    assert sorted(c.data.tags["ray_trial_id"] for c in children) == sorted(r["trial_id"] for r in summary["trials"])
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")] == list(range(1, EPOCHS + 1))
    for row in summary["trials"]:
        with (Path(row["path"]) / "progress.csv").open() as rows:
            assert [int(r["training_iteration"]) for r in csv.DictReader(rows)] == list(range(1, EPOCHS + 1))
        assert [r["training_iteration"] for r in trial_results(Path(row["path"]))] == list(range(1, EPOCHS + 1))


class _AtFirstReport(tune.Callback):
    """Runs `act` when the driver takes in the search's first epoch: in a thread of its own, or
    (`wait`) before the driver goes on, so before Ray Tune saves the experiment with that epoch."""

    def __init__(self, act, wait: bool = False) -> None:
        self.act, self.wait, self.done = act, wait, False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not self.done:
            self.done = True
            if self.wait:
                self.act()
            else:
                threading.Thread(target=self.act, daemon=True).start()

    def __getstate__(self) -> dict:
        return {"done": True}  # a restored copy (on resume) does nothing


def test_the_optuna_database_refusing_connections_for_seconds_costs_nothing(
    ray_session, tiny_download: Path, tmp_path: Path, postgres_database, caplog
):
    import psycopg

    url = postgres_database("outage")
    database = url.rsplit("/", 1)[1]

    def outage() -> None:
        with psycopg.connect(dbname="test", autocommit=True, **POSTGRES) as admin:
            admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
            time.sleep(4)
            admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')

    caplog.set_level(logging.WARNING, logger="tuning.searcher")
    args = get_args_parser().parse_args(_flags(tiny_download, tmp_path, "outage", "--optuna-storage", url))
    assert run_search(args, callbacks=[_AtFirstReport(outage)]) == 0
    assert "Optuna storage unreachable" in caplog.text  # the search met the outage, and waited it out
    _assert_every_trial_and_epoch_once(tmp_path, "outage", optuna.load_study(study_name="outage", storage=url))


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 256 MiB tmpfs: room for the job (its checkpoints are 23 MiB with the optimiser state) until something fills it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256M", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_storage_path_stops_the_job_cleanly_and_resume_recovers_it(
    ray_session, tiny_download: Path, tmp_path: Path, small_disk: Path, capsys
):
    filler = small_disk / "filler"

    def fill() -> None:
        with filler.open("wb", buffering=0) as out:
            for chunk in (1 << 20, 1 << 12, 1):  # to the last byte
                try:
                    while True:
                        out.write(b"\0" * chunk)
                except OSError:
                    pass

    flags = _flags(tiny_download, small_disk, "full")
    # Full before Ray Tune saves the experiment with the first epoch: that epoch is trained again on resume.
    assert run_search(get_args_parser().parse_args(flags), callbacks=[_AtFirstReport(fill, wait=True)]) == 1
    err = capsys.readouterr().err
    assert "Stopped: the storage is full" in err
    resume = err.split("Continue with: ", 1)[1].splitlines()[0]
    assert resume.endswith("--name full --storage-path " + str(small_disk) + " --resume")
    client, _, parent = _parent("full")
    assert parent.info.status == "FAILED"
    assert not (small_disk / "full" / "summary.json").exists()

    # A resume while the disk is still full stops the same way (before or after its first step),
    # and leaves the parent run FAILED, not RUNNING.
    try:
        code, err = main([*flags, "--resume"]), capsys.readouterr().err
    except UserError as stopped:
        code, err = 2, str(stopped)
    assert code in (1, 2) and "the storage is full" in err, err[-2000:]
    assert client.get_run(parent.info.run_id).info.status == "FAILED"

    filler.unlink()
    assert main([*flags, "--resume"]) == 0
    study = optuna.load_study(study_name="full", storage=f"sqlite:///{small_disk / 'full' / 'optuna.db'}")
    _assert_every_trial_and_epoch_once(small_disk, "full", study)
    # The trial that had logged its first epoch went on in a new MLflow run; the old one is deleted.
    from mlflow.entities import ViewType

    client, experiment, parent = _parent("full")
    children = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.role = 'trial'"
    (restarted,) = client.search_runs([experiment], children + " and tags.restarted_from_run != ''")
    (old,) = client.search_runs([experiment], children, run_view_type=ViewType.DELETED_ONLY)
    assert (
        old.data.tags["restarted_as_run"] == restarted.info.run_id and old.data.tags["ray_trial_id"] == restarted.data.tags["ray_trial_id"]
    )


def _failed_trial(tmp_path: Path, error: BaseException):
    """A real Tune trial under tmp_path whose error file holds `error`, as Tune writes it."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp", trial_dir_name="trial_1")
    trial = Trial("__fake", config={}, storage=storage, stub=True)
    trial.init_local_path()
    trial.handle_error(error)
    return trial


def _no_room_error() -> OSError:
    """A real ENOSPC without root: /dev/full refuses every write for want of room."""
    try:
        with open("/dev/full", "wb", buffering=0) as full:
            full.write(b"checkpoint")
    except OSError as exc:
        return exc
    raise AssertionError("/dev/full took a write")


def test_only_a_trial_error_for_want_of_room_stops_the_search_on_a_nearly_full_volume(ray_session, tmp_path: Path):
    from fracture_models.errors import TrainingDiverged
    from tuning.callbacks import GracefulStop, storage_full

    diverged = _failed_trial(tmp_path / "a", TrainingDiverged("the training loss is nan at epoch 2"))
    no_room = _failed_trial(tmp_path / "b", _no_room_error())
    for trial in (diverged, no_room):  # the volume looks full: a (sparse) checkpoint as large as the free space
        checkpoint = Path(trial.path) / "checkpoint_000000"
        checkpoint.mkdir(parents=True)
        with (checkpoint / "model.pt").open("wb") as weights:
            weights.truncate(shutil.disk_usage(tmp_path).free)
        assert storage_full(trial.path)

    stop = GracefulStop()
    stop.setup()
    try:
        stop.on_trial_error(0, [diverged], diverged)
        assert not stop._pending and GracefulStop.stopped_for is None  # a diverged trial fails alone; the search goes on
        stop.on_trial_recover(0, [no_room], no_room)
        assert GracefulStop.stopped_for is not None and stop._pending
    finally:
        stop.on_experiment_end([])
