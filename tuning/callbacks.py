"""The Ray Tune callbacks of a search, on the driver: each trial's MLflow run (with where it ran:
node and GPU tags, and its best checkpoint as the run's logged model), a finished trial's logs
(one row per epoch) and the optimiser state a finished trial no longer needs. The only tracking module that imports Ray.

OneRowPerEpoch: a finished trial's result.json and progress.csv hold each epoch once.

DropOptimizerState: a finished trial keeps its weights, not its optimiser state.

Tune keeps a trial's best checkpoint and its latest; each holds Adam's moments, twice the model's size,
so that a retried or resumed trial can train on. Once a trial has ended nothing
trains it on, so its `optimizer.pt` files go: for VGG16, 1.08 GB of each 1.62 GB checkpoint.
Works on any storage Tune writes to (a local folder or s3://), through the experiment's own
filesystem.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import signal
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import pyarrow.fs
from ray import tune

from tuning.placement import placement_of
from tuning.summary import scored_checkpoint_dir
from tuning.tracking.names import TRIAL_ROLE
from tuning.tracking.tracker import SearchTracker, is_epoch_metric
from tuning.trainable import CHECKPOINT_FILE, CHECKPOINT_SCORE, OPTIMIZER_FILE

logger = logging.getLogger(__name__)


class MlflowLoggingCallback(tune.Callback):
    """Ray Tune events -> the job's MLflow runs, on the driver: queued on the tracker's background
    thread (in order), so Tune's loop goes on starting and stopping trials meanwhile."""

    role = TRIAL_ROLE  # also for callbacks pickled with an experiment before runs had roles

    def __init__(self, tracker: SearchTracker, hyperparameters: Iterable[str], role: str = TRIAL_ROLE) -> None:
        self.tracker = tracker
        self.hyperparameters = list(hyperparameters)
        self.role = role  # "trial" for the search's trials, CONFIRMATION_ROLE for confirmation runs
        self.histories: dict[str, list[dict]] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        params = {k: trial.config.get(k) for k in self.hyperparameters}
        self.tracker.in_background(partial(self.tracker.trial_started, trial.trial_id, params, role=self.role))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = {k: v for k, v in result.items() if k == "training_iteration" or is_epoch_metric(k)}
        history = self.histories.setdefault(trial.trial_id, [])
        history[:] = went_on(history, row)
        self.tracker.in_background(partial(self.tracker.trial_result, trial.trial_id, dict(result)))
        placement = placement_of(result)
        if placement is not None:
            self.tracker.in_background(partial(self.tracker.trial_placed, trial.trial_id, placement))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, failed=True)

    def _ended(self, trial, *, failed: bool) -> None:
        history = list(self.histories.get(trial.trial_id, []))  # a copy: a retried trial's history changes on
        kept = [(r.checkpoint, r.metrics) for r in trial.run_metadata.checkpoint_manager.best_checkpoint_results]
        checkpoint = partial(_best_checkpoint_file, kept, self.tracker.job.mode, trial.path)  # found (or downloaded) in the background
        params = {k: trial.config.get(k) for k in self.hyperparameters}
        self.tracker.in_background(
            partial(self.tracker.trial_ended, trial.trial_id, history, failed=failed, checkpoint=checkpoint, params=params, role=self.role)
        )

    def on_experiment_end(self, trials, **info):
        self.tracker.drain()
        self.tracker.flush(force=True)

    def get_state(self) -> dict | None:
        return {"histories": self.histories}

    def set_state(self, state: dict) -> None:
        self.histories = state.get("histories", {})


@contextmanager
def _best_checkpoint_file(kept: list, mode: str, trial_path: str) -> Iterator[Path | None]:
    """The file of the trial's best kept checkpoint (weights, no optimiser state), None when it kept
    none; from remote storage (s3://) a local copy, removed afterwards."""
    if not any(CHECKPOINT_SCORE in metrics for _, metrics in kept):
        yield None
        return
    folder = scored_checkpoint_dir(kept, mode, trial_path)
    try:
        yield folder / CHECKPOINT_FILE
    finally:
        if all(Path(checkpoint.path) != folder for checkpoint, _ in kept):  # downloaded: not the checkpoint itself
            shutil.rmtree(folder, ignore_errors=True)


def went_on(rows: list, row: Mapping) -> list:
    """`rows` (a trial's epochs, oldest first) with `row` taken in: a row for an epoch they already
    hold is the trial training again from an earlier checkpoint, so the rows from that epoch on,
    of the attempt that did not go on, give way to it."""
    return [r for r in rows if int(r["training_iteration"]) < int(row["training_iteration"])] + [row]


class OneRowPerEpoch(tune.Callback):
    """When a trial ends, its result.json and progress.csv hold each epoch once, from the attempt
    that went on (`went_on`). Tune's loggers append: a trial that trains again epochs it had logged
    (its driver restored from a snapshot older than its logs) would hold both attempts, and so would
    what reads them (the summary's best epoch, the learning curves, ExperimentAnalysis). The files are
    rewritten in place in the driver's folder, before Tune syncs it to the storage path."""

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._keep_one_row_per_epoch(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._keep_one_row_per_epoch(trial)

    def _keep_one_row_per_epoch(self, trial) -> None:
        folder = Path(trial.local_path)
        try:
            _rewrite_rows(folder / "result.json", _json_rows, _json_lines)
            _rewrite_rows(folder / "progress.csv", _csv_rows, _csv_lines)
        except (OSError, ValueError, KeyError) as exc:  # the logs as Tune wrote them are no reason to stop a search
            logger.warning("Could not keep one row per epoch in the logs of trial %s: %s", trial.trial_id, exc)


def _rewrite_rows(path: Path, read, write) -> None:
    """Rewrite `path` in place (Tune's loggers may still hold it open to append) where a restart left
    rows of an attempt that did not go on."""
    if not path.is_file():
        return
    with path.open("r+", newline="") as file:
        header, rows = read(file.read())
        kept: list = []
        for row in rows:
            kept = went_on(kept, row)
        if len(kept) < len(rows):
            file.seek(0)
            file.write(write(header, kept))
            file.truncate()


def _json_rows(text: str) -> tuple[None, list[dict]]:
    return None, [
        {"training_iteration": json.loads(line)["training_iteration"], "line": line} for line in text.splitlines() if line.strip()
    ]


def _json_lines(header: None, rows: list[dict]) -> str:
    return "".join(row["line"] + "\n" for row in rows)


def _csv_rows(text: str) -> tuple[list[str], list[dict]]:
    header, *records = list(csv.reader(io.StringIO(text)))
    column = header.index("training_iteration")
    return header, [{"training_iteration": int(record[column]), "record": record} for record in records if record]


def _csv_lines(header: list[str], rows: list[dict]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows([header, *(row["record"] for row in rows)])
    return out.getvalue()


class DropOptimizerState(tune.Callback):
    """On a trial's end (finished, or stopped early by the scheduler), delete its optimiser files.
    A trial that errored keeps them: Tune may retry it from its last checkpoint."""

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        storage = trial.storage
        selector = pyarrow.fs.FileSelector(storage.trial_fs_path, recursive=True, allow_not_found=True)
        try:
            for entry in storage.storage_filesystem.get_file_info(selector):
                if entry.base_name == OPTIMIZER_FILE:
                    storage.storage_filesystem.delete_file(entry.path)
        except OSError as exc:  # space not reclaimed is no reason to stop a search
            logger.warning("Could not delete the optimiser state of finished trial %s: %s", trial.trial_id, exc)


MIN_ROOM_BYTES = 16 << 20


def storage_full(path: str) -> bool:
    """True when a local folder of the search (an experiment's or a trial's) has no room for
    another checkpoint like the largest under it (twice its size, at least 16 MiB): the next
    write fails wherever Tune retries the trial. Object storage (s3://) is never full."""
    import shutil

    folder = Path(path)
    if "://" in path or not folder.is_dir():
        return False
    largest = max(
        (sum(f.stat().st_size for f in c.rglob("*") if f.is_file()) for c in folder.rglob("checkpoint_*") if c.is_dir()), default=0
    )
    return shutil.disk_usage(folder).free < max(MIN_ROOM_BYTES, 2 * largest)


def storage_error(error: BaseException | str | None) -> bool:
    """True when `error` (an exception, or a trial's error text as Tune writes it) is a write refused for
    want of room (ENOSPC, EDQUOT), here or behind it (a Ray task error's cause, a raise ... from)."""
    import errno
    import os

    signs = [os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), f"[Errno {errno.ENOSPC}]", f"[Errno {errno.EDQUOT}]"]
    seen = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(sign in str(error) for sign in signs):  # pyarrow's and Ray's wrappers keep the reason as text only
            return True
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return isinstance(error, str) and any(sign in error for sign in signs)


def trial_error_text(trial) -> str | None:
    """The latest failure Tune wrote for `trial` (its error file), None when there is none to read."""
    if not trial.error_file:
        return None
    try:
        return Path(trial.error_file).read_text(errors="replace").rsplit("Failure # ", 1)[-1]
    except OSError:
        return None


class GracefulStop(tune.Callback):
    """Stops the search between Tune's steps, as Ctrl-C does, once no checkpoint is in flight:
    on Ctrl-C, and when a trial fails for want of room on the storage path. --resume continues.

    Tune takes in a report in two steps: the metrics (logged at once to progress.csv and MLflow),
    then, a step later, the checkpoint that came with them. Its own Ctrl-C handler stops the loop
    between the two, and the experiment is saved with the trial one checkpoint behind its logs: on
    --resume the trial trains that epoch again and every log gets it twice. This callback holds
    Ctrl-C back until the checkpoints in flight are taken in (a step or two), then hands it to
    Tune's handler; a second Ctrl-C goes through at once.

    A trial that failed because the storage is full would fail again at each of Tune's retries and
    end as a failed trial (in Optuna too); the search stops instead, the trial left to resume. The
    trial's own error decides (ENOSPC, EDQUOT); free space only when Tune could not write the error.
    `stopped_for` holds the reason (on the class: Tuner.restore runs an unpickled copy of this callback).
    """

    stopped_for: str | None = None

    def setup(self, **info) -> None:
        GracefulStop.stopped_for = None
        self._tune_handler = signal.getsignal(signal.SIGINT)  # Tune installs its handler before setting callbacks up
        self._pending = False
        if callable(self._tune_handler) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._hold)

    def _hold(self, sig, frame) -> None:
        if self._pending:  # pressed again: stop now
            self._tune_handler(sig, frame)
        self._pending = True

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._stop_if_full(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._stop_if_full(trial)

    def _stop_if_full(self, trial) -> None:
        if not callable(getattr(self, "_tune_handler", None)):
            return
        error = trial_error_text(trial)
        if storage_error(error) or (error is None and storage_full(trial.path)):
            logger.error("Trial %s failed and its storage path %s is full: stopping the search.", trial.trial_id, trial.path)
            GracefulStop.stopped_for = f"trial {trial.trial_id} found no room in {trial.path}"
            self._pending = True

    def on_step_end(self, iteration, trials, **info) -> None:
        if getattr(self, "_pending", False) and not any(trial.is_saving for trial in trials):
            self._pending = False
            self._tune_handler(signal.SIGINT, None)

    def on_experiment_end(self, trials, **info) -> None:
        if signal.getsignal(signal.SIGINT) == self._hold:  # the search ended by itself: Tune's handler, as Tune left it
            signal.signal(signal.SIGINT, self._tune_handler)

    def __getstate__(self) -> dict:
        return {}  # pickled with the experiment before setup; a handler is no state
