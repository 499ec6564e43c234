"""Two jobs never become one: a job claims its name (experiment folder, Optuna study) before any
slow step, and a fresh MLflow store survives two first jobs opening it at once (issue 16, case 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from fracture_models.errors import UserError
from tests.conftest import search_args
from tests.test_faults import s3_endpoint  # noqa: F401 - the fixture, used by name
from tuning.run import main


def _parents(tracking_uri: str, name: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("fracture-cnn")
    return client.search_runs([experiment.experiment_id], f"tags.job_name = '{name}' and tags.role = 'search'") if experiment else []


def test_two_jobs_started_at_once_with_one_name_make_one_job(tiny_download: Path, tmp_path: Path):
    """Two real `python -m tuning.run --name twin` processes, started together on a fresh MLflow
    store: one runs the job, the other stops at once with one line; 2 trials, not 4; one parent run."""
    store = tmp_path / "mlflow"
    env = {**os.environ, "FRACTURE_MLFLOW_DIR": str(store)}
    flags = search_args(tiny_download, tmp_path / "tune", "twin", "--num-samples", "2", "--epochs", "1", "--scheduler", "none")
    command = [sys.executable, "-m", "tuning.run", *flags, "--confirm-top", "0"]
    jobs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [job.communicate(timeout=500) for job in jobs]
    codes = [job.returncode for job in jobs]
    assert sorted(codes) == [0, 2], outputs
    refused = outputs[codes.index(2)][1]
    assert "twin exists already: pass --resume to continue it, or choose another --name" in refused
    assert "Traceback" not in refused and len(refused.strip().splitlines()) == 1, refused

    experiment = tmp_path / "tune" / "twin"
    study = optuna.load_study(study_name="twin", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert len(study.trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    summary = json.loads((experiment / "summary.json").read_text())
    assert summary["num_trials"] == 2
    parents = _parents(f"sqlite:///{store / 'mlflow.db'}", "twin")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def test_a_fresh_mlflow_store_opened_by_three_first_jobs_at_once(tmp_path: Path):
    """Without one opener at a time, MLflow's migrations collide ("duplicate column name",
    "table ... already exists") nearly every time and the losers stop."""
    opener = (
        "import sys, time\n"
        "from tuning.tracking.connect import check_reachable\n"
        "while time.time() < float(sys.argv[2]): time.sleep(0.005)\n"
        "check_reachable(sys.argv[1])\n"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 10  # after every process has imported MLflow
    openers = [subprocess.Popen([sys.executable, "-c", opener, uri, str(start)], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [o.communicate(timeout=120)[1] for o in openers]
    assert [o.returncode for o in openers] == [0, 0, 0], [e[-1500:] for e in errors]
    assert _parents(uri, "nobody") == []  # the store answers


def test_a_second_job_of_a_name_on_a_shared_optuna_storage_is_refused(ray_session, tiny_download: Path, tmp_path: Path, postgres_database):
    """The team's PostgreSQL study is the name's claim: a job with the name under another
    --storage-path stops before any work, and the first job's study and runs are untouched."""
    url = postgres_database("claims")
    flags = ("--num-samples", "2", "--epochs", "1", "--scheduler", "none", "--confirm-top", "0", "--optuna-storage", url)
    assert main(search_args(tiny_download, tmp_path / "first", "shared", *flags)) == 0
    before = [(t.number, t.state, t.datetime_complete) for t in optuna.load_study(study_name="shared", storage=url).trials]

    started = time.monotonic()
    with pytest.raises(UserError, match="holds a study named shared already, from another job"):
        main(search_args(tiny_download, tmp_path / "second", "shared", *flags))
    assert time.monotonic() - started < 60
    assert [(t.number, t.state, t.datetime_complete) for t in optuna.load_study(study_name="shared", storage=url).trials] == before
    assert not (tmp_path / "second" / "shared").exists()  # nothing half-made: the same command runs after a rename
    from tuning.tracking import resolve_tracking_uri

    assert len(_parents(resolve_tracking_uri(None), "shared")) == 1


def test_an_s3_experiment_folder_is_claimed_by_one_job(s3_endpoint, tmp_path: Path):  # noqa: F811
    """The remote claim is a conditional put: the second claimant of a name is refused, and a
    released claim (a job that failed before training) frees the name again."""
    from tuning.claim import CLAIM_FILE, Claim, claim_folder

    experiment = "s3://fracture/tune/twin"
    assert claim_folder(experiment)
    with pytest.raises(UserError, match="exists already"):
        claim_folder(experiment)
    assert json.loads(s3_endpoint.get_object(Bucket="fracture", Key=f"tune/twin/{CLAIM_FILE}")["Body"].read())["pid"] == os.getpid()
    Claim(experiment, "twin", None, "", made_folder=True).release()
    assert claim_folder(experiment)
