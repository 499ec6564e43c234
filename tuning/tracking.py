"""MLflow tracking of a search, done on the driver: one parent run per job, one child run per trial.

Trials may run on any Ray node; only the driver talks to MLflow, so workers need no tracking
URI, credentials or network route to the server. Every write goes through an ordered outbox:
when the server is unreachable, the writes wait in `<experiment>/mlflow_outbox.jsonl` (training
goes on) and are sent, in order, as soon as it answers again, at the latest when the job ends.
Whatever is still pending then is sent by `python -m tuning.tracking <experiment folder>`.

Runs are found again by tags (`job_name` on the parent, `ray_trial_id` on a child), so a
resumed or replayed job reuses its runs instead of creating new ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ray import tune

from fracture_models.errors import UserError
from fracture_models.metrics import confusion_from_counts, selection_score
from fracture_models.plots import plot_confusion_matrix, plot_loss_curves
from fracture_models.records import REDACTED, redact_url
from tuning.confirmation import CONFIRMS

logger = logging.getLogger("tuning.tracking")

OUTBOX_FILE = "mlflow_outbox.jsonl"
PLOTS_DIR = "mlflow"
CHAMPION = "champion"
TRIAL_TAG = "ray_trial_id"
JOB_TAG = "job_name"
RETRY_AFTER_S = 5.0
# Ray's bookkeeping keys are not metrics of the model.
_REPORTED_PREFIXES = ("train_", "val_")
CONFIRMATION_ROLE = "confirmation"


def experiment_name(arch: str) -> str:
    """One MLflow experiment per architecture."""
    return f"fracture-{arch}"


def registered_model_name(arch: str) -> str:
    return f"fracture-{arch}"


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the local store `python -m mlflow_server` serves."""
    from mlflow_server.store import backend_uri, store_dir

    return uri or os.environ.get("MLFLOW_TRACKING_URI") or backend_uri(store_dir())


def _configure_client() -> None:
    # The driver must not stall for minutes on a dead server: fail fast, the outbox retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # the end of the job prints where runs are


_AUTH_REFUSED = re.compile(r"(error code|status code|Response code)\D{0,5}40[13]\b|Unauthorized|Permission denied", re.I)


def check_reachable(uri: str) -> None:
    """Fail before any training when the tracking server does not answer or refuses us."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    _configure_client()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as exc:
        if _AUTH_REFUSED.search(str(exc)) or exc.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            raise UserError(
                f"The MLflow server at {redact_url(uri)} refused these credentials: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to an account that may write."
            ) from exc
        raise UserError(_unreachable(uri, exc)) from exc
    except Exception as exc:  # noqa: BLE001 - connection errors of any HTTP or DB driver
        raise UserError(_unreachable(uri, exc)) from exc


def _unreachable(uri: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return (
        f"Cannot reach the MLflow tracking store at {redact_url(uri)} ({first}). Start it with `python -m mlflow_server`, "
        "fix --tracking-uri / $MLFLOW_TRACKING_URI, or drop both to log to the local store. Nothing was trained."
    )


def _is_outage(exc: Exception) -> bool:
    """True for errors that mean 'try again later' (no route, refused, timeout, server error)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or "API request to" in str(exc) or "Max retries exceeded" in str(exc)
    return False


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ("fracture-tune", "torch", "torchvision", "ray", "optuna", "mlflow", "numpy")
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = sys.version.split()[0]
    return out


class Outbox:
    """Ordered MLflow writes; what cannot be sent now is kept (on disk when a path is given) and sent later."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.pending: list[dict] = []
        if path is not None and path.exists():
            self.pending = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        self._retry_at = 0.0

    def _save(self) -> None:
        if self.path is None:
            return
        if not self.pending:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(op) + "\n" for op in self.pending))
        os.replace(tmp, self.path)

    def submit(self, op: dict, send: Callable[[dict], None]) -> None:
        self.pending.append(op)
        self.flush(send)

    def flush(self, send: Callable[[dict], None], *, force: bool = False) -> bool:
        """Send pending writes in order until one fails for an outage; True when none is left."""
        if not self.pending:
            return True
        if not force and time.monotonic() < self._retry_at:
            self._save()
            return False
        while self.pending:
            op = self.pending[0]
            try:
                send(op)
            except Exception as exc:  # noqa: BLE001 - sorted below
                if _is_outage(exc):
                    if self._retry_at == 0.0 or force:
                        logger.warning("MLflow unreachable (%s); %d writes kept in %s and retried", type(exc).__name__, len(self.pending), self.path or "memory")
                    self._retry_at = time.monotonic() + RETRY_AFTER_S
                    self._save()
                    return False
                logger.warning("MLflow refused %s (%s); skipped", op.get("op"), exc)
            self.pending.pop(0)
        if self._retry_at:
            logger.info("MLflow reachable again; pending writes sent")
        self._retry_at = 0.0
        self._save()
        return True


class SearchTracker:
    """The job's MLflow runs. Holds strings only, so Ray Tune can pickle it with the experiment."""

    def __init__(self, uri: str, job: Mapping, work_dir: Path | None) -> None:
        self.uri = uri
        self.job = dict(job)
        self.work_dir = work_dir
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = job.get("mlflow_parent_run_id")
        self._client = None
        self._outbox: Outbox | None = None
        self._runs: dict[str, str] = {}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_outbox")} | {"_client": None, "_outbox": None}

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            _configure_client()
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
            name = experiment_name(self.job["arch"])
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                self.experiment_id = found.experiment_id
            else:
                artifact_location = None
                if self.uri.startswith("sqlite:///"):  # the local store: artifacts beside mlflow.db
                    artifact_location = (Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts" / name).as_uri()
                self.experiment_id = self.client.create_experiment(name, artifact_location=artifact_location, tags={"project": "fracture-tune"})
        return self.experiment_id

    def start(self, *, resume: bool = False) -> str:
        """The job's parent run (found again by its job name on resume); returns its id (sent at once)."""
        from mlflow.entities import RunStatus

        experiment = self._experiment()
        if self.parent_run_id is None and resume:
            found = self.client.search_runs(
                [experiment], filter_string=f"tags.{JOB_TAG} = '{self.job['name']}' and tags.role = 'search'", max_results=1
            )
            if found:
                self.parent_run_id = found[0].info.run_id
        if self.parent_run_id is None:
            run = self.client.create_run(experiment, run_name=self.job["name"], tags=self._parent_tags())
            self.parent_run_id = run.info.run_id
            self.client.log_batch(self.parent_run_id, params=_params(self._parent_params()))
        else:
            self.client.update_run(self.parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return self.parent_run_id

    def _parent_tags(self) -> dict[str, str]:
        job = self.job
        return {
            "role": "search",
            JOB_TAG: job["name"],
            "generated_data": str(bool(job.get("generated_data"))).lower(),
            "arch": job["arch"],
            "team": job["team"],
            "user": job["user"],
            "metric": job["metric"],
            "mode": job["mode"],
            "data_fingerprint": job["data_fingerprint"],
            "image_size": str(job["image_size"]),
            "sampler": job.get("sampler", "tpe"),
            "scheduler": json.dumps(job["scheduler"]),
            "search_space": json.dumps(job["search_space"]),
            "baseline": json.dumps(job["baseline"]),
            "git_commit": job.get("git_commit", "unknown"),
            "package_versions": json.dumps(job.get("package_versions", {})),
            **{f"audit_{k}": json.dumps(v) if isinstance(v, list) else str(v) for k, v in job.get("audit", {}).items()},
            "mlflow.note.content": (
                f"Search of {job['num_samples']} trials of {job['arch']} around the study's baseline; "
                f"selection on {job['metric']} (validation); the winner is tested once."
            ),
        }

    def _parent_params(self) -> dict:
        keys = ("arch", "num_samples", "epochs", "image_size", "batch_size", "weights", "seed", "metric", "sampler")
        params = {k: self.job.get(k) for k in keys}
        params.update({f"scheduler_{k}": v for k, v in self.job["scheduler"].items()})
        return params

    def _run_for(self, trial_id: str, params: Mapping | None = None, role: str = "trial") -> str:
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
                "mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial_id, "role": role, JOB_TAG: self.job["name"],
                "arch": self.job["arch"], "team": self.job["team"], "user": self.job["user"],
                "data_fingerprint": self.job["data_fingerprint"], "state": "running",
            }
            if role == CONFIRMATION_ROLE and params and params.get(CONFIRMS):
                tags[CONFIRMS] = str(params[CONFIRMS])
            run_name = f"{'confirm' if role == CONFIRMATION_ROLE else 'trial'}_{trial_id}"
            run_id = self.client.create_run(self._experiment(), run_name=run_name, tags=tags).info.run_id
            fixed = {k: self.job[k] for k in ("arch", "epochs", "image_size", "batch_size", "weights", "seed")}
            self.client.log_batch(run_id, params=_params({**fixed, **(params or {})}))
        self._runs[trial_id] = run_id
        return run_id

    # -- operations (replayable; fields are JSON) -------------------------------------------
    def _op_trial_start(self, trial_id: str, params: dict, role: str = "trial") -> None:
        self._run_for(trial_id, params, role)

    def _op_metrics(self, trial_id: str | None, step: int, metrics: dict, timestamp_ms: int) -> None:
        from mlflow.entities import Metric

        run_id = self.parent_run_id if trial_id is None else self._run_for(trial_id)
        batch = [Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[start:start + 500])

    def _op_tags(self, trial_id: str | None, tags: dict) -> None:
        run_id = self.parent_run_id if trial_id is None else self._run_for(trial_id)
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def _op_artifact(self, trial_id: str | None, path: str, artifact_path: str | None = None) -> None:
        run_id = self.parent_run_id if trial_id is None else self._run_for(trial_id)
        if Path(path).is_dir():
            self.client.log_artifacts(run_id, path, artifact_path)
        else:
            self.client.log_artifact(run_id, path, artifact_path)

    def _op_end(self, trial_id: str | None, status: str) -> None:
        run_id = self.parent_run_id if trial_id is None else self._run_for(trial_id)
        self.client.set_terminated(run_id, status)

    def _op_register(self, model_dir: str, description: dict) -> None:
        self._register(model_dir, description)

    def _op_lost(self, trial_id: str) -> None:
        found = self.client.search_runs(
            [self._experiment()],
            filter_string=f"tags.{TRIAL_TAG} = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=1,
        )
        if found:  # a lost trial that never reached the callback has no run to close
            self.client.set_tag(found[0].info.run_id, "state", "lost with the driver")
            self.client.set_terminated(found[0].info.run_id, "KILLED")

    # -- what the search calls ----------------------------------------------------------------
    def trial_started(self, trial_id: str, params: Mapping, role: str = "trial") -> None:
        self.submit("trial_start", trial_id=trial_id, params=dict(params), role=role)

    def trial_result(self, trial_id: str, result: Mapping) -> None:
        metrics = {("learning_rate" if k == "lr" else k): v for k, v in result.items()
                   if (k.startswith(_REPORTED_PREFIXES) or k == "lr") and _is_number(v)}
        self.submit("metrics", trial_id=trial_id, step=int(result["training_iteration"]), metrics=metrics,
                    timestamp_ms=int(time.time() * 1000))

    def trial_ended(self, trial_id: str, history: list[dict], *, failed: bool) -> None:
        """Final state, best epoch's confusion matrix and the loss curves of one trial."""
        metric, mode, max_epochs = self.job["metric"], self.job["mode"], self.job["epochs"]
        epochs = max((row["training_iteration"] for row in history), default=0)
        state = "failed" if failed else ("stopped early" if epochs < max_epochs else "completed")
        tags = {"state": state, "stopped_early": str(state == "stopped early").lower(), "epochs_trained": epochs}
        if history:
            best = (max if mode == "max" else min)(history, key=lambda row: selection_score(row, metric, mode, prefix="val_"))
            tags["best_epoch"] = best["training_iteration"]
            self.submit("metrics", trial_id=trial_id, step=int(best["training_iteration"]),
                        metrics={f"best_{metric}": float(best[metric])}, timestamp_ms=int(time.time() * 1000))
            folder = self.files_dir(f"trial_{trial_id}")
            plot_confusion_matrix(
                confusion_from_counts(best, prefix="val_"), folder / "confusion_matrix.png",
                title=f"trial {trial_id}: validation, epoch {best['training_iteration']}",
            )
            rows = [{"epoch": r["training_iteration"], "train_loss": r["train_loss"], "val_loss": r["val_loss"]} for r in history]
            plot_loss_curves(rows, folder / "loss_curves.png", title=f"trial {trial_id}: loss")
            self.submit("artifact", trial_id=trial_id, path=str(folder / "confusion_matrix.png"), artifact_path="plots")
            self.submit("artifact", trial_id=trial_id, path=str(folder / "loss_curves.png"), artifact_path="plots")
        self.submit("tags", trial_id=trial_id, tags=tags)
        self.submit("end", trial_id=trial_id, status="FAILED" if failed else "FINISHED")

    def job_finished(self, summary: dict, report_files: Iterable[Path], model_dir: Path | None) -> None:
        test = {f"test_{k}": v for k, v in summary["test"].items() if _is_number(v)}
        if summary.get("clinical"):
            from fracture_models.clinical import clinical_scalars

            test.update({f"test_{k}": v for k, v in clinical_scalars(summary["clinical"]).items() if _is_number(v)})
        test.update(trial_hours=summary["trial_hours"], gpu_hours=summary["gpu_hours"], trials=summary["num_trials"],
                    trials_stopped_early=summary["trials_stopped_early"], epochs_trained=summary["epochs_trained"],
                    **{f"best_{summary['metric']}": summary["best_trial"]["best_value"]})
        test.update(confirmation_metrics(summary.get("confirmation")))
        self.submit("metrics", trial_id=None, step=0, metrics=test, timestamp_ms=int(time.time() * 1000))
        best, tested = summary["best_trial"], summary.get("tested_trial") or summary["best_trial"]
        tags = {"best_trial": best["trial_id"], "epochs_budget": summary["epochs_budget"], "image_size": self.job["image_size"]}
        if summary.get("confirmation"):
            tags.update(confirm_winner=summary["confirmation"]["winner"], confirm_verdict=summary["confirmation"]["verdict"])
        self.submit("tags", trial_id=None, tags=tags)
        for path in report_files:
            self.submit("artifact", trial_id=None, path=str(path), artifact_path="report")
        if model_dir is not None:
            self.submit("register", model_dir=str(model_dir), description={
                "metric": summary["metric"], "mode": summary["mode"], "value": tested["best_value"],
                "data_fingerprint": self.job["data_fingerprint"], "trial_id": tested["trial_id"], "job_name": self.job["name"],
                "team": self.job["team"], "test_accuracy": summary["test"]["accuracy"],
                "test_fracture_f1": summary["test"]["fracture_f1"],
            })
        self.submit("end", trial_id=None, status="FINISHED")

    def trial_lost(self, trial_id: str) -> None:
        """Close the run of a trial that died with its driver before Ray Tune saved it."""
        self.submit("lost", trial_id=trial_id)

    def job_interrupted(self) -> None:
        self.submit("end", trial_id=None, status="KILLED")

    # -- the model registry --------------------------------------------------------------------
    def _register(self, model_dir: str, description: dict) -> None:
        """Log the winner as an MLflow PyTorch model, register a version, move `champion` if it is better."""
        from mlflow.exceptions import MlflowException

        client, name = self.client, registered_model_name(self.job["arch"])
        artifact_uri = client.get_run(self.parent_run_id).info.artifact_uri
        existing = client.search_model_versions(f"name = '{name}' and run_id = '{self.parent_run_id}'")
        if existing:
            return  # registered before an outage cut the answer short, or by an earlier replay
        client.log_artifacts(self.parent_run_id, model_dir, "model")
        try:
            client.create_registered_model(name, description=f"fracture-tune {self.job['arch']}: winners of searches, champion = best validation")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        tags = {k: str(v) for k, v in description.items()}
        version = client.create_model_version(name, source=f"{artifact_uri}/model", run_id=self.parent_run_id, tags=tags)
        decision = champion_decision(client, name, description)
        client.set_model_version_tag(name, version.version, "champion_decision", decision)
        if decision.startswith("promoted"):
            client.set_registered_model_alias(name, CHAMPION, version.version)
        client.set_tag(self.parent_run_id, "registered_model_version", f"{name}/{version.version}")
        client.set_tag(self.parent_run_id, "champion_decision", decision)
        logger.info("Registered %s version %s: %s", name, version.version, decision)


def tracking_note(tracker: SearchTracker, wait_s: float = 30.0) -> str:
    """Send what is pending (waiting up to `wait_s` for the server) and say where the runs are."""
    deadline = time.monotonic() + wait_s
    while not tracker.flush(force=True) and time.monotonic() < deadline:
        time.sleep(RETRY_AFTER_S)
    name = experiment_name(tracker.job["arch"])
    if tracker.outbox.pending:
        return (
            f"MLflow: {len(tracker.outbox.pending)} writes could not be sent yet; they are kept in "
            f"{tracker.outbox.path or 'memory (remote storage: lost at exit)'}. "
            f"Send them when the server is back: python -m tuning.tracking {tracker.work_dir}"
        )
    if tracker.uri.startswith("sqlite:///"):
        from mlflow_server.store import store_dir

        default = Path(tracker.uri.removeprefix("sqlite:///")).parent == store_dir()
        browse = "python -m mlflow_server" + ("" if default else f" --store {Path(tracker.uri.removeprefix('sqlite:///')).parent}")
        where = f"browse: {browse}, then open http://127.0.0.1:5000"
    else:
        where = f"browse: {redact_url(tracker.uri)}"
    return f"MLflow: experiment {name}, parent run {tracker.job['name']} ({tracker.parent_run_id}); {where}"


def champion_decision(client, name: str, candidate: Mapping) -> str:
    """'promoted ...' when `candidate` beats the champion on the same data and metric, else why not."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return "promoted: no champion yet"
    tags = current.tags
    if tags.get("data_fingerprint") != candidate["data_fingerprint"]:
        return f"kept version {current.version}: it was selected on other data (fingerprint {tags.get('data_fingerprint')})"
    if tags.get("metric") != candidate["metric"]:
        return f"kept version {current.version}: it was selected on {tags.get('metric')}, not {candidate['metric']}"
    if "value" not in tags:
        return f"kept version {current.version}: it has no validation value to compare (set by hand?); move the alias by hand"
    old, new = float(tags["value"]), float(candidate["value"])
    better = new > old if candidate["mode"] == "max" else new < old
    if better:
        return f"promoted: {candidate['metric']} {new:.4f} beats version {current.version}'s {old:.4f}"
    return f"kept version {current.version}: its {candidate['metric']} {old:.4f} is not beaten by {new:.4f}"


def save_winner_model(checkpoint_dir: Path, out_dir: Path) -> Path:
    """The winner's checkpoint as an MLflow PyTorch model folder (MLmodel, weights, signature)."""
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from fracture_models.engine import load_checkpoint
    from fracture_models.models import create_model
    from tuning.trainable import CHECKPOINT_FILE

    checkpoint = load_checkpoint(checkpoint_dir / CHECKPOINT_FILE)
    config = checkpoint["config"]
    model = create_model(config["arch"], weights="none", image_size=config["image_size"])
    model.load_state_dict(checkpoint["model"])
    model.eval()
    # Saved as torch.export's pt2 (no pickle to load); a batch of 2 keeps the batch size dynamic.
    # Requirements are stated: inferring them loads the model in a subprocess (10 s on 2 cores).
    example = np.zeros((2, 3, config["image_size"], config["image_size"]), dtype=np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    mlflow.pytorch.save_model(
        model, str(out_dir), signature=infer_signature(example, output), input_example=example, serialization_format="pt2",
        pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
    )
    return out_dir


def confirmation_metrics(confirmation: Mapping | None) -> dict[str, float]:
    """The parent run's `confirm_*` metrics: the winner's and the baseline's mean and sd over
    seeds, and the paired difference with its 95% interval, where they exist."""
    if not confirmation:
        return {}
    out: dict[str, float] = {"confirm_extra_epochs": confirmation["extra_epochs"], "confirm_extra_fraction": confirmation["extra_fraction"]}
    for c in confirmation["configurations"]:
        for name, wanted in (("winner", c["trial_id"] == confirmation["winner"]), ("baseline", c["is_baseline"])):
            if wanted:
                out.update({f"confirm_{name}_mean": c["mean"], f"confirm_{name}_sd": c["sd"], f"confirm_{name}_runs": c["n"]})
    difference = confirmation.get("difference_vs_baseline")
    if difference:
        out.update(confirm_difference=difference["mean"], confirm_difference_ci_low=difference["ci95"][0], confirm_difference_ci_high=difference["ci95"][1])
    return {k: float(v) for k, v in out.items() if _is_number(v)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _params(values: Mapping) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in values.items()]


class MlflowLoggingCallback(tune.Callback):
    """Ray Tune events -> the job's MLflow runs, on the driver."""

    def __init__(self, tracker: SearchTracker, hyperparameters: Iterable[str], role: str = "trial") -> None:
        self.tracker = tracker
        self.hyperparameters = list(hyperparameters)
        self.role = role  # "trial" for the search's trials, CONFIRMATION_ROLE for confirmation runs
        self.histories: dict[str, list[dict]] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.trial_started(trial.trial_id, {k: trial.config.get(k) for k in self.hyperparameters}, role=self.role)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = {k: v for k, v in result.items() if k == "training_iteration" or k == "lr" or k.startswith(_REPORTED_PREFIXES)}
        history = self.histories.setdefault(trial.trial_id, [])
        history[:] = [r for r in history if r["training_iteration"] < row["training_iteration"]] + [row]
        self.tracker.trial_result(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.trial_ended(trial.trial_id, self.histories.get(trial.trial_id, []), failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.trial_ended(trial.trial_id, self.histories.get(trial.trial_id, []), failed=True)

    def on_experiment_end(self, trials, **info):
        self.tracker.flush(force=True)

    def get_state(self) -> dict | None:
        return {"histories": self.histories}

    def set_state(self, state: dict) -> None:
        self.histories = state.get("histories", {})


def replay(experiment: Path, tracking_uri: str | None = None) -> int:
    """Send the writes an outage left in <experiment>/mlflow_outbox.jsonl."""
    job = json.loads((experiment / "job.json").read_text())
    if not (experiment / OUTBOX_FILE).exists():
        print(f"Nothing pending in {experiment}.")
        return 0
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or job["tracking_uri"]
    if f":{REDACTED}@" in uri:
        raise UserError(f"job.json keeps {uri} without its password: pass the tracking URI as the second argument.")
    tracker = SearchTracker(uri, job, experiment)
    check_reachable(tracker.uri)
    tracker.start(resume=True)
    left = len(tracker.outbox.pending)
    if tracker.flush(force=True):
        print(f"Sent {left} pending MLflow writes of {job['name']}.")
        return 0
    print(f"{len(tracker.outbox.pending)} writes still pending in {experiment / OUTBOX_FILE}: is the server up?", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    import argparse

    from fracture_models.cli import configure_logging

    parser = argparse.ArgumentParser(description="Send the MLflow writes that an outage left pending in a search's folder.")
    parser.add_argument("experiment", type=Path, help="the search's folder, e.g. runs/tune/cnn-20261126-101500")
    parser.add_argument("tracking_uri", nargs="?", default=None, help="default: $MLFLOW_TRACKING_URI, else the one in job.json")
    args = parser.parse_args(argv)
    configure_logging()
    return replay(args.experiment, args.tracking_uri)


if __name__ == "__main__":
    from fracture_models.cli import run_main

    sys.exit(run_main(main))
