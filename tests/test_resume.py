"""Resume after Ctrl-C: every epoch is logged once, and a finished job's parent run is never
reopened (issue 16, case 3). Real local Ray, SQLite Optuna storage, the default MLflow store."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

from ray import tune

from tests.conftest import search_args
from tuning.run import get_args_parser, main, run_search

EPOCHS = 3


class _InterruptAtEpoch(tune.Callback):
    """Presses Ctrl-C as the driver takes in a trial's report of `epoch`: after Tune logged it,
    before it took in the checkpoint that came with it. The flag lives on the class, so the
    copy Tune restores on resume does not press it again."""

    sent = False

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result["training_iteration"] == self.epoch and not type(self).sent:
            type(self).sent = True
            os.kill(os.getpid(), signal.SIGINT)


def _client_and_parent(name: str):
    from mlflow import MlflowClient

    from tuning.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(None))
    experiment = client.get_experiment_by_name("fracture-cnn").experiment_id
    parents = client.search_runs([experiment], f"tags.job_name = '{name}' and tags.role = 'search'")
    assert len(parents) == 1
    return client, experiment, parents[0]


def test_a_trial_interrupted_between_its_report_and_its_checkpoint_logs_each_epoch_once(ray_session, tiny_download: Path, tmp_path: Path):
    flags = search_args(tiny_download, tmp_path, "once", "--num-samples", "1", "--epochs", str(EPOCHS), "--scheduler", "none")
    flags += ["--confirm-top", "0"]
    assert run_search(get_args_parser().parse_args(flags), callbacks=[_InterruptAtEpoch(2)]) == 130
    assert main([*flags, "--resume"]) == 0

    (trial_dir,) = (tmp_path / "once").glob("trial_*")
    with (trial_dir / "progress.csv").open() as rows:
        assert [int(r["training_iteration"]) for r in csv.DictReader(rows)] == list(range(1, EPOCHS + 1))
    client, experiment, parent = _client_and_parent("once")
    (child,) = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.role = 'trial'")
    for metric in ("val_loss", "train_loss", "val_fracture_f1"):
        assert [m.step for m in client.get_metric_history(child.info.run_id, metric)] == list(range(1, EPOCHS + 1)), metric
    assert parent.info.status == "FINISHED"


def test_a_resume_never_reopens_a_finished_parent_run(ray_session, tiny_download: Path, tmp_path: Path, capsys):
    """A FINISHED parent run is on the leaderboard. A resume of its job (here its summary.json was
    lost, so the job's files alone look unfinished) neither reopens the run nor tests again."""
    flags = search_args(tiny_download, tmp_path, "done", "--num-samples", "1", "--epochs", "1", "--scheduler", "none")
    flags += ["--confirm-top", "0"]
    assert main(flags) == 0
    (tmp_path / "done" / "summary.json").unlink()

    assert main([*flags, "--resume"]) == 0
    assert "finished already (its MLflow parent run is FINISHED)" in capsys.readouterr().out
    client, _, parent = _client_and_parent("done")
    assert parent.info.status == "FINISHED"
    assert len(client.get_metric_history(parent.info.run_id, "test_accuracy")) == 1
    assert not (tmp_path / "done" / "summary.json").exists()
