"""The Ray Tune callbacks of a search, on the driver: each trial's MLflow run (with where it ran:
node and GPU tags, and its best checkpoint as the run's logged model), and the optimiser state a finished trial no longer needs. The only tracking module that imports Ray.

DropOptimizerState: a finished trial keeps its weights, not its optimiser state.

Tune keeps a trial's best checkpoint and its latest; each holds Adam's moments, twice the model's size,
so that a retried or resumed trial can train on. Once a trial has ended nothing
trains it on, so its `optimizer.pt` files go: for VGG16, 1.08 GB of each 1.62 GB checkpoint.
Works on any storage Tune writes to (a local folder or s3://), through the experiment's own
filesystem.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow.fs
from ray import tune

from tuning.placement import placement_of
from tuning.summary import scored_checkpoint_dir
from tuning.tracking.names import TRIAL_ROLE
from tuning.tracking.tracker import LEARNING_RATE, REPORTED_PREFIXES, SearchTracker
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
        row = {k: v for k, v in result.items() if k in ("training_iteration", LEARNING_RATE) or k.startswith(REPORTED_PREFIXES)}
        history = self.histories.setdefault(trial.trial_id, [])
        history[:] = [r for r in history if r["training_iteration"] < row["training_iteration"]] + [row]
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
