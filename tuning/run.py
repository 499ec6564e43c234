"""Hyperparameter search around the study's baseline: Ray Tune + Optuna TPE + ASHA.

    python -m tuning.run --arch vgg16 --num-samples 50

Trials run wherever the Ray cluster has room (every GPU of this machine, or of the cluster
given by --address). The baseline is the first trial; the Optuna study lives in a persistent
storage; ASHA stops poor trials early. The top configurations are confirmed with more seeds, the
winner is chosen on validation and its best checkpoint is evaluated once on the test split.
Results go to <storage-path>/<name>/.

`run_search` reads as its stages: prepare (settings, checks that fail fast), load (audit and
decode), open (the job's record, Optuna storage and MLflow runs), search, confirm, finish.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fracture_models.audit import DROPPED_FILE, audit_and_load, duplicates_to_drop, write_audit, write_dropped
from fracture_models.cli import configure_logging, get_common_parser, resolve_data_dir, run_main
from fracture_models.clinical import DEFAULT_TARGET_SENSITIVITY
from fracture_models.data import FractureDataset, load_split, resolve_dataset_root
from fracture_models.errors import UserError
from fracture_models.metrics import DEFAULT_SELECTION_METRIC, SELECTION_METRICS, metric_mode
from fracture_models.models import architecture, check_weights_available, resolve_weights
from fracture_models.records import redact_url
from fracture_models.synthetic import is_generated
from tuning.claim import Claim
from tuning.confirmation import CONFIRMATION_DIR, CONFIRMS, DEFAULT_BUDGET, DEFAULT_EXTRA_SEEDS, DEFAULT_TOP, run_confirmation
from tuning.job import JobSpec, apply_record, from_args, read_record, resume_command, write_record
from tuning.ray_cluster import init_ray
from tuning.tracking.connect import check_reachable, resolve_tracking_uri
from tuning.tracking.models import checkpoint_policy_flag
from tuning.trust import TRUST_FLAG, fs_path, prepare_state, state_filesystem

logger = logging.getLogger("tuning.run")

METRICS = {name: metric_mode(name) for name in SELECTION_METRICS}  # validation only: selection never looks at test
AUDIT_DIR = "audit"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.run",
        description="Search learning rate, StepLR step size and gamma, and augmentation strength around the study's baseline.",
        parents=[get_common_parser()],
        add_help=add_help,
    )
    search = parser.add_argument_group("search")
    search.add_argument("--num-samples", type=int, default=20, help="trials in all, the baseline included (default: %(default)s)")
    search.add_argument(
        "--metric", default=DEFAULT_SELECTION_METRIC, choices=sorted(METRICS), help="validation metric to optimise (default: %(default)s)"
    )
    search.add_argument(
        "--sampler", default="tpe", choices=["tpe", "random"], help="Optuna sampler after the baseline trial (default: %(default)s)"
    )
    search.add_argument(
        "--sampler-seed",
        type=int,
        default=None,
        help="seed of the sampler's draws (default: --seed, which also seeds training); two searches with one --seed and "
        "different --sampler-seed train a config identically and differ only in the configs they choose",
    )
    search.add_argument("--scheduler", default="asha", choices=["asha", "none"], help="early stopping (default: %(default)s)")
    search.add_argument(
        "--grace-period", type=int, default=3, help="ASHA: epochs every trial gets before it can be stopped (default: %(default)s)"
    )
    search.add_argument(
        "--rung-epochs",
        type=int,
        nargs="+",
        default=None,
        metavar="EPOCH",
        help="ASHA: epochs at which trials are compared, keeping the top 1/reduction-factor (default: the grace period, doubled until --epochs: 3 6 for 10)",
    )
    search.add_argument(
        "--rung-metric",
        default=None,
        choices=sorted(METRICS),
        help="ASHA: validation signal its rungs compare (default: val_roc_auc for thresholded metrics, else --metric)",
    )
    search.add_argument(
        "--reduction-factor", type=float, default=3.0, help="ASHA: keep the top 1/factor at each rung (default: %(default)s)"
    )
    search.add_argument(
        "--optuna-storage", default=None, help="Optuna storage URL (default: sqlite file optuna.db in the experiment folder)"
    )
    cluster = parser.add_argument_group("resources")
    cluster.add_argument(
        "--gpus-per-trial", type=float, default=None, help="GPUs per trial, fractions allowed (default: 1 where GPUs exist, else 0)"
    )
    cluster.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default: %(default)s)")
    cluster.add_argument(
        "--max-concurrent",
        type=int,
        default=0,
        help="most trials at once; 0 = as many as fit on the cluster's nodes when the search starts (default: %(default)s)",
    )
    cluster.add_argument(
        "--max-failures", type=int, default=2, help="retries of a failing trial from its last checkpoint (default: %(default)s)"
    )
    cluster.add_argument(
        "--address", default=None, help="address of a running Ray cluster, HOST:PORT (default: $RAY_ADDRESS, else a new local Ray)"
    )
    job = parser.add_argument_group("job")
    job.add_argument("--storage-path", default="./runs/tune", help="experiment folder root, local or s3:// (default: %(default)s)")
    job.add_argument("--name", default=None, help="experiment name (default: <arch>-<time>); reuse it with --resume")
    job.add_argument("--resume", action="store_true", help="continue the experiment --name to --num-samples trials in all")
    job.add_argument(
        TRUST_FLAG,
        action="store_true",
        help="with --resume: continue a job whose Ray Tune state your key did not sign (another user wrote or changed it, or "
        "it predates signing), after listing it, and sign it as yours; only if you trust everyone who can write the folder, "
        "since resuming unpickles that state (default: refuse)",
    )
    job.add_argument(
        "--team",
        default=os.environ.get("FRACTURE_TEAM", "default"),
        help="team name recorded with the job (default: $FRACTURE_TEAM or %(default)s)",
    )
    job.add_argument(
        "--dedupe",
        action="store_true",
        help="drop training (and validation) images that duplicate one in a later split, as the data audit finds them",
    )
    job.add_argument(
        "--target-sensitivity",
        type=float,
        default=DEFAULT_TARGET_SENSITIVITY,
        help="the winner's operating threshold is chosen on validation to reach this fracture sensitivity (default: %(default)s)",
    )
    job.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local store)")
    job.add_argument(
        "--mlflow-checkpoints",
        type=checkpoint_policy_flag,
        default="all",
        metavar="{all,top-K,winner}",
        help="whose best checkpoint (weights only) goes to MLflow as its run's logged model: every trial's, the job's K best "
        "runs' (e.g. top-5), or the tested winner's only; bounds the artifact store: a model is 0.54 GB for vgg16, "
        "0.09 GB for resnet50, 0.21 GB for cnn at 224 px (default: %(default)s)",
    )
    confirm = parser.add_argument_group("confirmation (selection above the seed-to-seed noise)")
    confirm.add_argument(
        "--confirm-top",
        type=int,
        default=DEFAULT_TOP,
        help="after the search, retrain this many of its best configurations and the baseline with more training seeds, "
        "and choose the winner by the mean over seeds; 0 turns confirmation off (default: %(default)s)",
    )
    confirm.add_argument(
        "--confirm-seeds",
        type=int,
        default=DEFAULT_EXTRA_SEEDS,
        help="extra training seeds per confirmed configuration (default: %(default)s)",
    )
    confirm.add_argument(
        "--confirm-budget",
        type=float,
        default=DEFAULT_BUDGET,
        help="most epochs confirmation may train, as a fraction of the epochs the search trained (default: %(default)s)",
    )
    return parser


def _validate(args: argparse.Namespace) -> None:
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {args.num_samples}.")
    if args.grace_period < 1 or args.reduction_factor <= 1:
        raise UserError("--grace-period must be >= 1 and --reduction-factor > 1.")
    if args.rung_epochs and min(args.rung_epochs) < 1:
        raise UserError(f"--rung-epochs must be epochs >= 1, got {args.rung_epochs}.")
    if args.max_concurrent < 0 or args.max_failures < 0:
        raise UserError("--max-concurrent and --max-failures must be >= 0.")
    if not math.isfinite(args.reduction_factor) or not math.isfinite(args.target_sensitivity):
        raise UserError("--reduction-factor and --target-sensitivity must be finite numbers.")
    if not 0 < args.target_sensitivity <= 1:  # checked now, not after hours of training
        raise UserError(f"--target-sensitivity must be in (0, 1], got {args.target_sensitivity}.")
    if args.confirm_top < 0 or args.confirm_seeds < 0 or not 0 <= args.confirm_budget < math.inf:
        raise UserError("--confirm-top and --confirm-seeds must be >= 0, and --confirm-budget a fraction >= 0.")


def _experiment_path(storage_path: str, name: str) -> str:
    root = storage_path
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    return f"{root.rstrip('/')}/{name}"


def given_flags(argv: list[str] | None) -> set[str]:
    """The destinations of the flags the user typed (defaults left out): what --resume may not override."""
    parser = get_args_parser(add_help=False)
    for action in parser._actions:  # argparse offers no public way to tell a default from a typed value
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _apply_audit(audit: dict, dataset: FractureDataset, dedupe: bool) -> list[dict]:
    """Warn about what the audit found; with `dedupe`, drop cross-split copies from train and
    val (never from test). Returns the dropped files."""
    if audit["flagged_shortcuts"]:
        logger.warning(
            "Data audit: %s predicts the class on its own (a shortcut a model can learn instead of fractures); see audit/attributes.csv.",
            ", ".join(audit["flagged_shortcuts"]),
        )
    if audit["cross_split_groups"] and not dedupe:
        logger.warning(
            "Data audit: duplicate images across splits (%d group%s), so the test score can be inflated by leakage; "
            "see audit/duplicates.csv, or drop the training copies with --dedupe.",
            audit["cross_split_groups"],
            "" if audit["cross_split_groups"] == 1 else "s",
        )
    if not dedupe:
        return []
    dropped = duplicates_to_drop(audit["duplicate_groups"])
    for split in ("train", "val"):
        paths = [d["path"] for d in dropped if d["split"] == split]
        if split in dataset.splits:
            dataset.splits[split] = dataset.splits[split].without(paths)
    logger.warning("--dedupe: dropped %d images that duplicate one in a later split (listed in audit/%s).", len(dropped), DROPPED_FILE)
    return dropped


def _publish(folder: Path, uri: str) -> None:
    """Copy a local folder's files to remote experiment storage (s3://..., gs://...)."""
    import pyarrow.fs

    pyarrow.fs.copy_files(str(folder), uri)


@dataclass(frozen=True)
class Resources:
    """Where trials run: may differ between a job and its resume, so not part of its record."""

    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    max_failures: int


@dataclass
class Job:
    """A job being run: its spec and the handles the stages share."""

    spec: JobSpec
    experiment: str
    storage_path: str
    resources: Resources
    dataset: FractureDataset
    storage: object  # the Optuna storage
    optuna_url: str
    tracker: object  # tuning.tracking.SearchTracker
    audit_dir: Path
    cache_dir: Path | None
    max_bad_fraction: float

    @property
    def local(self) -> bool:
        return "://" not in self.experiment

    def resume_hint(self) -> str:
        return f"Continue with: {resume_command(self.spec, self.storage_path)}"


class Interrupted(Exception):
    """A stage stopped before its trials or runs all ended (Ctrl-C); `--resume` continues it."""


class StorageFull(Exception):
    """The storage path has no room for the search's next checkpoints; `--resume` continues once it has."""

    def __init__(self, path: str) -> None:
        super().__init__(f"the storage is full (no room for another checkpoint in {path})")


class AlreadyFinished(Exception):
    """`--resume` of a job whose summary is written: there is nothing left to do."""


def _finished(experiment: str) -> bool:
    from tuning.summary import SUMMARY_FILE

    if "://" not in experiment:
        return (Path(experiment) / SUMMARY_FILE).is_file()
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(experiment)
    return filesystem.get_file_info(f"{root}/{SUMMARY_FILE}").type == pyarrow.fs.FileType.File


def _parent_finished(tracking_uri: str, run_id: str | None) -> bool:
    """MLflow's word on a job: a FINISHED parent run is on the leaderboard, and no resume reopens
    it, even where the job's files look unfinished (a summary.json lost, a folder restored from a copy)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not run_id:
        return False
    try:
        return MlflowClient(tracking_uri).get_run(run_id).info.status == "FINISHED"
    except MlflowException:  # deleted, or the job logged to another store
        return False


# ---------------------------------------------------------------------------------------------
# Stages


def prepare(args: argparse.Namespace, given: set[str] | None) -> tuple[argparse.Namespace, str, dict | None, Resources]:
    """Settings resolved (from job.json on --resume), and every check that can fail before work."""
    from ray import tune

    from tuning.progress import quiet_libraries
    from tuning.resources import check_trial_resources, default_gpus_per_trial

    _validate(args)
    name = args.name or f"{args.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = _experiment_path(args.storage_path, name)
    local = "://" not in experiment
    if local and Path(args.storage_path).expanduser().exists() and not Path(args.storage_path).expanduser().is_dir():
        raise UserError(f"--storage-path {args.storage_path} is a file; give a folder (it is created if missing) or an s3:// URI.")
    if local and not args.resume and Path(experiment).exists():
        raise UserError(f"Experiment {experiment} exists already: pass --resume to continue it, or choose another --name.")
    record = None
    if args.resume:
        if not tune.Tuner.can_restore(experiment):
            raise UserError(f"Nothing to resume at {experiment}: check --name and --storage-path.")
        if _finished(experiment):  # its winner was tested: test is touched once per job, ever
            raise AlreadyFinished(f"{name} finished already; nothing to resume. Its results are in {experiment}/.")
        record = read_record(experiment)
        if record is not None:
            args = apply_record(args, record, given if given is not None else set(vars(args)))
            _validate(args)
    prepare_state(experiment, resume=args.resume, trust_folder=args.trust_experiment_folder)  # tuning.trust
    args.name = name
    args.weights = resolve_weights(args.arch, args.weights)
    check_weights_available(args.arch, args.weights)  # before data is generated or decoded
    args.data_root = resolve_dataset_root(resolve_data_dir(args))
    # Resources are checked before minutes of decoding, so an impossible request fails at once.
    quiet_libraries()
    init_ray(args.address)
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else default_gpus_per_trial()
    check_trial_resources(args.cpus_per_trial, gpus)
    args.tracking_uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(args.tracking_uri)
    if record is not None and _parent_finished(args.tracking_uri, record.get("mlflow_parent_run_id")):
        raise AlreadyFinished(f"{name} finished already (its MLflow parent run is FINISHED); nothing to resume.")
    return args, experiment, record, Resources(args.cpus_per_trial, gpus, args.max_concurrent, args.max_failures)


def load(args: argparse.Namespace, record: dict | None) -> tuple[FractureDataset, dict, dict, list[dict]]:
    """The decoded train and validation splits, the audit (warnings, --dedupe), what the job
    records of it, and the files --dedupe dropped."""
    dedupe = args.dedupe or bool((record or {}).get("audit", {}).get("dedupe"))
    audit, dataset = audit_and_load(  # one decode per file: the audit inspects the loader's decodes
        args.data_root,
        args.image_size,
        splits=("train", "val"),
        cache_dir=args.cache_dir,
        max_bad_fraction=args.max_bad_fraction,
        progress=True,
    )
    dropped = _apply_audit(audit, dataset, dedupe)
    summary = {
        "files": audit["num_files"],  # the data's size, for a readable name of its leaderboard group
        "cross_split_groups": audit["cross_split_groups"],
        "flagged_shortcuts": audit["flagged_shortcuts"],
        "bad_files": len(audit["bad_files"]),
        "dedupe": dedupe,
        "dropped": len(dropped),
    }
    return dataset, audit, summary, dropped


def claim_name(args: argparse.Namespace, experiment: str) -> Claim:
    """The job's name, claimed before the slow steps (tuning.claim): its experiment folder (a new
    job's, exclusively), the lock of the running job, and its Optuna study (created by a new job,
    reused only by --resume)."""
    from tuning.claim import claim_folder, claim_study, hold_lock
    from tuning.searcher import open_storage

    local = "://" not in experiment
    optuna_url = args.optuna_storage or (f"sqlite:///{experiment}/optuna.db" if local else None)
    if optuna_url is None:
        raise UserError("With a remote --storage-path, give --optuna-storage (e.g. a PostgreSQL URL).")
    made_folder = False if args.resume else claim_folder(experiment)
    claim = Claim(experiment, args.name, None, optuna_url, made_folder=made_folder)
    try:
        claim.lock = hold_lock(experiment, args.name)
        try:
            claim.storage = open_storage(optuna_url)
        except Exception as exc:  # noqa: BLE001 - any driver or connection error
            raise UserError(f"Cannot open the Optuna storage {redact_url(optuna_url)}: {exc}. Nothing was trained.") from exc
        if not args.resume:
            claim_study(claim.storage, args.name, metric_mode(args.metric), optuna_url)
            claim.made_study = True
    except BaseException:
        claim.release()
        raise
    return claim


def open_job(
    args,
    experiment: str,
    record: dict | None,
    resources: Resources,
    claim: Claim,
    dataset: FractureDataset,
    audit: dict,
    audit_summary: dict,
    dropped: list[dict],
) -> Job:
    """The job's spec (new, or its record checked against the data), MLflow runs and job.json."""
    from tuning.tracking import SearchTracker

    spec = from_args(
        args,
        name=args.name,
        data_root=args.data_root,
        data_fingerprint=dataset.fingerprint,
        generated_data=is_generated(args.data_root),
        audit=audit_summary,
    )
    if record is not None:
        for key in ("arch", "data_fingerprint", "image_size", "epochs", "metric"):
            if record.get(key) != getattr(spec, key):
                raise UserError(
                    f"--resume of {spec.name}: {key} was {record.get(key)!r}, now {getattr(spec, key)!r}. Resume with the same data and settings."
                )
        spec = JobSpec.from_json({"generated_data": spec.generated_data, "target_sensitivity": args.target_sensitivity, **record})
    local = "://" not in experiment
    # job.json and MLflow never hold a password.
    spec = spec.replace(optuna_storage=redact_url(claim.optuna_url), tracking_uri=redact_url(args.tracking_uri))
    tracker = SearchTracker(args.tracking_uri, spec, Path(experiment) if local else None)
    try:
        spec = spec.replace(mlflow_parent_run_id=tracker.start(resume=args.resume))
    except Exception as exc:  # noqa: BLE001 - the store went away since the check
        raise UserError(f"MLflow at {redact_url(args.tracking_uri)} failed as the job started: {exc}. Nothing was trained.") from exc
    tracker.job = spec
    try:
        write_record(experiment, spec)
        audit_dir = Path(experiment) / AUDIT_DIR if local else tracker.files_dir(AUDIT_DIR)
        write_audit(audit, audit_dir)
        if dropped:
            write_dropped(dropped, audit_dir)
        tracker.submit("artifact", trial_id=None, path=str(audit_dir), artifact_path=AUDIT_DIR)
    except BaseException:
        tracker.job_failed()  # a parent run is RUNNING only while its job runs (a resume reopened it above)
        raise
    return Job(
        spec,
        experiment,
        args.storage_path,
        resources,
        dataset,
        claim.storage,
        claim.optuna_url,
        tracker,
        audit_dir,
        args.cache_dir,
        args.max_bad_fraction,
    )


def make_trainable(job: Job):
    """The one trainable of the search and its confirmation: data handed to trials once.
    Each stage sizes its trials with `sized`."""
    from ray import tune

    from tuning.trainable import train_fracture_model

    spec = job.spec
    return tune.with_parameters(
        train_fracture_model,
        base_config=spec.base_config,
        metric=spec.metric,
        mode=spec.mode,
        train_split=job.dataset.train,
        val_split=job.dataset.val,
        architecture=architecture(spec.arch),
    )


def sized(job: Job, trainable, cpus_per_trial: float | None = None):
    """`trainable` asking for the job's resources per trial (`cpus_per_trial` overriding its CPUs)."""
    from ray import tune

    cpus = job.resources.cpus_per_trial if cpus_per_trial is None else cpus_per_trial
    return tune.with_resources(trainable, {"cpu": cpus, "gpu": job.resources.gpus_per_trial})


def _tune_config(job: Job, search_alg, num_samples: int, scheduler=None, max_concurrent: int | None = None):
    """How trials are proposed and scheduled: one place for the search and its confirmation.
    `max_concurrent` only for a `Searcher` (Ray ignores it, with a warning, for a generator)."""
    from ray import tune

    from tuning.progress import trial_name

    return tune.TuneConfig(
        metric=job.spec.metric,
        mode=job.spec.mode,
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=num_samples,
        max_concurrent_trials=max_concurrent,
        reuse_actors=True,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )


def search_concurrency(resources: Resources) -> int:
    """Trials the search runs at once: --max-concurrent, else as many as the cluster holds now."""
    from tuning.resources import trial_slots

    return resources.max_concurrent or trial_slots(resources.cpus_per_trial, resources.gpus_per_trial)


def _run_config(job: Job, name: str, storage_path: str, callbacks: list):
    from ray import tune

    from tuning.callbacks import GracefulStop, OneRowPerEpoch
    from tuning.progress import search_progress
    from tuning.trainable import CHECKPOINT_SCORE

    return tune.RunConfig(
        name=name,
        storage_path=fs_path(storage_path),
        storage_filesystem=state_filesystem(job.experiment),  # signs what a resume unpickles, reads it only when signed
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=CHECKPOINT_SCORE, checkpoint_score_order=job.spec.mode
        ),
        failure_config=tune.FailureConfig(max_failures=job.resources.max_failures),
        progress_reporter=search_progress(job.spec.metric),
        callbacks=[*callbacks, OneRowPerEpoch(), GracefulStop()],
        verbose=1,
    )


def search(job: Job, trainable, *, resume: bool, callbacks: list | None = None):
    """The Tune experiment: Optuna proposing, ASHA stopping; returns its results and the study.
    Raises `Interrupted` when fewer trials than the job's budget have ended."""
    import optuna
    from ray import tune

    from tuning.callbacks import DropOptimizerState, GracefulStop, MlflowLoggingCallback, storage_full
    from tuning.schedulers import make_scheduler
    from tuning.search_space import baseline_point, search_space
    from tuning.searcher import LOST_WITH_DRIVER, RAY_TRIAL_ID, make_searcher
    from tuning.summary import trial_id_of

    spec = job.spec
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the trimmed table below instead of Ray's default output
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # expected: we checkpoint every epoch
    if resume:
        logger.info("Resuming %s", job.experiment)
        tuner = tune.Tuner.restore(
            fs_path(job.experiment),
            trainable=sized(job, trainable),
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=state_filesystem(job.experiment),  # hands Ray only the state files this user's key signed
        )
    else:
        searcher = make_searcher(
            search_space(spec.arch),
            metric=spec.metric,
            mode=spec.mode,
            study_name=spec.name,
            storage=job.storage,
            seed=spec.sampler_seed,
            num_samples=spec.num_samples,
            max_epochs=spec.epochs,
            sampler=spec.sampler,
        )
        rungs = spec.scheduler
        scheduler = make_scheduler(
            rungs["name"],
            metric=spec.metric,
            rung_metric=rungs["rung_metric"],
            rung_mode=metric_mode(rungs["rung_metric"]),
            max_epochs=spec.epochs,
            rung_epochs=rungs["rung_epochs"],
            reduction_factor=rungs["reduction_factor"],
        )
        tuner = tune.Tuner(
            sized(job, trainable),
            tune_config=_tune_config(job, searcher, spec.num_samples, scheduler, max_concurrent=search_concurrency(job.resources)),
            run_config=_run_config(
                job,
                spec.name,
                job.experiment.rsplit("/", 1)[0],
                [MlflowLoggingCallback(job.tracker, baseline_point().keys()), DropOptimizerState(), *(callbacks or [])],
            ),
        )
    GracefulStop.stopped_for = None  # not an earlier search's reason, should this one fail before setting up
    try:
        results = tuner.fit()
    except Exception as exc:
        # e.g. Tune reading back the error files it could not write: a file error on a full volume, never any error
        if GracefulStop.stopped_for is not None or (_file_error(exc) and storage_full(job.experiment)):
            raise StorageFull(job.experiment) from exc
        raise
    job.tracker.reload_outbox()  # a restored experiment logged through its own (unpickled) tracker

    study = optuna.load_study(study_name=spec.name, storage=job.storage)
    lost = [t for t in study.trials if t.user_attrs.get(LOST_WITH_DRIVER)]
    for trial in lost:
        if RAY_TRIAL_ID in trial.user_attrs:  # one killed inside Optuna's ask never had a Tune trial, nor a run
            job.tracker.trial_lost(trial.user_attrs[RAY_TRIAL_ID])
    # The study's trials of this job's Tune experiment, never another job's (a trial that failed
    # before its first report is known by its folder, trial_<id>).
    own = {trial_id_of(r).removeprefix("trial_") for r in results}
    finished = [t for t in study.trials if t.state.is_finished() and t.user_attrs.get(RAY_TRIAL_ID) in own]
    if len(finished) < spec.num_samples:
        if GracefulStop.stopped_for is not None:  # it stopped the search for a trial's ENOSPC; else Ctrl-C
            raise StorageFull(job.experiment)
        raise Interrupted(f"{len(finished)} of {spec.num_samples} trials finished")
    return results, study, lost


def _file_error(exc: BaseException | None) -> bool:
    """Whether an OSError is `exc` or behind it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _fit_confirmation(job: Job, trainable, runs: list):
    """Train the planned confirmation runs as a Tune experiment of their own, <experiment>/confirmation:
    full length (no scheduler), no searcher (never Optuna trials), each a nested MLflow run
    tagged role=confirmation. An interrupted confirmation continues under --resume."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tuning.callbacks import DropOptimizerState, MlflowLoggingCallback
    from tuning.resources import cpus_per_run
    from tuning.search_space import baseline_point
    from tuning.tracking import CONFIRMATION_ROLE

    path = f"{job.experiment}/{CONFIRMATION_DIR}"
    keys = [*baseline_point(), "seed", CONFIRMS]
    # The runs are all that is left: CPU runs fewer than the cluster holds take its idle CPUs too,
    # unless the user limited how many trials run at once (leaving the rest of the cluster to others).
    resources = job.resources
    cpus = (
        resources.cpus_per_trial
        if resources.max_concurrent
        else cpus_per_run(resources.cpus_per_trial, resources.gpus_per_trial, len(runs))
    )
    logger.info("Confirmation: %d runs of the top configurations and the baseline with more seeds (%g CPUs each)", len(runs), cpus)
    trainable = sized(job, trainable, cpus)
    # The planned points, at most --max-concurrent at once (0: as many as the cluster holds).
    generator = BasicVariantGenerator(points_to_evaluate=[run.config() for run in runs], max_concurrent=resources.max_concurrent or 0)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(
            fs_path(path),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=state_filesystem(job.experiment),
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={key: None for key in keys},  # every value comes from the planned points
            tune_config=_tune_config(job, generator, len(runs)),
            run_config=_run_config(
                job,
                CONFIRMATION_DIR,
                job.experiment,
                [MlflowLoggingCallback(job.tracker, keys, role=CONFIRMATION_ROLE), DropOptimizerState()],
            ),
        )
    results = tuner.fit()
    job.tracker.reload_outbox()
    unfinished = [r for r in results if not r.error and int((r.metrics or {}).get("training_iteration") or 0) < job.spec.epochs]
    if unfinished:
        raise Interrupted(f"confirmation: {len(results) - len(unfinished)} of {len(results)} runs ended")
    return results


def confirm(job: Job, trainable, rows: list[dict]) -> tuple[dict | None, dict]:
    """Retrain the top configurations and the baseline with more seeds (tuning.confirmation);
    returns the confirmation and, by trial id, each confirmation run's (row, Tune result)."""
    from tuning.search_space import baseline_point
    from tuning.summary import trial_id_of, trial_rows

    spec, settings = job.spec, job.spec.confirmation
    runs_by_id: dict = {}
    if settings["top"] <= 0:
        return None, runs_by_id

    def train(runs: list) -> list[dict]:
        results = _fit_confirmation(job, trainable, runs)
        ranked = trial_rows(results, [*baseline_point(), "seed", CONFIRMS], spec.metric, spec.mode, spec.epochs)
        by_id = {row["trial_id"]: row for row in ranked}
        runs_by_id.update({trial_id_of(r): (by_id[trial_id_of(r)], r) for r in results})
        return ranked

    confirmation = run_confirmation(
        rows,
        names=list(baseline_point()),
        baseline=baseline_point(),
        seed=spec.seed,
        mode=spec.mode,
        metric=spec.metric,
        epochs=spec.epochs,
        epochs_trained=sum(r["epochs"] for r in rows),
        top=settings["top"],
        extra_seeds=settings["extra_seeds"],
        budget=settings["budget"],
        train=train,
    )
    return confirmation, runs_by_id


def finish(
    job: Job,
    results,
    study,
    lost: list,
    rows: list[dict],
    best: dict,
    confirmation: dict | None,
    confirmed: dict,
    target_sensitivity: float,
) -> dict:
    """Test the winner once, write the report, register the model, print the summary."""
    from fracture_models.evaluate import evaluate_checkpoint
    from tuning.search_space import baseline_point
    from tuning.searcher import RAY_TRIAL_ID, REQUEUED_FROM
    from tuning.summary import best_checkpoint_dir, format_summary, is_baseline, study_reference, trial_id_of, where_to_look, write_report
    from tuning.tracking import save_winner_model, tracking_note
    from tuning.trainable import CHECKPOINT_FILE

    spec, tracker = job.spec, job.tracker
    ran_again = {t.user_attrs[REQUEUED_FROM]: t.number for t in study.trials if REQUEUED_FROM in t.user_attrs}
    tested_id = (confirmation or {}).get("tested_run") or best["trial_id"]
    tested_row, tested_result = confirmed.get(tested_id) or (
        next(r for r in rows if r["trial_id"] == tested_id),
        next(r for r in results if trial_id_of(r) == tested_id),
    )
    test_split = load_split(Path(spec.data_root), "test", spec.image_size, cache_dir=job.cache_dir, max_bad_fraction=job.max_bad_fraction)
    winner_checkpoint = best_checkpoint_dir(tested_result, spec.mode)
    report_dir = Path(job.experiment) if job.local else tracker.files_dir("report")
    test, clinical, winner_files = evaluate_checkpoint(
        winner_checkpoint / CHECKPOINT_FILE,
        job.dataset.val,
        test_split,
        spec.batch_size,
        report_dir,
        target_sensitivity=target_sensitivity,
        seed=spec.seed,
    )
    seconds = sum(r["seconds"] for r in rows)
    summary = {
        "experiment": spec.name,
        "arch": spec.arch,
        "experiment_path": job.experiment,
        "optuna_storage": redact_url(job.optuna_url),
        "metric": spec.metric,
        "mode": spec.mode,
        "num_trials": len(rows),
        "trials_stopped_early": sum(r["status"] == "stopped early" for r in rows),
        "trials_failed": sum(r["status"] == "failed" for r in rows),
        "trials_lost_with_driver": [
            {"optuna_number": t.number, "ray_trial_id": t.user_attrs.get(RAY_TRIAL_ID), "ran_again_as": ran_again.get(t.number)}
            for t in lost
        ],
        "epochs_trained": sum(r["epochs"] for r in rows),
        "epochs_budget": len(rows) * spec.epochs,
        "trial_hours": seconds / 3600,
        "gpu_hours": seconds / 3600 * job.resources.gpus_per_trial,
        "baseline": baseline_point(),
        "baseline_trial": next((r for r in rows if is_baseline(r, baseline_point())), None),
        "best_trial": best,
        "confirmation": confirmation,
        "tested_trial": tested_row,
        "test": test,
        "test_evaluated_for": tested_id,
        "generated_data": spec.generated_data,
        "clinical": clinical,
        "study_reported": study_reference(spec.arch),
        "trials": rows,
        "job": spec.to_json(),
    }
    report_files = write_report(report_dir, summary, results, study) + winner_files
    if not job.local:  # the report and audit beside the checkpoints, as in a local experiment folder
        _publish(report_dir, job.experiment)
        _publish(job.audit_dir, f"{job.experiment}/{AUDIT_DIR}")
    model_dir = save_winner_model(winner_checkpoint, tracker.files_dir("model"), clinical)  # decides at the operating threshold
    tracker.job_finished(summary, report_files, model_dir, winner_checkpoint / CHECKPOINT_FILE)
    print("\n" + format_summary(summary))
    print("\n" + where_to_look(job.experiment, redact_url(job.optuna_url), job.local))
    print(tracking_note(tracker))
    tracker.close()
    return summary


def run_search(args: argparse.Namespace, *, callbacks: list | None = None, given: set[str] | None = None) -> int:
    """The whole job; returns the exit code. `callbacks` are extra Ray Tune callbacks of the search;
    `given` the flags typed on the command line (default: every flag counts as given)."""
    try:
        args, experiment, record, resources = prepare(args, given)
    except AlreadyFinished as done:
        print(done)
        return 0
    with claim_name(args, experiment) as claim:
        try:
            dataset, audit, audit_summary, dropped = load(args, record)
            job = open_job(args, experiment, record, resources, claim, dataset, audit, audit_summary, dropped)
        except BaseException as exc:
            claim.release()  # a new job that trained nothing leaves nothing behind: the same command runs again
            reason = storage_fault(exc) if isinstance(exc, Exception) else None
            if reason is not None:
                raise UserError(f"{args.name} did not start: {reason}. Nothing was trained.") from exc
            raise
        return run_job(job, resume=args.resume, callbacks=callbacks, target_sensitivity=args.target_sensitivity)


def run_job(job: Job, *, resume: bool, callbacks: list | None, target_sensitivity: float) -> int:
    """Search, confirm, finish; returns the exit code. However it stops, the parent run is RUNNING
    only while this driver runs: Ctrl-C ends it KILLED (130), a storage fault FAILED with one line
    and the resume command (1), a bug FAILED with its traceback."""
    from tuning.search_space import baseline_point
    from tuning.searcher import RAY_TRIAL_ID
    from tuning.summary import best_single_run, trial_rows
    from tuning.trainable import CHECKPOINT_SCORE

    try:
        trainable = make_trainable(job)  # uploads the data to Ray's object store: can fail, or meet Ctrl-C
        results, study, lost = search(job, trainable, resume=resume, callbacks=callbacks)
        tie_order = {t.user_attrs.get(RAY_TRIAL_ID): t.number for t in study.trials}
        rows = trial_rows(results, list(baseline_point()), job.spec.metric, job.spec.mode, job.spec.epochs, tie_order=tie_order)
        best = best_single_run(rows)
        if math.isnan(best[CHECKPOINT_SCORE]):
            raise UserError(f"No trial of {job.spec.name} finished an epoch; see the trial errors under {job.experiment}.")
        confirmation, confirmed = confirm(job, trainable, rows)
        finish(job, results, study, lost, rows, best, confirmation, confirmed, target_sensitivity)
    except Interrupted as stopped:
        print(f"\nStopped with {stopped}; nothing is lost.\n{job.resume_hint()}", file=sys.stderr)
        end_parent_run(job.tracker, job.tracker.job_interrupted)
        return 130
    except Exception as exc:
        end_parent_run(job.tracker, job.tracker.job_failed)
        reason = storage_fault(exc)
        if reason is None:
            raise  # a bug (or a UserError, said in one line by run_main) keeps its own report
        print(f"\nStopped: {reason}. Finished trials and checkpoints are kept.\n{job.resume_hint()}", file=sys.stderr)
        return 1
    except BaseException:  # a second Ctrl-C
        end_parent_run(job.tracker, job.tracker.job_interrupted)
        raise
    return 0


END_WAIT_S = 5.0  # how long a stopping job waits for MLflow to take its parent run's end


def end_parent_run(tracker, end) -> None:
    """End the parent run (`end`: the tracker's job_failed or job_interrupted) and wait briefly for MLflow
    to take it; if it could not, say where the write is kept, since the run shows RUNNING until it is sent."""
    from tuning.tracking import tracking_note

    end()
    note = tracking_note(tracker, wait_s=END_WAIT_S)
    if tracker.outbox.pending:
        print(note, file=sys.stderr)


def storage_fault(exc: BaseException) -> str | None:
    """The one-line reason when `exc`, or an error behind it, is a fault of the job's storage that
    retrying did not mend (a full disk, a database that stayed away); None for anything else."""
    import errno

    import sqlalchemy.exc

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageFull):
            return str(exc)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"the storage is full ({exc.strerror}{': ' + str(exc.filename) if exc.filename else ''})"
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and not isinstance(exc, sqlalchemy.exc.IntegrityError):
            detail = " ".join(str(exc.orig).split())[:200]
            full = any(sign in detail for sign in ("disk is full", "No space left", "could not extend file"))
            return f"the storage is full ({detail})" if full else f"the Optuna storage failed ({detail})"
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    return run_search(args, given=given_flags(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(run_main(main))
