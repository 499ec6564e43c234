"""A job's MLflow runs, written from the driver through the outbox: one parent run per job, one
child run per trial (role `trial`) or confirmation run (role `confirmation`).

Runs are found again by tags (`job_name` on the parent, `ray_trial_id` on a child), so a
resumed or replayed job reuses its runs instead of creating new ones. Each epoch is in a run's
history once, from the attempt that went on: a trial that trains again epochs its run already
holds (its driver was restored from a snapshot older than what reached MLflow) gets a new run
holding the epochs before them, and the old run is deleted (`_restart_run`).

What the search's callbacks ask for (a trial's run, metrics, plots, tags) is done in order on one
background thread (`in_background`), so Ray Tune's loop never waits for plotting or for the
server while it could start trials; `drain` waits for it, and the search drains it when it ends.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Mapping

from fracture_models.metrics import best_epoch, confusion_from_counts, run_state
from fracture_models.plots import plot_confusion_matrix, plot_loss_curves
from fracture_models.records import redact_url
from tuning.confirmation import CONFIRMS
from tuning.tracking.connect import configure_client, is_outage
from tuning.tracking.models import CheckpointPolicy
from tuning.tracking.names import (
    AT_BEST_EPOCH,
    CHECKPOINT_SCORE_TAG,
    CONFIRMATION_ROLE,
    GPU_HOURS_METRIC,
    JOB_TAG,
    MODEL_TYPE,
    RESTARTED_AS_TAG,
    RESTARTED_FROM_TAG,
    ROLE_TAG,
    SEARCH_ROLE,
    STATE_TAG,
    STOPPED_EARLY_METRIC,
    STOPPED_EARLY_TAG,
    TRIAL_HOURS_METRIC,
    TRIAL_ROLE,
    TRIAL_TAG,
    TRIALS_METRIC,
    best_metric_name,
    confirm_metric_name,
    experiment_name,
    run_name,
)
from tuning.tracking.outbox import OUTBOX_FILE, RETRY_AFTER_S, Outbox
from tuning.tracking.registry import register_winner
from tuning.tracking.store import store_dir
from tuning.tracking.ui import experiment_tags, runs_table_url

if TYPE_CHECKING:
    from tuning.job import JobSpec

logger = logging.getLogger("tuning.tracking")

PLOTS_DIR = "mlflow"
# Ray's bookkeeping keys are not metrics of the model.
REPORTED_PREFIXES = ("train_", "val_")
LEARNING_RATE = "learning_rate"  # each epoch's scheduled rate (the hyperparameter is `lr`)


class SearchTracker:
    """The job's MLflow runs. Holds strings only, so Ray Tune can pickle it with the experiment."""

    def __init__(self, uri: str, job: JobSpec, work_dir: Path | None) -> None:
        self.uri = uri
        self.job = job
        self.work_dir = work_dir
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = job.mlflow_parent_run_id
        self._client = None
        self._outbox: Outbox | None = None
        self._runs: dict[str, str] = {}  # trial id -> its run; found again by tag after a restore
        self._last_epoch: dict[str, int] = {}  # run id -> the last epoch it holds, as read from MLflow
        self._background: ThreadPoolExecutor | None = None
        self._last_work: Future | None = None

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("job"), dict):  # pickled with an experiment from before JobSpec
            from tuning.job import JobSpec

            state = {**state, "job": JobSpec.from_json(state["job"])}
        self.__dict__.update(state)

    def __getstate__(self) -> dict:
        live = ("_client", "_outbox", "_background", "_last_work")
        # What MLflow holds is read again after a restore: a snapshot's copy may be older than the runs.
        cached = {"_runs": {}, "_last_epoch": {}}
        return {k: v for k, v in self.__dict__.items() if k not in live} | dict.fromkeys(live) | cached

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            configure_client()
            self._client = MlflowClient(self.uri)
        return self._client

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = Outbox(self.work_dir / OUTBOX_FILE if self.work_dir is not None else None)
        return self._outbox

    def files_dir(self, *parts: str) -> Path:
        if self.work_dir is None:
            self.work_dir_tmp = getattr(self, "work_dir_tmp", None) or tempfile.mkdtemp(prefix="fracture-mlflow-")
            base = Path(self.work_dir_tmp)
        else:
            base = self.work_dir / PLOTS_DIR
        folder = base.joinpath(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def reload_outbox(self) -> None:
        """Read pending writes from disk again (another copy of this tracker may have queued some)."""
        if self.work_dir is not None:
            self._outbox = None

    def in_background(self, work: Callable[[], None]) -> None:
        """Run `work` after the work queued before it, on the tracker's one background thread."""
        if getattr(self, "_background", None) is None:  # also a tracker unpickled from an older experiment
            # Not a daemon: work still queued when the driver exits is done first, as a direct write would have been.
            self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-tracking")
        self._last_work = self._background.submit(_logged, work)

    def drain(self) -> None:
        """Wait until the background work queued so far is done."""
        last = getattr(self, "_last_work", None)
        if last is not None:
            last.result()

    def submit(self, op: str, **fields: Any) -> None:
        self.outbox.submit({"op": op, **fields}, self._send)

    def flush(self, *, force: bool = False) -> bool:
        return self.outbox.flush(self._send, force=force)

    def _send(self, op: dict) -> None:
        handler = getattr(self, f"_op_{op['op']}")
        handler(**{k: v for k, v in op.items() if k != "op"})

    # -- the job's runs ---------------------------------------------------------------------
    def _experiment(self) -> str:
        if self.experiment_id is None:
            name = experiment_name(self.job.arch)
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                self._describe_for_the_ui(found.experiment_id, found.tags)
                self.experiment_id = found.experiment_id
            else:
                artifact_location = None
                if self.uri.startswith("sqlite:///"):  # the local store: artifacts beside mlflow.db
                    artifact_location = (Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts" / name).as_uri()
                ui_tags = experiment_tags({}, self.job.metric, int(time.time() * 1000))  # model training, the Trials view
                self.experiment_id = self.client.create_experiment(
                    name, artifact_location=artifact_location, tags={"project": "fracture-tune", **ui_tags}
                )
        return self.experiment_id

    def _describe_for_the_ui(self, experiment_id: str, current: Mapping[str, str]) -> None:
        """Give an experiment made before these tags, or by hand, what the UI needs (tuning.tracking.ui):
        the model-training kind and the `Trials` view with this job's metric. A tag the server refuses
        leaves the experiment as it was; the search goes on."""
        for key, value in experiment_tags(current, self.job.metric, int(time.time() * 1000)).items():
            try:
                self.client.set_experiment_tag(experiment_id, key, value)
            except Exception as exc:  # noqa: BLE001 - an outage is retried by the outbox; a refusal is only reported
                if is_outage(exc):
                    raise
                logger.warning("MLflow refused the experiment tag %s (%s); the UI shows experiment %s without it", key, exc, experiment_id)

    def start(self, *, resume: bool = False) -> str:
        """The job's parent run (found again by its job name on resume); returns its id (sent at once)."""
        from mlflow.entities import RunStatus

        experiment = self._experiment()
        if self.parent_run_id is None and resume:
            found = self.client.search_runs(
                [experiment], filter_string=f"tags.{JOB_TAG} = '{self.job.name}' and tags.{ROLE_TAG} = '{SEARCH_ROLE}'", max_results=1
            )
            if found:
                self.parent_run_id = found[0].info.run_id
        if self.parent_run_id is None:
            run = self.client.create_run(experiment, run_name=self.job.name, tags=self.job.to_mlflow_tags())
            self.parent_run_id = run.info.run_id
            self.client.log_batch(self.parent_run_id, params=_params(self.job.to_mlflow_params()))
        else:
            self.client.update_run(self.parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return self.parent_run_id

    def _run_for(self, trial_id: str, params: Mapping | None = None, role: str = TRIAL_ROLE) -> str:
        """The child run of a trial (role `trial`) or of a confirmation run (role `confirmation`):
        the cached one, one found by tag, or a new one."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = self.client.search_runs(
            [self._experiment()],
            filter_string=f"tags.{TRIAL_TAG} = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
        else:
            tags = {
                "mlflow.parentRunId": self.parent_run_id,
                TRIAL_TAG: trial_id,
                ROLE_TAG: role,
                JOB_TAG: self.job.name,
                "arch": self.job.arch,
                "team": self.job.team,
                "user": self.job.user,
                "data_fingerprint": self.job.data_fingerprint,
                STATE_TAG: "running",
            }
            if role == CONFIRMATION_ROLE and params and params.get(CONFIRMS):
                tags[CONFIRMS] = str(params[CONFIRMS])
            run_id = self.client.create_run(self._experiment(), run_name=run_name(role, trial_id), tags=tags).info.run_id
            fixed = self.job.base_config
            self.client.log_batch(run_id, params=_params({**fixed, **(params or {})}))
        self._runs[trial_id] = run_id
        return run_id

    # -- operations (replayable; fields are JSON) -------------------------------------------
    def _op_trial_start(self, trial_id: str, params: dict, role: str = TRIAL_ROLE) -> None:
        self._run_for(trial_id, params, role)

    def _op_metrics(self, trial_id: str | None, step: int, metrics: dict, timestamp_ms: int) -> None:
        from mlflow.entities import Metric

        run_id = self.parent_run_id if trial_id is None else self._run_for(trial_id)
        batch = [Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[start : start + 500])

    def _op_epoch(self, trial_id: str, step: int, metrics: dict, timestamp_ms: int) -> None:
        """One epoch's metrics in its trial's run. An epoch the run already holds is either this very
        write, sent before a restart and replayed by the outbox (skipped), or an epoch trained again
        from an earlier checkpoint than the run reached: the run restarts from it (`_restart_run`)."""
        if not metrics:
            return
        run_id = self._run_for(trial_id)
        if step <= self._epochs_held(run_id, metrics):
            logged = [m for m in self.client.get_metric_history(run_id, min(metrics)) if m.step == step]
            if any(m.timestamp == timestamp_ms for m in logged):
                return
            run_id = self._restart_run(trial_id, run_id, step)
        self._op_metrics(trial_id, step, metrics, timestamp_ms)
        self._last_epoch[run_id] = step

    def _epochs_held(self, run_id: str, metrics: Mapping) -> int:
        """The last epoch `run_id` holds (0: none), read from MLflow once per run and driver."""
        if run_id not in self._last_epoch:
            history = self.client.get_metric_history(run_id, min(metrics))
            self._last_epoch[run_id] = max((m.step for m in history), default=0)
        return self._last_epoch[run_id]

    def _restart_run(self, trial_id: str, old_run_id: str, step: int) -> str:
        """A new run for a trial that trains `step` again while its run holds that epoch and later ones
        from an attempt that did not go on. The old run's params, tags and epochs before `step` are
        copied into it. The old run (tagged with the new one's id) is deleted, as are the trial's
        logged models: their checkpoints are not the ones the trial goes on from. Returns the new run's id."""
        from mlflow.entities import Metric, Param

        old = self.client.get_run(old_run_id)
        tags = {k: v for k, v in old.data.tags.items() if k != "mlflow.runName"} | {STATE_TAG: "running", RESTARTED_FROM_TAG: old_run_id}
        new_run_id = self.client.create_run(self._experiment(), run_name=old.info.run_name, tags=tags).info.run_id
        self.client.log_batch(new_run_id, params=[Param(k, v) for k, v in old.data.params.items()])
        kept = [
            Metric(m.key, m.value, m.timestamp, m.step)
            for key in old.data.metrics
            if is_epoch_metric(key)
            for m in self.client.get_metric_history(old_run_id, key)
            if m.step < step
        ]
        for start in range(0, len(kept), 500):
            self.client.log_batch(new_run_id, metrics=kept[start : start + 500])
        for model in self._job_models(f"tags.{TRIAL_TAG} = '{trial_id}'"):
            self._delete_model(model)
        self.client.set_tag(old_run_id, RESTARTED_AS_TAG, new_run_id)
        self.client.set_terminated(old_run_id, "KILLED")
        self.client.delete_run(old_run_id)
        logger.info(
            "Trial %s trains epoch %d again: its MLflow run %s goes on as %s from epoch %d", trial_id, step, old_run_id, new_run_id, step
        )
        self._runs[trial_id] = new_run_id
        self._last_epoch[new_run_id] = step - 1
        return new_run_id

    def _op_tags(self, trial_id: str | None, tags: dict) -> None:
        from mlflow.entities import RunTag

        run_id = self.parent_run_id if trial_id is None else self._run_for(trial_id)
        self.client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])  # one request, not one a tag

    def _op_artifact(self, trial_id: str | None, path: str, artifact_path: str | None = None) -> None:
        run_id = self.parent_run_id if trial_id is None else self._run_for(trial_id)
        if Path(path).is_dir():
            self.client.log_artifacts(run_id, path, artifact_path)
        else:
            self.client.log_artifact(run_id, path, artifact_path)

    def _op_end(self, trial_id: str | None, status: str) -> None:
        run_id = self.parent_run_id if trial_id is None else self._run_for(trial_id)
        self.client.set_terminated(run_id, status)

    def _op_trial_model(self, trial_id: str, model_dir: str, step: int, metrics: dict, params: dict, tags: dict, timestamp_ms: int) -> None:
        """A run's best checkpoint as its MLflow 3 logged model, linked to the run (an output at the
        best epoch) and to that epoch's metrics. Replayable: a model already READY is not sent again,
        one left PENDING by an outage is completed."""
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        from tuning.tracking.models import set_model_id

        run_id = self._run_for(trial_id)
        mine = self._job_models(f"tags.{TRIAL_TAG} = '{trial_id}'")
        ready = [m for m in mine if m.status == LoggedModelStatus.READY]
        staged = Path(model_dir)
        if not ready and self._policy().keep == "top" and not self._makes_top(float(tags[CHECKPOINT_SCORE_TAG])):
            logger.info("Trial %s: its model is not among the job's %d best; not sent to MLflow", trial_id, self._policy().top)
        elif not ready:
            if not staged.is_dir():
                logger.warning("Trial %s: its staged model %s is gone; not sent to MLflow", trial_id, staged)
                return
            pending = [m for m in mine if m.status == LoggedModelStatus.PENDING]
            if pending:
                model = pending[0]
            else:
                model = self.client.create_logged_model(
                    self._experiment(), name=tags["run_name"], source_run_id=run_id, tags=tags, params=params, model_type=MODEL_TYPE
                )
                self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
            self.client.log_batch(run_id, metrics=self._linked_metrics(run_id, model.model_id, step, metrics, timestamp_ms))
            set_model_id(staged, model.model_id, run_id)
            self.client.log_model_artifacts(model.model_id, str(staged))
            self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        shutil.rmtree(staged, ignore_errors=True)  # sent or not wanted: the trial's folder keeps its checkpoint
        if self._policy().keep == "top":
            self._keep_top()

    def _linked_metrics(self, run_id: str, model_id: str, step: int, metrics: Mapping, timestamp_ms: int) -> list:
        """The run's metrics at `step`, again with the model's id, as `mlflow.<flavour>.log_model(step=...)`
        links them: same timestamp and value, so the run's history gains no second point."""
        from mlflow.entities import Metric

        linked = []
        for key, value in metrics.items():
            logged = [m for m in self.client.get_metric_history(run_id, key) if m.step == step]
            timestamp, value = (logged[-1].timestamp, logged[-1].value) if logged else (timestamp_ms, float(value))
            linked.append(Metric(key, value, timestamp, step, model_id=model_id, run_id=run_id))
        return linked

    def _policy(self) -> CheckpointPolicy:
        return CheckpointPolicy.parse(getattr(self.job, "mlflow_checkpoints", "all"))  # "all" for jobs from before the flag

    def _job_models(self, extra_filter: str | None = None) -> list:
        """The job's logged models (of trial and confirmation runs), every page."""
        filter_string = f"tags.{JOB_TAG} = '{self.job.name}'" + (f" AND {extra_filter}" if extra_filter else "")
        found, token = [], None
        while True:
            page = self.client.search_logged_models([self._experiment()], filter_string=filter_string, page_token=token)
            found += list(page)
            token = page.token
            if not token:
                return found

    def _ranked_models(self) -> list:
        """The job's READY logged models, best checkpoint score first."""
        from mlflow.entities import LoggedModelStatus

        ready = [m for m in self._job_models() if m.status == LoggedModelStatus.READY]
        sign = -1 if self.job.mode == "max" else 1
        return sorted(ready, key=lambda m: sign * float(m.tags[CHECKPOINT_SCORE_TAG]))

    def _makes_top(self, score: float) -> bool:
        from fracture_models.metrics import is_better

        ranked = self._ranked_models()
        return len(ranked) < self._policy().top or is_better(
            score, float(ranked[self._policy().top - 1].tags[CHECKPOINT_SCORE_TAG]), self.job.mode
        )

    def _keep_top(self) -> None:
        """Remove the logged models beyond the job's K best."""
        for model in self._ranked_models()[self._policy().top :]:
            self._delete_model(model)
            logger.info("Removed the logged model of %s: no longer among the job's %d best", model.name, self._policy().top)

    def _delete_model(self, model) -> None:
        """A logged model's artifacts, then the model."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        get_artifact_repository(model.artifact_location, tracking_uri=self.uri).delete_artifacts()
        self.client.delete_logged_model(model.model_id)

    def _op_register(self, model_dir: str, description: dict) -> None:
        self._register(model_dir, description)

    def _op_lost(self, trial_id: str) -> None:
        found = self.client.search_runs(
            [self._experiment()],
            filter_string=f"tags.{TRIAL_TAG} = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=1,
        )
        if found:  # a lost trial that never reached the callback has no run to close
            self.client.set_tag(found[0].info.run_id, STATE_TAG, "lost with the driver")
            self.client.set_terminated(found[0].info.run_id, "KILLED")

    # -- what the search calls ----------------------------------------------------------------
    def trial_started(self, trial_id: str, params: Mapping, role: str = TRIAL_ROLE) -> None:
        self.submit("trial_start", trial_id=trial_id, params=dict(params), role=role)

    def trial_result(self, trial_id: str, result: Mapping) -> None:
        metrics = {k: v for k, v in result.items() if is_epoch_metric(k) and _is_number(v)}
        self.submit(
            "epoch", trial_id=trial_id, step=int(result["training_iteration"]), metrics=metrics, timestamp_ms=int(time.time() * 1000)
        )

    def trial_placed(self, trial_id: str, placement: Mapping[str, str]) -> None:
        """Tag a trial's run with where it runs (node, host, GPU ids): again if a retry moved it."""
        self.submit("tags", trial_id=trial_id, tags=dict(placement))

    def trial_ended(
        self,
        trial_id: str,
        history: list[dict],
        *,
        failed: bool,
        checkpoint: Callable[[], ContextManager[Path | None]] | None = None,
        params: Mapping | None = None,
        role: str = TRIAL_ROLE,
    ) -> None:
        """Final state, best epoch's confusion matrix and the loss curves of one trial; with
        `checkpoint` (a context giving its best checkpoint's file), that checkpoint as the run's logged model."""
        metric, mode, max_epochs = self.job.metric, self.job.mode, self.job.epochs
        epochs = max((row["training_iteration"] for row in history), default=0)
        state = run_state(epochs, max_epochs, failed=failed)
        tags = {STATE_TAG: state, STOPPED_EARLY_TAG: str(state == "stopped early").lower(), "epochs_trained": epochs}
        best = best_epoch(history, metric, mode)
        if best is not None:
            tags["best_epoch"] = best["training_iteration"]
            self.submit(
                "metrics",
                trial_id=trial_id,
                step=int(best["training_iteration"]),
                # The selection metric and, for the runs table's Trials view, sensitivity and specificity at that epoch.
                metrics={best_metric_name(m): float(best[m]) for m in (metric, *AT_BEST_EPOCH) if m == metric or _is_number(best.get(m))},
                timestamp_ms=int(time.time() * 1000),
            )
            folder = self.files_dir(f"trial_{trial_id}")
            rows = [{"epoch": r["training_iteration"], "train_loss": r["train_loss"], "val_loss": r["val_loss"]} for r in history]
            plots = [
                plot_confusion_matrix(
                    confusion_from_counts(best, prefix="val_"),
                    folder / "confusion_matrix.png",
                    title=f"trial {trial_id}: validation, epoch {best['training_iteration']}",
                ),
                plot_loss_curves(rows, folder / "loss_curves.png", title=f"trial {trial_id}: loss"),
            ]
            for plot in plots:
                if plot is not None:  # a plot that could not be written is a warning, not a lost trial record
                    self.submit("artifact", trial_id=trial_id, path=str(plot), artifact_path="plots")
            if checkpoint is not None and self._policy().per_trial:
                with checkpoint() as checkpoint_file:
                    self.trial_model(trial_id, checkpoint_file, params or {}, role)
        self.submit("tags", trial_id=trial_id, tags=tags)
        self.submit("end", trial_id=trial_id, status="FAILED" if failed else "FINISHED")

    def trial_model(self, trial_id: str, checkpoint_file: Path | None, params: Mapping, role: str = TRIAL_ROLE) -> None:
        """Stage a run's best checkpoint as an MLflow model (weights only, no optimiser state) in the
        experiment folder and queue it as the run's logged model: an outage delays it, loses nothing."""
        from fracture_models.engine import load_checkpoint
        from fracture_models.metrics import selection_score
        from fracture_models.predict import model_file
        from tuning.tracking.models import save_fracture_model

        if checkpoint_file is None or not Path(checkpoint_file).is_file():
            logger.warning("Trial %s kept no checkpoint file (%s); no model of it goes to MLflow", trial_id, checkpoint_file)
            return
        model = model_file(load_checkpoint(checkpoint_file))
        metrics = {k: float(v) for k, v in model["metrics"].items() if k.startswith(REPORTED_PREFIXES) and _is_number(v)}
        score = selection_score(metrics, self.job.metric, self.job.mode, prefix="val_")
        folder = save_fracture_model(model, self.files_dir(f"trial_{trial_id}") / "model")
        tags = {
            JOB_TAG: self.job.name,
            TRIAL_TAG: trial_id,
            ROLE_TAG: role,
            "run_name": run_name(role, trial_id),
            "arch": self.job.arch,
            "data_fingerprint": self.job.data_fingerprint,
            "metric": self.job.metric,
            "best_epoch": str(model["epoch"]),
            CHECKPOINT_SCORE_TAG: repr(score),
        }
        self.submit(
            "trial_model",
            trial_id=trial_id,
            model_dir=str(folder),
            step=int(model["epoch"]),
            metrics=metrics,
            params={k: str(v) for k, v in params.items()},
            tags=tags,
            timestamp_ms=int(time.time() * 1000),
        )

    def job_finished(
        self, summary: dict, report_files: Iterable[Path], model_dir: Path | None, winner_checkpoint: Path | None = None
    ) -> None:
        test = {f"test_{k}": v for k, v in summary["test"].items() if _is_number(v)}
        if summary.get("clinical"):
            from fracture_models.clinical import clinical_scalars

            test.update({f"test_{k}": v for k, v in clinical_scalars(summary["clinical"]).items() if _is_number(v)})
        test.update(
            {
                TRIAL_HOURS_METRIC: summary["trial_hours"],
                GPU_HOURS_METRIC: summary["gpu_hours"],
                TRIALS_METRIC: summary["num_trials"],
                STOPPED_EARLY_METRIC: summary["trials_stopped_early"],
                "epochs_trained": summary["epochs_trained"],
                best_metric_name(summary["metric"]): summary["best_trial"]["best_value"],
            }
        )
        test.update(confirmation_metrics(summary.get("confirmation")))
        self.submit("metrics", trial_id=None, step=0, metrics=test, timestamp_ms=int(time.time() * 1000))
        best, tested = summary["best_trial"], summary.get("tested_trial") or summary["best_trial"]
        if winner_checkpoint is not None and not self._policy().per_trial:  # --mlflow-checkpoints winner
            searched = any(row["trial_id"] == tested["trial_id"] for row in summary["trials"])
            params = {name: tested.get(name) for name in summary["baseline"]}
            self.trial_model(tested["trial_id"], winner_checkpoint, params, TRIAL_ROLE if searched else CONFIRMATION_ROLE)
        tags = {"best_trial": best["trial_id"], "epochs_budget": summary["epochs_budget"], "image_size": self.job.image_size}
        if summary.get("confirmation"):
            tags.update(confirm_winner=summary["confirmation"]["winner"], confirm_verdict=summary["confirmation"]["verdict"])
        self.submit("tags", trial_id=None, tags=tags)
        for path in report_files:
            self.submit("artifact", trial_id=None, path=str(path), artifact_path="report")
        if model_dir is not None:
            self.submit(
                "register",
                model_dir=str(model_dir),
                description={
                    "metric": summary["metric"],
                    "mode": summary["mode"],
                    "value": tested["best_value"],
                    "data_fingerprint": self.job.data_fingerprint,
                    "trial_id": tested["trial_id"],
                    "job_name": self.job.name,
                    "team": self.job.team,
                    "test_accuracy": summary["test"]["accuracy"],
                    "test_fracture_f1": summary["test"]["fracture_f1"],
                },
            )
        self.submit("end", trial_id=None, status="FINISHED")

    def trial_lost(self, trial_id: str) -> None:
        """Close the run of a trial that died with its driver before Ray Tune saved it."""
        self.submit("lost", trial_id=trial_id)

    def job_interrupted(self) -> None:
        self.submit("end", trial_id=None, status="KILLED")

    def job_failed(self) -> None:
        """The driver stopped on an error: the parent run is FAILED, never left RUNNING (--resume reopens it)."""
        self.submit("end", trial_id=None, status="FAILED")

    # -- the model registry --------------------------------------------------------------------
    def _register(self, model_dir: str, description: dict) -> None:
        register_winner(self.client, self.job.arch, self.parent_run_id, model_dir, description)

    def close(self) -> None:
        """Remove the temporary folder of a job without a local experiment folder, once nothing waits to be sent."""
        tmp = getattr(self, "work_dir_tmp", None)
        if tmp and not self.outbox.pending:
            shutil.rmtree(tmp, ignore_errors=True)
            self.work_dir_tmp = None


def tracking_note(tracker: SearchTracker, wait_s: float = 30.0) -> str:
    """Send what is pending (waiting up to `wait_s` for the server) and say where the runs are."""
    deadline = time.monotonic() + wait_s
    while not tracker.flush(force=True) and time.monotonic() < deadline:
        time.sleep(RETRY_AFTER_S)
    name = experiment_name(tracker.job.arch)
    if tracker.outbox.pending:
        return (
            f"MLflow: {len(tracker.outbox.pending)} writes could not be sent yet; they are kept in "
            f"{tracker.outbox.path or 'memory (remote storage: lost at exit)'}. "
            f"Send them when the server is back: python -m tuning.tracking {tracker.work_dir}"
        )
    if tracker.uri.startswith("sqlite:///"):
        default = Path(tracker.uri.removeprefix("sqlite:///")).parent == store_dir()
        browse = "python -m mlflow_server" + ("" if default else f" --store {Path(tracker.uri.removeprefix('sqlite:///')).parent}")
        where = f"browse: {browse}, then open {runs_table_url('http://127.0.0.1:5000', tracker.experiment_id)}"
    elif tracker.uri.startswith(("http://", "https://")):
        where = f"browse: {runs_table_url(redact_url(tracker.uri), tracker.experiment_id)}"
    else:
        where = f"browse: {redact_url(tracker.uri)}"
    return f"MLflow: experiment {name}, parent run {tracker.job.name} ({tracker.parent_run_id}); {where}"


def confirmation_metrics(confirmation: Mapping | None) -> dict[str, float]:
    """The parent run's `confirm_*` metrics: the winner's and the baseline's mean and sd over
    seeds, and the paired difference with its 95% interval, where they exist."""
    if not confirmation:
        return {}
    out: dict[str, float] = {"confirm_extra_epochs": confirmation["extra_epochs"], "confirm_extra_fraction": confirmation["extra_fraction"]}
    for c in confirmation["configurations"]:
        for name, wanted in (("winner", c["trial_id"] == confirmation["winner"]), ("baseline", c["is_baseline"])):
            if wanted:
                out.update(
                    {
                        confirm_metric_name(name, "mean"): c["mean"],
                        confirm_metric_name(name, "sd"): c["sd"],
                        confirm_metric_name(name, "runs"): c["n"],
                    }
                )
    difference = confirmation.get("difference_vs_baseline")
    if difference:
        out.update(
            confirm_difference=difference["mean"],
            confirm_difference_ci_low=difference["ci95"][0],
            confirm_difference_ci_high=difference["ci95"][1],
        )
    return {k: float(v) for k, v in out.items() if _is_number(v)}


def _logged(work: Callable[[], None]) -> None:
    """Background work that fails (a bug: the outbox keeps outages) is logged with its traceback, and the search goes on."""
    try:
        work()
    except Exception:  # noqa: BLE001 - reported, not raised into a thread nobody joins for its result
        logger.exception("MLflow tracking of a trial failed")


def is_epoch_metric(key: str) -> bool:
    """A metric a trial reports each epoch (its run's history), not Ray's bookkeeping."""
    return key.startswith(REPORTED_PREFIXES) or key == LEARNING_RATE


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _params(values: Mapping) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in values.items()]
