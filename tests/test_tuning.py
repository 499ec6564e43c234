"""Searches with a real local Ray, real Optuna storage (SQLite) and real image files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from ray import tune

from fracture_models.data import DATASET_FOLDER
from fracture_models.errors import UserError
from fracture_models.study import BASELINE_HYPERPARAMETERS
from tests.conftest import search_args, trial_results
from tuning.run import main
from tuning.searcher import RAY_TRIAL_ID
from tuning.trainable import CHECKPOINT_FILE, OPTIMIZER_FILE

_args = search_args


def _study(storage: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{storage / name / 'optuna.db'}")


def _reported_keys(trial_dir: Path) -> set[str]:
    return set().union(*trial_results(trial_dir))


def test_search_runs_baseline_first_stops_early_and_tests_only_the_winner(ray_session, tiny_download: Path, tmp_path: Path):
    # Selection on fracture F1 (the default); ASHA's rungs compare val_loss, which is continuous,
    # so its cut-offs never tie on this tiny task.
    code = main(
        _args(
            tiny_download,
            tmp_path,
            "search",
            "--num-samples",
            "5",
            "--epochs",
            "4",
            "--grace-period",
            "1",
            "--reduction-factor",
            "2",
            "--rung-metric",
            "val_loss",
        )
    )
    assert code == 0
    summary = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert summary["num_trials"] == 5
    for plot in ("learning_curves.png", "test_confusion_matrix.png"):
        assert (tmp_path / "search" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    study = _study(tmp_path, "search")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 5
    assert trials[0].params == pytest.approx(dict(BASELINE_HYPERPARAMETERS))  # trial 1 is the baseline
    states = [t.state for t in trials]
    assert all(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "ASHA stopped no trial early"
    assert summary["trials_stopped_early"] == len(pruned)
    assert all(t.user_attrs["stopped_at_epoch"] < 4 for t in pruned)
    assert {t.user_attrs[RAY_TRIAL_ID] for t in trials} == {row["trial_id"] for row in summary["trials"]}
    assert summary["epochs_trained"] < summary["epochs_budget"] == 20
    # Every trial has ended: it keeps its best epoch's checkpoint and its last, with the weights
    # but not the optimiser state.
    for row in summary["trials"]:
        trial_dir = Path(row["path"])
        scores = [r["checkpoint_score"] for r in trial_results(trial_dir)]
        kept = sorted(trial_dir.glob("checkpoint_*"))
        epochs = [int(folder.name.removeprefix("checkpoint_")) for folder in kept]  # 0-based
        best = [e for e in epochs if scores[e] == max(scores)]
        assert len(best) == 1 and set(epochs) == {best[0], len(scores) - 1}
        assert all((folder / CHECKPOINT_FILE).is_file() for folder in kept)
    assert not list((tmp_path / "search").rglob(OPTIMIZER_FILE))

    # Selection on validation; the test split reaches no trial and is evaluated once, for the winner.
    assert summary["metric"] == "val_fracture_f1" and summary["job"]["scheduler"]["rung_metric"] == "val_loss"
    completed = [r for r in summary["trials"] if r["status"] == "completed"]
    assert summary["best_trial"]["checkpoint_score"] == max(r["checkpoint_score"] for r in completed)
    # Optuna holds each completed trial's best epoch (the score the project selects on), so its best
    # trial, and optuna-dashboard's, is the search's best single run.
    assert study.metric_names == ["val_fracture_f1"]
    assert study.best_trial.user_attrs[RAY_TRIAL_ID] == summary["best_trial"]["trial_id"]
    for trial in trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            row = next(r for r in summary["trials"] if r["trial_id"] == trial.user_attrs[RAY_TRIAL_ID])
            assert trial.value == pytest.approx(row["checkpoint_score"])
            assert trial.value == max(r["checkpoint_score"] for r in trial_results(Path(row["path"])))
    # 25% of the 4-epoch budget's trained epochs holds no confirmation run here: the best single run is tested.
    assert summary["confirmation"]["planned"] == [] and summary["confirmation"]["winner"] == summary["best_trial"]["trial_id"]
    assert summary["test_evaluated_for"] == summary["best_trial"]["trial_id"] == summary["tested_trial"]["trial_id"]
    assert summary["generated_data"] is True
    assert summary["test"]["num_images"] == 16
    for row in summary["trials"]:
        keys = _reported_keys(Path(row["path"]))
        assert {"val_loss", "val_fracture_f1", "val_fractures_missed", "val_false_alarms"} <= keys
        assert not any(k.startswith("test") for k in keys)

    # Beside the test metrics: intervals, an operating point chosen on validation, calibration, heatmaps, the audit.
    clinical = summary["clinical"]
    assert clinical["positive_class"] == "fractured" and clinical["num_images"] == 16
    assert clinical["operating_point"]["chosen_on"] == "val" and clinical["calibration"]["fitted_on"] == "val"
    rates = clinical["at_0.5"]
    assert rates["fracture_sensitivity"]["value"] == pytest.approx(summary["test"]["fracture_sensitivity"])
    low, high = rates["fracture_sensitivity"]["ci95"]
    assert low <= rates["fracture_sensitivity"]["value"] <= high
    for plot in ("test_roc_curve.png", "test_reliability.png", "test_gradcam.png"):
        assert (tmp_path / "search" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    audit = json.loads((tmp_path / "search" / "audit" / "audit.json").read_text())
    assert audit["num_files"] == 96 and audit["cross_split_groups"] == summary["job"]["audit"]["cross_split_groups"]
    assert summary["job"]["audit"]["dedupe"] is False and summary["job"]["audit"]["dropped"] == 0


def test_dedupe_drops_the_training_copy_of_a_test_image(ray_session, tiny_download: Path, tmp_path: Path, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_download, data)
    root = data / DATASET_FOLDER / DATASET_FOLDER
    leaked = sorted((root / "test" / "fractured").iterdir())[0]
    shutil.copyfile(leaked, root / "train" / "fractured" / f"leak{leaked.suffix}")

    code = main(_args(data, tmp_path, "warned", "--num-samples", "1", "--epochs", "1", "--scheduler", "none"))
    assert code == 0
    assert "duplicate images across splits (1 group)" in caplog.text and "--dedupe" in caplog.text
    warned = json.loads((tmp_path / "warned" / "job.json").read_text())

    code = main(_args(data, tmp_path, "deduped", "--num-samples", "1", "--epochs", "1", "--scheduler", "none", "--dedupe"))
    assert code == 0
    job = json.loads((tmp_path / "deduped" / "job.json").read_text())
    assert job["audit"]["cross_split_groups"] == 1 and job["audit"]["dedupe"] and job["audit"]["dropped"] == 1
    assert job["data_fingerprint"] != warned["data_fingerprint"]  # a deduped job never ranks beside the leaky one
    rows = (tmp_path / "deduped" / "audit" / "dedupe_dropped.csv").read_text().splitlines()
    assert rows == ["split,class,path,kind", f"train,fractured,train/fractured/leak{leaked.suffix},exact"]


def test_impossible_gpu_request_fails_at_once(ray_session, tiny_download: Path, tmp_path: Path):
    start = time.monotonic()
    with pytest.raises(UserError, match="no GPUs"):
        main(_args(tiny_download, tmp_path, "gpu", "--num-samples", "2", "--epochs", "1", "--gpus-per-trial", "1"))
    assert time.monotonic() - start < 30


def test_unreachable_optuna_storage_fails_at_once_and_leaves_nothing(ray_session, tiny_download: Path, tmp_path: Path):
    start = time.monotonic()
    url = "postgresql://fracture:secret@127.0.0.1:1/optuna"  # nothing listens on port 1
    with pytest.raises(UserError, match="Cannot open the Optuna storage postgresql://fracture:\\*\\*\\*@127.0.0.1:1/optuna") as raised:
        main(_args(tiny_download, tmp_path, "no-optuna", "--num-samples", "2", "--epochs", "1", "--optuna-storage", url))
    assert "secret" not in str(raised.value) and "Nothing was trained" in str(raised.value)
    assert time.monotonic() - start < 60
    assert not (tmp_path / "no-optuna").exists()  # the same command works once the database is up


@pytest.mark.parametrize(
    "flag, value", [("--target-sensitivity", "1.5"), ("--target-sensitivity", "0"), ("--num-samples", "0"), ("--rung-epochs", "0")]
)
def test_bad_settings_fail_before_anything_starts(flag: str, value: str, tiny_download: Path, tmp_path: Path):
    with pytest.raises(UserError, match=flag):
        main(_args(tiny_download, tmp_path, "bad", "--num-samples", "2", "--epochs", "1", flag, value))
    assert not (tmp_path / "bad").exists()


def test_a_storage_path_that_is_a_file_fails_before_anything_starts(tiny_download: Path, tmp_path: Path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        main(_args(tiny_download, blocker, "job", "--num-samples", "1", "--epochs", "1"))


def test_two_gpus_per_trial_on_one_gpu_nodes_fails_at_once(tiny_download: Path, tmp_path: Path, monkeypatch):
    """Two nodes with one (logical) GPU each: 2 GPUs in the cluster, but no node can hold the trial."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep the nodes on loopback
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    try:
        cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        start = time.monotonic()
        command = [sys.executable, "-m", "tuning.run", *_args(tiny_download, tmp_path, "two-gpus", "--num-samples", "2", "--epochs", "1")]
        done = subprocess.run(
            [*command, "--address", cluster.address, "--gpus-per-trial", "2"], capture_output=True, text=True, timeout=120
        )
        elapsed = time.monotonic() - start
    finally:
        cluster.shutdown()
    assert done.returncode == 2, done.stderr
    assert "No node can hold one trial of 1 CPUs and 2 GPUs; the largest node has 1 CPUs and 1 GPUs" in done.stderr
    assert "Traceback" not in done.stderr
    assert elapsed < 60  # a Python start with torch and Ray, a connect, a check: no waiting for a node
    assert not (tmp_path / "two-gpus").exists()  # nothing half-made to trip a later --resume


class _InterruptAfter(tune.Callback):
    """Presses Ctrl-C (SIGINT to this process) once `count` trials have finished.

    Tune pickles callbacks with the experiment and restores them on resume; the flag lives on
    the class so the restored copy does not press Ctrl-C again.
    """

    sent = False

    def __init__(self, count: int) -> None:
        self.count, self.done = count, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        if self.done >= self.count and not type(self).sent:
            type(self).sent = True
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupt_then_resume_runs_n_trials_none_twice(ray_session, tiny_download: Path, tmp_path: Path, capsys):
    import shlex

    from tuning.run import get_args_parser, run_search

    args = _args(tiny_download, tmp_path, "resumable", "--num-samples", "5", "--epochs", "3", "--scheduler", "none", "--confirm-top", "0")
    code = run_search(get_args_parser().parse_args(args), callbacks=[_InterruptAfter(2)])
    assert code == 130
    study = _study(tmp_path, "resumable")
    finished_before = [t for t in study.trials if t.state.is_finished()]
    assert 2 <= len(finished_before) < 5
    assert not (tmp_path / "resumable" / "summary.json").exists()

    # The printed command is complete: the job's record (job.json) supplies every other setting.
    printed = capsys.readouterr().err.split("Continue with: ", 1)[1].splitlines()[0]
    command = shlex.split(printed)
    assert command[:3] == ["python", "-m", "tuning.run"] and "--data-dir" not in command and "--epochs" not in command
    # A flag that contradicts the record is refused before any work.
    with pytest.raises(UserError, match=r"--epochs 4 \(the job has 3\)"):
        main([*command[3:], "--epochs", "4"])
    assert main(command[3:]) == 0
    trials = _study(tmp_path, "resumable").trials
    assert len(trials) == 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    ray_ids = [t.user_attrs[RAY_TRIAL_ID] for t in trials]
    assert len(set(ray_ids)) == 5
    summary = json.loads((tmp_path / "resumable" / "summary.json").read_text())
    assert sorted(r["trial_id"] for r in summary["trials"]) == sorted(ray_ids)
    assert all(r["epochs"] == 3 for r in summary["trials"])
    assert not list((tmp_path / "resumable").rglob(OPTIMIZER_FILE))  # the restored job still drops it as trials end
    # The job kept one parent run and one child run per trial in the default MLflow store.
    from mlflow import MlflowClient

    from tuning.tracking.store import backend_uri, store_dir

    client = MlflowClient(backend_uri(store_dir()))
    experiment = client.get_experiment_by_name("fracture-cnn").experiment_id
    parents = client.search_runs([experiment], "tags.job_name = 'resumable' and tags.role = 'search'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}' and tags.role = 'trial'")
    assert sorted(c.data.tags["ray_trial_id"] for c in children) == sorted(ray_ids)
    # One logged model per trial, whether it ended before the interruption or after the resume.
    models = client.search_logged_models([experiment], filter_string="tags.job_name = 'resumable'")
    assert sorted(m.tags["ray_trial_id"] for m in models) == sorted(ray_ids)
    # Finished trials were not run again: their Optuna records are unchanged.
    after = {t.number: t for t in trials}
    for t in finished_before:
        assert after[t.number].datetime_complete == t.datetime_complete

    # Resuming the finished job says so and changes nothing: the test split was evaluated once, ever.
    written = (tmp_path / "resumable" / "summary.json").stat().st_mtime_ns
    assert main(command[3:]) == 0
    assert "finished already" in capsys.readouterr().out
    assert (tmp_path / "resumable" / "summary.json").stat().st_mtime_ns == written
    assert len(client.get_metric_history(parents[0].info.run_id, "test_accuracy")) == 1
    assert client.get_run(parents[0].info.run_id).info.status == "FINISHED"


def test_existing_name_without_resume_is_refused(ray_session, tiny_download: Path, tmp_path: Path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match="--resume"):
        main(_args(tiny_download, tmp_path, "taken", "--num-samples", "1", "--epochs", "1"))


def test_sampler_seed_changes_the_configs_not_how_a_config_trains(ray_session, tiny_download: Path, tmp_path: Path):
    """Same --seed, two --sampler-seed values: the baseline trains to the same numbers in both
    searches while the sampled configs differ (the benchmarks' common random numbers)."""
    reports, configs = {}, {}
    for sampler_seed in ("0", "1"):
        name = f"sampler-{sampler_seed}"
        assert (
            main(
                _args(
                    tiny_download,
                    tmp_path,
                    name,
                    "--num-samples",
                    "2",
                    "--epochs",
                    "1",
                    "--scheduler",
                    "none",
                    "--seed",
                    "5",
                    "--sampler-seed",
                    sampler_seed,
                )
            )
            == 0
        )
        assert json.loads((tmp_path / name / "job.json").read_text())["sampler_seed"] == int(sampler_seed)
        trials = sorted(_study(tmp_path, name).trials, key=lambda t: t.number)
        assert trials[0].params == BASELINE_HYPERPARAMETERS
        configs[sampler_seed] = trials[1].params
        reports[sampler_seed] = json.loads((tmp_path / name / "summary.json").read_text())["baseline_trial"]["best_value"]
    assert reports["0"] == reports["1"]
    assert configs["0"] != configs["1"]


def test_confirmation_retrains_the_top_configurations_and_the_baseline_and_tests_the_best_mean(
    ray_session, tiny_download: Path, tmp_path: Path
):
    from mlflow import MlflowClient

    from tuning.tracking import experiment_name, resolve_tracking_uri

    code = main(
        _args(
            tiny_download,
            tmp_path,
            "confirmed",
            "--num-samples",
            "3",
            "--epochs",
            "2",
            "--scheduler",
            "none",
            "--confirm-top",
            "1",
            "--confirm-seeds",
            "1",
            "--confirm-budget",
            "1.0",
        )
    )
    assert code == 0
    summary = json.loads((tmp_path / "confirmed" / "summary.json").read_text())
    confirmation = summary["confirmation"]
    # The best searched configuration and the baseline, each with one more seed (2 runs x 2 epochs of a 6-epoch search).
    configurations = {c["trial_id"]: c for c in confirmation["configurations"]}
    assert len(configurations) == 2 and summary["baseline_trial"]["trial_id"] in configurations
    assert sorted((r["confirms"], r["seed"]) for r in confirmation["planned"]) == sorted((k, 1) for k in configurations)
    assert confirmation["extra_epochs"] == 4 and confirmation["extra_fraction"] == pytest.approx(4 / 6)
    assert confirmation["seeds"] == [0, 1]
    for c in configurations.values():
        assert [r["seed"] for r in c["runs"]] == [0, 1] and c["n"] == 2
    means = {k: c["mean"] for k, c in configurations.items()}
    assert confirmation["winner"] == max(means, key=means.get)
    assert summary["test_evaluated_for"] == confirmation["tested_run"] == confirmation["winner"]
    if not configurations[confirmation["winner"]]["is_baseline"]:
        assert confirmation["difference_vs_baseline"]["n"] == 2
    assert (tmp_path / "confirmed" / "confirmation.csv").read_text().startswith("configuration,is_baseline,winner,lr")

    # Confirmation runs are never Optuna trials; in MLflow they are nested runs tagged role=confirmation.
    assert len(_study(tmp_path, "confirmed").trials) == 3
    client = MlflowClient(resolve_tracking_uri(None))
    experiment = client.get_experiment_by_name(experiment_name("cnn"))
    parent = client.search_runs([experiment.experiment_id], "tags.role = 'search' and tags.job_name = 'confirmed'")[0]
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.role = 'confirmation'"
    )
    assert sorted(r.data.params["seed"] for r in runs) == ["1", "1"] and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["omp_num_threads"] == "1" for r in runs)  # two runs on 2 CPUs: one thread each
    assert {r.data.tags["confirms"] for r in runs} == set(configurations)
    assert parent.data.metrics["confirm_winner_mean"] == pytest.approx(means[confirmation["winner"]])
    assert parent.data.tags["confirm_winner"] == confirmation["winner"]

    # --confirm-top 0 turns the stage off.
    assert (
        main(
            _args(
                tiny_download, tmp_path, "unconfirmed", "--num-samples", "1", "--epochs", "1", "--scheduler", "none", "--confirm-top", "0"
            )
        )
        == 0
    )
    assert json.loads((tmp_path / "unconfirmed" / "summary.json").read_text())["confirmation"] is None


def test_without_address_a_search_starts_its_own_ray_even_when_the_last_cluster_is_gone(tiny_download: Path, tmp_path: Path):
    """Ray's default reads /tmp/ray/ray_current_cluster (the last `ray start` on this machine) and
    hangs for minutes when that cluster is dead; a search without --address must not."""
    marker = Path("/tmp/ray/ray_current_cluster")
    saved = marker.read_text() if marker.exists() else None
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("127.0.0.1:1")  # a cluster that is gone
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        start = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tuning.run",
                *_args(
                    tiny_download, tmp_path, "own-ray", "--num-samples", "1", "--epochs", "1", "--scheduler", "none", "--confirm-top", "0"
                ),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert time.monotonic() - start < 300
    finally:
        if saved is None:
            marker.unlink(missing_ok=True)
        else:
            marker.write_text(saved)


def test_an_address_nobody_listens_on_fails_at_once_with_the_reason(tiny_download: Path, tmp_path: Path):
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tuning.run", *_args(tiny_download, tmp_path, "dead", "--num-samples", "1", "--address", "127.0.0.1:1")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "Could not connect to the Ray cluster at 127.0.0.1:1" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - start < 60
