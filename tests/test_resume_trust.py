"""--resume runs only state that the user's own jobs wrote (issue 16, case 6): a pickle planted
in the experiment folder is refused before anything unpickles it, a job's own state resumes,
another user's is refused unless vouched for. Real local Ray, SQLite Optuna storage, real files."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from ray import tune

from fracture_models.errors import UserError
from tests.conftest import search_args
from tests.test_faults import s3_endpoint  # noqa: F401 - a fixture: an S3 server on loopback
from tuning.run import get_args_parser, main, run_search
from tuning.trust import KEY_FILE_ENV, SIGNATURES_FILE, fs_path, state_filesystem, state_key, unsigned_state


class _InterruptAfterOne(tune.Callback):
    """Presses Ctrl-C once the first trial has finished. The flag lives on the class, so the copy
    Tune restores on resume does not press it again; each job resets it."""

    sent = False

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not type(self).sent:
            type(self).sent = True
            os.kill(os.getpid(), signal.SIGINT)


def _interrupted_job(data: Path, storage: Path, name: str) -> tuple[Path, list[str]]:
    """A tiny search stopped after its first of two trials; its folder and its flags."""
    flags = search_args(data, storage, name, "--num-samples", "2", "--epochs", "1", "--scheduler", "none")
    flags += ["--confirm-top", "0", "--max-concurrent", "1"]
    _InterruptAfterOne.sent = False
    assert run_search(get_args_parser().parse_args(flags), callbacks=[_InterruptAfterOne()]) == 130
    experiment = storage / name
    assert not (experiment / "summary.json").exists()
    return experiment, flags


class _Planted:
    """What another user could write as tuner.pkl: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_a_pickle_planted_in_the_folder_is_refused_before_it_runs(ray_session, tiny_download: Path, tmp_path: Path):
    experiment, flags = _interrupted_job(tiny_download, tmp_path, "planted")
    marker = tmp_path / "ran-as-you"
    (experiment / "tuner.pkl").write_bytes(pickle.dumps(_Planted(marker)))

    done = subprocess.run([sys.executable, "-m", "tuning.run", *flags, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: Refusing to resume {experiment}: tuner.pkl changed after your job wrote it")
    assert "--trust-experiment-folder" in error and "another --name" in error
    assert not marker.exists()

    # Past that check (a file swapped just after it), Ray reads the folder through the job's
    # filesystem, which hands it only the bytes it verified: refused again, nothing run.
    with pytest.raises(UserError, match="tuner.pkl changed after your job wrote it"):
        tune.Tuner.restore(fs_path(str(experiment)), trainable="unused", storage_filesystem=state_filesystem(str(experiment)))
    assert not marker.exists()
    # The plant is live: Ray's own restore runs it (what --resume did before).
    with pytest.raises(Exception):
        tune.Tuner.restore(str(experiment), trainable="unused")
    assert marker.exists()


def test_an_untouched_interrupted_job_resumes_and_finishes(ray_session, tiny_download: Path, tmp_path: Path):
    experiment, flags = _interrupted_job(tiny_download, tmp_path, "mine")
    signatures = json.loads((experiment / SIGNATURES_FILE).read_text())["files"]
    assert {"tuner.pkl", "search_gen_state-", "searcher-state-", "experiment_state-", "callback-states-"} <= {
        name if name == "tuner.pkl" else name.split("20", 1)[0] for name in signatures
    }
    assert unsigned_state(str(experiment), state_key()) == []

    assert main([*flags, "--resume"]) == 0
    assert (experiment / "summary.json").is_file()
    study = optuna.load_study(study_name="mine", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert unsigned_state(str(experiment), state_key()) == []  # the resumed run signed what it wrote


def test_state_signed_with_another_users_key_is_refused_unless_vouched_for(
    ray_session, tiny_download: Path, tmp_path: Path, monkeypatch, caplog
):
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "their-config" / "state.key"))
    experiment, flags = _interrupted_job(tiny_download, tmp_path, "theirs")
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "my-config" / "state.key"))

    with pytest.raises(UserError, match=r"tuner.pkl was signed with another key than yours .*--trust-experiment-folder"):
        main([*flags, "--resume"])
    # A job from before resume state was signed has no signatures: refused the same way.
    (experiment / SIGNATURES_FILE).unlink()
    with pytest.raises(UserError, match=rf"tuner.pkl is not signed: the folder has no {SIGNATURES_FILE} .*\(and \d+ more files\)"):
        main([*flags, "--resume"])

    # Vouching for the folder lists what was unsigned, then the job resumes, its state now signed as mine.
    assert main([*flags, "--resume", "--trust-experiment-folder"]) == 0
    assert "tuner.pkl is not signed" in caplog.text
    assert (experiment / "summary.json").is_file()
    assert unsigned_state(str(experiment), state_key()) == []


def test_the_key_is_private_and_made_once(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(KEY_FILE_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    key = state_key()
    assert key.path == tmp_path / "config" / "fracture-tune" / "state.key"
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600 and stat.S_IMODE(key.path.parent.stat().st_mode) == 0o700
    assert state_key() == key and len(key.secret) == 32
    assert key.key_id not in key.path.read_text() and key.secret.hex() not in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    key.path.chmod(0o620)
    with pytest.raises(UserError, match="writable by other users"):
        state_key()
    with pytest.raises(UserError, match="only applies with --resume"):
        main(search_args(tmp_path, tmp_path, "new", "--trust-experiment-folder"))


def test_state_in_an_s3_bucket_is_signed_and_checked_there(s3_endpoint, tiny_download: Path, tmp_path: Path):  # noqa: F811 - the fixture
    flags = search_args(tiny_download, tmp_path, "remote", "--num-samples", "1", "--epochs", "1", "--scheduler", "none")
    flags[flags.index("--storage-path") + 1] = "s3://fracture/tune"
    flags += ["--confirm-top", "0", "--optuna-storage", f"sqlite:///{tmp_path / 'optuna.db'}"]
    # Its own local Ray, with the S3 variables.
    done = subprocess.run([sys.executable, "-m", "tuning.run", *flags], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    keys = {o["Key"] for o in s3_endpoint.list_objects_v2(Bucket="fracture", Prefix="tune/remote/")["Contents"]}
    assert {"tune/remote/tuner.pkl", f"tune/remote/{SIGNATURES_FILE}"} <= keys
    assert unsigned_state("s3://fracture/tune/remote", state_key()) == []

    # Planted beside the job's state (a newer searcher state, the one Ray would load), and the
    # job made to look unfinished: the resume is refused, reading the bucket, before Ray starts.
    planted = "searcher-state-9999-12-31_23-59-59.pkl"
    s3_endpoint.put_object(Bucket="fracture", Key=f"tune/remote/{planted}", Body=pickle.dumps(_Planted(tmp_path / "ran")))
    s3_endpoint.delete_object(Bucket="fracture", Key="tune/remote/summary.json")
    done = subprocess.run([sys.executable, "-m", "tuning.run", *flags, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"{planted} is not signed by any job of yours" in done.stderr
    assert not (tmp_path / "ran").exists()
