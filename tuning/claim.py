"""A job's claim on its name, taken before any slow step, so that two jobs never become one.

Three things carry a job's name, and each is claimed with an operation that only one process can win:

    the experiment folder   local: `mkdir` (atomic on a local disk and on NFS); s3://: a conditional
                            put of <experiment>/claim.json (If-None-Match: *), which S3 and moto honour.
                            Other remote schemes get a check-then-write, not atomic (said in a warning).
    the running job         local: an exclusive `flock` on <experiment>/job.lock, held while the process
                            lives (the kernel drops it when the process dies), so a second --resume of a
                            running job stops. No equivalent on object storage: there the folder claim
                            and the study claim below are all there is.
    the Optuna study        a new job creates it and never loads one that exists (a unique name in the
                            storage's database), so on a storage shared between --storage-path roots the
                            second job of a name stops. Only --resume reuses a study.

A new job that fails before it trained anything gives its claims back (`release`), so the same
command can simply run again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from fracture_models.errors import UserError
from fracture_models.records import redact_url

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

CLAIM_FILE = "claim.json"  # who claimed a remote experiment folder, and when
LOCK_FILE = "job.lock"  # held (flock) by the process running a local job


@dataclass
class Claim:
    """What a job holds on its name; `release` gives back what a new job made before it trained."""

    experiment: str
    name: str
    storage: optuna.storages.BaseStorage
    optuna_url: str
    made_folder: bool = False  # this job created the experiment folder (or its remote claim object)
    made_study: bool = False
    lock: IO | None = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

    def unlock(self) -> None:
        """Let another process run the job (the process's end does the same)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def release(self) -> None:
        """Give back the folder and study of a new job that trained nothing, and the lock."""
        import optuna

        if self.made_study:
            try:
                optuna.delete_study(study_name=self.name, storage=self.storage)
            except Exception as exc:  # noqa: BLE001 - giving back is best effort; the error that brought us here matters more
                logger.warning("Could not delete the empty Optuna study %s: %s", self.name, exc)
        if self.made_folder:
            if "://" not in self.experiment:
                shutil.rmtree(self.experiment, ignore_errors=True)
            else:
                _delete_remote(f"{self.experiment}/{CLAIM_FILE}")
        self.unlock()


def claim_folder(experiment: str) -> bool:
    """Create the experiment folder of a new job, failing when it exists (or appears meanwhile)."""
    taken = UserError(f"Experiment {experiment} exists already: pass --resume to continue it, or choose another --name.")
    if "://" not in experiment:
        Path(experiment).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(experiment)
        except FileExistsError:
            raise taken from None
        return True
    if not _put_if_absent(f"{experiment}/{CLAIM_FILE}", _claimant()):
        raise taken
    return True


def hold_lock(experiment: str, name: str) -> IO | None:
    """The exclusive lock of a local job for as long as this process runs it; None for remote storage."""
    if "://" in experiment:
        return None
    import fcntl

    handle = open(Path(experiment) / LOCK_FILE, "a+b", buffering=0)  # unbuffered: nothing left to write at close
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().decode(errors="replace").strip() or "another process"
        handle.close()
        raise UserError(f"{name} is running already ({holder}): wait for it to end, or stop it before --resume.") from None
    try:  # who holds it, for the message above; the lock holds without it (a full disk)
        handle.seek(0)
        handle.truncate()
        handle.write(_claimant().encode())
    except OSError:
        pass
    return handle


def claim_study(storage: optuna.storages.BaseStorage, name: str, mode: str, optuna_url: str) -> None:
    """Create the new job's Optuna study; one of that name in the storage belongs to another job."""
    import optuna

    try:
        optuna.create_study(study_name=name, storage=storage, direction="minimize" if mode == "min" else "maximize")
    except optuna.exceptions.DuplicatedStudyError:
        raise UserError(
            f"The Optuna storage {redact_url(optuna_url)} holds a study named {name} already, from another job: "
            "choose another --name, or continue that job with --resume and its own --storage-path."
        ) from None


def _claimant() -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _s3_location(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _put_if_absent(uri: str, text: str) -> bool:
    """Write `uri` unless it exists; False when it does. Atomic for s3:// (a conditional put)."""
    if uri.startswith("s3://"):
        try:
            import boto3
            from botocore.exceptions import ClientError
        except ImportError:
            logger.warning("boto3 is not installed: the claim of %s is a check and a write, not atomic.", uri)
        else:
            bucket, key = _s3_location(uri)
            try:
                boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=text.encode(), IfNoneMatch="*")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                raise
            return True
    else:
        logger.warning("%s has no conditional write here: the claim of the name is a check and a write, not atomic.", uri)
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        return False
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode())
    return True


def _delete_remote(uri: str) -> None:
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    try:
        filesystem.delete_file(path)
    except OSError as exc:
        logger.warning("Could not remove the claim %s: %s", uri, exc)
