"""What defines a search, resolved once: `JobSpec`, written to job.json and onto its MLflow parent run.

It is built from the command line (`from_args`), or read back from job.json on `--resume`, where
the record fills every flag not given and a flag that contradicts it is refused before any work
(`resume_spec`). Every stage of `tuning.run` receives the spec (or the fields it needs), never
the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fracture_models.errors import UserError
from fracture_models.metrics import metric_mode
from fracture_models.records import REDACTED
from fracture_models.study import BASELINE_HYPERPARAMETERS
from tuning.tracking.names import GENERATED_DATA_TAG, JOB_TAG, ROLE_TAG, SEARCH_ROLE

JOB_FILE = "job.json"

# Flags whose value job.json records, by the record's key: on --resume they come from the record,
# and a different value on the command line is refused. (Resources, such as --gpus-per-trial or
# --address, may differ between a job and its resume.)
RECORDED_FLAGS = {
    "arch": "arch",
    "num_samples": "num_samples",
    "epochs": "epochs",
    "image_size": "image_size",
    "batch_size": "batch_size",
    "weights": "weights",
    "seed": "seed",
    "metric": "metric",
    "team": "team",
    "sampler": "sampler",
    "sampler_seed": "sampler_seed",
    "target_sensitivity": "target_sensitivity",
    "mlflow_checkpoints": "mlflow_checkpoints",
}
NESTED_FLAGS = {  # flag -> (record section, key)
    "scheduler": ("scheduler", "name"),
    "grace_period": ("scheduler", "grace_period"),
    "reduction_factor": ("scheduler", "reduction_factor"),
    "rung_metric": ("scheduler", "rung_metric"),
    "rung_epochs": ("scheduler", "rung_epochs"),
    "confirm_top": ("confirmation", "top"),
    "confirm_seeds": ("confirmation", "extra_seeds"),
    "confirm_budget": ("confirmation", "budget"),
    "dedupe": ("audit", "dedupe"),
}


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        return "unknown"


@dataclass(frozen=True)
class JobSpec:
    """A search's resolved settings. `to_json()` is job.json; unknown keys of an older or newer
    job.json are kept in `extra` and written back unchanged."""

    name: str
    arch: str
    num_samples: int
    epochs: int
    image_size: int
    batch_size: int
    weights: str
    seed: int
    metric: str
    mode: str
    team: str
    user: str
    data_root: str
    data_fingerprint: str
    sampler: str
    sampler_seed: int
    scheduler: Mapping[str, Any]  # name, grace_period, reduction_factor, rung_metric, rung_epochs
    search_space: Mapping[str, Any]
    baseline: Mapping[str, float]
    confirmation: Mapping[str, Any]  # top, extra_seeds, budget
    generated_data: bool = False
    target_sensitivity: float | None = None
    audit: Mapping[str, Any] = field(default_factory=dict)
    git_commit: str = "unknown"
    package_versions: Mapping[str, str] = field(default_factory=dict)
    optuna_storage: str | None = None  # password left out
    tracking_uri: str | None = None  # password left out
    mlflow_parent_run_id: str | None = None
    mlflow_checkpoints: str = "all"  # whose best checkpoints go to MLflow: all, top-K or winner (tuning.tracking.models)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, **changes) -> "JobSpec":
        return dataclasses.replace(self, **changes)

    # -- job.json ----------------------------------------------------------------------------
    def to_json(self) -> dict:
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return json.loads(json.dumps({**self.extra, **record}))  # plain dicts and lists

    @classmethod
    def from_json(cls, record: Mapping) -> "JobSpec":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in record.items() if k in known}
        values.setdefault("confirmation", {"top": 0, "extra_seeds": 0, "budget": 0.0})  # jobs from before confirmation
        values.setdefault("mode", metric_mode(values["metric"]))
        return cls(**values, extra={k: v for k, v in record.items() if k not in known})

    @property
    def base_config(self) -> dict:
        """What every trial shares: the fields of `TrainConfig` that are not searched."""
        return {
            "arch": self.arch,
            "epochs": self.epochs,
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "weights": self.weights,
            "seed": self.seed,
        }

    # -- MLflow -------------------------------------------------------------------------------
    def to_mlflow_tags(self) -> dict[str, str]:
        """The parent run's tags: who, what, on which data; the leaderboard groups and filters by them."""
        return {
            ROLE_TAG: SEARCH_ROLE,
            JOB_TAG: self.name,
            GENERATED_DATA_TAG: str(bool(self.generated_data)).lower(),
            "arch": self.arch,
            "team": self.team,
            "user": self.user,
            "metric": self.metric,
            "mode": self.mode,
            "data_fingerprint": self.data_fingerprint,
            "image_size": str(self.image_size),
            "sampler": self.sampler,
            "scheduler": json.dumps(dict(self.scheduler)),
            "search_space": json.dumps(dict(self.search_space)),
            "baseline": json.dumps(dict(self.baseline)),
            "git_commit": self.git_commit,
            "package_versions": json.dumps(dict(self.package_versions)),
            **{f"audit_{k}": json.dumps(v) if isinstance(v, list) else str(v) for k, v in self.audit.items()},
            "mlflow.note.content": (
                f"Search of {self.num_samples} trials of {self.arch} around the study's baseline; "
                f"selection on {self.metric} (validation); the winner is tested once."
            ),
        }

    def to_mlflow_params(self) -> dict:
        params = {
            k: getattr(self, k)
            for k in ("arch", "num_samples", "epochs", "image_size", "batch_size", "weights", "seed", "metric", "sampler")
        }
        params.update({f"scheduler_{k}": v for k, v in self.scheduler.items()})
        return params


def from_args(
    args: argparse.Namespace, *, name: str, data_root: Path, data_fingerprint: str, generated_data: bool, audit: Mapping
) -> JobSpec:
    """A new job's spec from the command line, once its data is known."""
    from tuning.schedulers import default_rung_metric, rung_epochs
    from tuning.search_space import describe, search_space
    from tuning.tracking.environment import git_commit, package_versions

    return JobSpec(
        name=name,
        arch=args.arch,
        num_samples=args.num_samples,
        epochs=args.epochs,
        image_size=args.image_size,
        batch_size=args.batch_size,
        weights=args.weights,
        seed=args.seed,
        metric=args.metric,
        mode=metric_mode(args.metric),
        team=args.team,
        user=current_user(),
        data_root=str(data_root),
        data_fingerprint=data_fingerprint,
        generated_data=generated_data,
        sampler=args.sampler,
        sampler_seed=args.seed if args.sampler_seed is None else args.sampler_seed,
        scheduler={
            "name": args.scheduler,
            "grace_period": args.grace_period,
            "reduction_factor": args.reduction_factor,
            "rung_metric": args.rung_metric or default_rung_metric(args.metric),
            "rung_epochs": rung_epochs(args.epochs, args.grace_period, args.rung_epochs),
        },
        search_space=describe(search_space(args.arch)),
        baseline=dict(BASELINE_HYPERPARAMETERS),
        confirmation={"top": args.confirm_top, "extra_seeds": args.confirm_seeds, "budget": args.confirm_budget},
        target_sensitivity=args.target_sensitivity,
        mlflow_checkpoints=args.mlflow_checkpoints,
        audit=dict(audit),
        git_commit=git_commit(),
        package_versions=package_versions(),
    )


def read_record(experiment: str) -> dict | None:
    """job.json of an experiment folder, local or remote (s3://...); None where there is none."""
    if "://" not in experiment:
        path = Path(experiment) / JOB_FILE
        return json.loads(path.read_text()) if path.is_file() else None
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(experiment)
    try:
        with filesystem.open_input_stream(f"{root}/{JOB_FILE}") as stream:
            return json.loads(stream.read())
    except (FileNotFoundError, OSError):
        return None


def write_record(experiment: str, spec: JobSpec) -> None:
    """job.json into the experiment folder, local (atomically) or remote."""
    from fracture_models.records import write_json

    if "://" not in experiment:
        write_json(Path(experiment) / JOB_FILE, spec.to_json())
        return
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(experiment)
    with filesystem.open_output_stream(f"{root}/{JOB_FILE}") as stream:
        stream.write((json.dumps(spec.to_json(), indent=2) + "\n").encode())


def _record_value(record: Mapping, flag: str):
    if flag in RECORDED_FLAGS:
        return record.get(RECORDED_FLAGS[flag])
    section, key = NESTED_FLAGS[flag]
    return (record.get(section) or {}).get(key)


def apply_record(args: argparse.Namespace, record: Mapping, given: set[str]) -> argparse.Namespace:
    """`args` for a resume: every recorded flag not given comes from the record; a given flag
    that contradicts the record raises `UserError` (nothing has run yet)."""
    resolved = argparse.Namespace(**vars(args))
    conflicts = []
    for flag in [*RECORDED_FLAGS, *NESTED_FLAGS]:
        recorded = _record_value(record, flag)
        if recorded is None and flag not in ("rung_metric", "sampler_seed", "target_sensitivity", "rung_epochs"):
            continue  # a record from before this setting existed: the flag's value stands
        if flag in given:
            mine = getattr(args, flag)
            if flag == "rung_epochs" and mine is not None:
                mine = sorted({e for e in mine if e < record["epochs"]})
            if (
                recorded is not None
                and mine != recorded
                and not (isinstance(mine, float) and isinstance(recorded, (int, float)) and float(recorded) == mine)
            ):
                conflicts.append(f"--{flag.replace('_', '-')} {mine} (the job has {recorded})")
        elif recorded is not None:
            setattr(resolved, flag, recorded)
    if conflicts:
        raise UserError(
            f"--resume of {record['name']} continues the job as it was started; these flags contradict its job.json: "
            + "; ".join(conflicts)
            + ". Drop them, or start a new job with another --name."
        )
    if "data_dir" not in given and "synthetic" not in given:
        resolved.data_dir = Path(record["data_root"])
        resolved.synthetic = False
    for flag, key in (("optuna_storage", "optuna_storage"), ("tracking_uri", "tracking_uri")):
        if flag not in given and record.get(key):
            if f":{REDACTED}@" in record[key]:
                raise UserError(f"job.json keeps {record[key]} without its password: pass --{flag.replace('_', '-')} again to resume.")
            setattr(resolved, flag, record[key])
    return resolved


def resume_command(spec: JobSpec, storage_path: str) -> str:
    """The command that continues this job, complete and runnable as printed."""
    return f"python -m tuning.run --name {shlex.quote(spec.name)} --storage-path {shlex.quote(storage_path)} --resume"
