"""Hyperparameter search around the study's baseline: Ray Tune + Optuna TPE + ASHA.

    python -m tuning.run --arch vgg16 --num-samples 50

Trials run wherever the Ray cluster has room (every GPU of this machine, or of the cluster
given by --address). The baseline is the first trial; the Optuna study lives in a persistent
storage; ASHA stops poor trials early. The winner is chosen on validation and its best
checkpoint is evaluated once on the test split. Results go to <storage-path>/<name>/.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from fracture_models.audit import DROPPED_FILE, audit_dataset, duplicates_to_drop, write_audit, write_dropped
from fracture_models.cli import configure_logging, get_common_parser, resolve_data_dir, run_main
from fracture_models.clinical import DEFAULT_TARGET_SENSITIVITY
from fracture_models.data import FractureDataset, load_dataset, load_split, resolve_dataset_root
from fracture_models.errors import UserError
from fracture_models.metrics import DEFAULT_SELECTION_METRIC, SELECTION_METRICS, metric_mode
from fracture_models.models import architecture, check_weights_available, resolve_weights
from fracture_models.records import REDACTED, redact_url, write_json
from fracture_models.study import BASELINE_HYPERPARAMETERS
from fracture_models.synthetic import is_generated
from tuning.confirmation import DEFAULT_BUDGET, DEFAULT_EXTRA_SEEDS, DEFAULT_TOP

logger = logging.getLogger("tuning.run")

METRICS = {name: metric_mode(name) for name in SELECTION_METRICS}  # validation only: selection never looks at test
JOB_FILE = "job.json"
AUDIT_DIR = "audit"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Search learning rate, StepLR step size and gamma, and augmentation strength around the study's baseline.",
        parents=[get_common_parser()],
        add_help=add_help,
    )
    search = parser.add_argument_group("search")
    search.add_argument("--num-samples", type=int, default=20, help="trials in all, the baseline included (default: %(default)s)")
    search.add_argument("--metric", default=DEFAULT_SELECTION_METRIC, choices=sorted(METRICS), help="validation metric to optimise (default: %(default)s)")
    search.add_argument("--sampler", default="tpe", choices=["tpe", "random"], help="Optuna sampler after the baseline trial (default: %(default)s)")
    search.add_argument(
        "--sampler-seed", type=int, default=None,
        help="seed of the sampler's draws (default: --seed, which also seeds training); two searches with one --seed and "
        "different --sampler-seed train a config identically and differ only in the configs they choose",
    )
    search.add_argument("--scheduler", default="asha", choices=["asha", "none"], help="early stopping (default: %(default)s)")
    search.add_argument("--grace-period", type=int, default=3, help="ASHA: epochs every trial gets before it can be stopped (default: %(default)s)")
    search.add_argument(
        "--rung-epochs", type=int, nargs="+", default=None, metavar="EPOCH",
        help="ASHA: epochs at which trials are compared, keeping the top 1/reduction-factor (default: the grace period, doubled until --epochs: 3 6 for 10)",
    )
    search.add_argument("--rung-metric", default=None, choices=sorted(METRICS), help="ASHA: validation signal its rungs compare (default: val_roc_auc for thresholded metrics, else --metric)")
    search.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA: keep the top 1/factor at each rung (default: %(default)s)")
    search.add_argument("--optuna-storage", default=None, help="Optuna storage URL (default: sqlite file optuna.db in the experiment folder)")
    cluster = parser.add_argument_group("resources")
    cluster.add_argument("--gpus-per-trial", type=float, default=None, help="GPUs per trial, fractions allowed (default: 1 where GPUs exist, else 0)")
    cluster.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default: %(default)s)")
    cluster.add_argument("--max-concurrent", type=int, default=0, help="most trials at once; 0 = as many as fit (default: %(default)s)")
    cluster.add_argument("--max-failures", type=int, default=2, help="retries of a failing trial from its last checkpoint (default: %(default)s)")
    cluster.add_argument("--address", default=None, help="address of a running Ray cluster (default: start a local one)")
    job = parser.add_argument_group("job")
    job.add_argument("--storage-path", default="./runs/tune", help="experiment folder root, local or s3:// (default: %(default)s)")
    job.add_argument("--name", default=None, help="experiment name (default: <arch>-<time>); reuse it with --resume")
    job.add_argument("--resume", action="store_true", help="continue the experiment --name to --num-samples trials in all")
    job.add_argument("--team", default=os.environ.get("FRACTURE_TEAM", "default"), help="team name recorded with the job (default: $FRACTURE_TEAM or %(default)s)")
    job.add_argument(
        "--dedupe", action="store_true",
        help="drop training (and validation) images that duplicate one in a later split, as the data audit finds them",
    )
    job.add_argument(
        "--target-sensitivity", type=float, default=DEFAULT_TARGET_SENSITIVITY,
        help="the winner's operating threshold is chosen on validation to reach this fracture sensitivity (default: %(default)s)",
    )
    job.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local store)")
    confirm = parser.add_argument_group("confirmation (selection above the seed-to-seed noise)")
    confirm.add_argument(
        "--confirm-top", type=int, default=DEFAULT_TOP,
        help="after the search, retrain this many of its best configurations and the baseline with more training seeds, "
        "and choose the winner by the mean over seeds; 0 turns confirmation off (default: %(default)s)",
    )
    confirm.add_argument("--confirm-seeds", type=int, default=DEFAULT_EXTRA_SEEDS, help="extra training seeds per confirmed configuration (default: %(default)s)")
    confirm.add_argument(
        "--confirm-budget", type=float, default=DEFAULT_BUDGET,
        help="most epochs confirmation may train, as a fraction of the epochs the search trained (default: %(default)s)",
    )
    return parser


def _validate(args: argparse.Namespace) -> None:
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {args.num_samples}.")
    if args.grace_period < 1 or args.reduction_factor <= 1:
        raise UserError("--grace-period must be >= 1 and --reduction-factor > 1.")
    if args.rung_epochs is not None and min(args.rung_epochs) < 1:
        raise UserError(f"--rung-epochs must be epochs >= 1, got {args.rung_epochs}.")
    if args.max_concurrent < 0 or args.max_failures < 0:
        raise UserError("--max-concurrent and --max-failures must be >= 0.")
    if not 0 < args.target_sensitivity <= 1:  # checked now, not after hours of training
        raise UserError(f"--target-sensitivity must be in (0, 1], got {args.target_sensitivity}.")
    if args.confirm_top < 0 or args.confirm_seeds < 0 or not 0 <= args.confirm_budget < math.inf:
        raise UserError("--confirm-top and --confirm-seeds must be >= 0, and --confirm-budget a fraction >= 0.")


def _experiment_path(args: argparse.Namespace, name: str) -> str:
    root = args.storage_path
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    return f"{root.rstrip('/')}/{name}"


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise UserError(f"Could not connect to the Ray cluster at {address}: {exc}. Start it with `ray start --head` or drop --address.") from exc


def _unredacted(url: str | None, flag: str) -> str | None:
    """A URL from job.json, unless its password was left out: then the user must give it again."""
    if url and f":{REDACTED}@" in url:
        raise UserError(f"job.json keeps {url} without its password: pass {flag} again to resume.")
    return url


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        return "unknown"


def _job_record(args: argparse.Namespace, name: str, metric: str, mode: str, data_root: Path, fingerprint: str) -> dict:
    """What defines a search: written to job.json, tagged on its MLflow parent run."""
    from tuning.schedulers import default_rung_metric, rung_epochs
    from tuning.search_space import describe, search_space
    from tuning.tracking import git_commit, package_versions

    return {
        "name": name,
        "arch": args.arch,
        "num_samples": args.num_samples,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "weights": args.weights,
        "seed": args.seed,
        "metric": metric,
        "mode": mode,
        "team": args.team,
        "user": _user(),
        "data_root": str(data_root),
        "data_fingerprint": fingerprint,
        "sampler": args.sampler,
        "sampler_seed": args.seed if args.sampler_seed is None else args.sampler_seed,
        "scheduler": {"name": args.scheduler, "grace_period": args.grace_period, "reduction_factor": args.reduction_factor, "rung_metric": args.rung_metric or default_rung_metric(args.metric),
                      "rung_epochs": rung_epochs(args.epochs, args.grace_period, args.rung_epochs)},
        "search_space": describe(search_space(args.arch)),
        "baseline": dict(BASELINE_HYPERPARAMETERS),
        "confirmation": {"top": args.confirm_top, "extra_seeds": args.confirm_seeds, "budget": args.confirm_budget},
        "generated_data": is_generated(data_root),
        "git_commit": git_commit(),
        "package_versions": package_versions(),
    }


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
            audit["cross_split_groups"], "" if audit["cross_split_groups"] == 1 else "s",
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


class ConfirmationInterrupted(Exception):
    """The confirmation runs stopped before all of them ended (Ctrl-C)."""


def _resume_hint(job: dict, args: argparse.Namespace) -> str:
    return f"Continue with: python -m tuning.run --arch {job['arch']} --name {job['name']} --storage-path {args.storage_path} --resume ..."


def _rows_by_result(results, rows: list[dict]) -> list[dict]:
    """`rows` (ranked) in the order of `results`."""
    from tuning.summary import trial_id_of

    by_id = {row["trial_id"]: row for row in rows}
    return [by_id[trial_id_of(r)] for r in results]


def _fit_confirmation(runs: list, trainable, experiment: str, job: dict, tracker, gpus: float, args: argparse.Namespace):
    """Train the planned confirmation runs as a Tune experiment of their own, <experiment>/confirmation:
    full length (no scheduler), no searcher (never Optuna trials), each a nested MLflow run
    tagged role=confirmation. An interrupted confirmation continues under --resume."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tuning.callbacks import DropOptimizerState, MlflowLoggingCallback
    from tuning.confirmation import CONFIRMATION_DIR, CONFIRMS
    from tuning.progress import search_progress, trial_name
    from tuning.search_space import baseline_point
    from tuning.tracking import CONFIRMATION_ROLE
    from tuning.trainable import CHECKPOINT_SCORE

    metric, mode = job["metric"], job["mode"]
    path = f"{experiment}/{CONFIRMATION_DIR}"
    keys = [*baseline_point(), "seed", CONFIRMS]
    logger.info("Confirmation: %d runs of the top configurations and the baseline with more seeds", len(runs))
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={key: None for key in keys},  # every value comes from the planned points
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, search_alg=BasicVariantGenerator(points_to_evaluate=[run.config() for run in runs]),
                num_samples=len(runs), max_concurrent_trials=args.max_concurrent or None, reuse_actors=True,
                trial_name_creator=trial_name, trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=CONFIRMATION_DIR,
                storage_path=experiment,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=CHECKPOINT_SCORE, checkpoint_score_order=mode),
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
                progress_reporter=search_progress(metric),
                callbacks=[MlflowLoggingCallback(tracker, keys, role=CONFIRMATION_ROLE), DropOptimizerState()],
                verbose=1,
            ),
        )
    results = tuner.fit()
    tracker.reload_outbox()
    unfinished = [r for r in results if not r.error and int((r.metrics or {}).get("training_iteration") or 0) < job["epochs"]]
    if unfinished:
        raise ConfirmationInterrupted(f"{len(results) - len(unfinished)} of {len(results)} runs ended")
    return results


def run_search(args: argparse.Namespace, *, callbacks: list | None = None) -> int:
    """The whole job; returns the exit code. `callbacks` are extra Ray Tune callbacks."""
    import optuna
    from ray import tune

    from tuning.callbacks import DropOptimizerState, MlflowLoggingCallback
    from tuning.progress import quiet_libraries, search_progress, trial_name
    from tuning.resources import check_trial_resources, default_gpus_per_trial
    from tuning.schedulers import make_scheduler
    from tuning.search_space import baseline_point, search_space
    from tuning.searcher import LOST_WITH_DRIVER, RAY_TRIAL_ID, make_searcher, open_storage
    from tuning.confirmation import CONFIRMS, run_confirmation
    from tuning.summary import (
        best_checkpoint_dir, best_single_run, format_summary, is_baseline, study_reference, trial_id_of, trial_rows,
        where_to_look, write_report,
    )
    from fracture_models.evaluate import evaluate_checkpoint
    from tuning.trainable import CHECKPOINT_FILE, CHECKPOINT_SCORE, train_fracture_model
    from tuning.tracking import SearchTracker, check_reachable, resolve_tracking_uri, save_winner_model, tracking_note

    _validate(args)
    metric, mode = args.metric, METRICS[args.metric]
    name = args.name or f"{args.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = _experiment_path(args, name)
    local = "://" not in experiment
    if local and not args.resume and Path(experiment).exists():
        raise UserError(f"Experiment {experiment} exists already: pass --resume to continue it, or choose another --name.")
    if args.resume and not tune.Tuner.can_restore(experiment):
        raise UserError(f"Nothing to resume at {experiment}: check --name and --storage-path.")

    args.weights = resolve_weights(args.arch, args.weights)
    check_weights_available(args.arch, args.weights)  # before data is generated or decoded
    data_root = resolve_dataset_root(resolve_data_dir(args))
    # Resources are checked before minutes of decoding, so an impossible request fails at once.
    quiet_libraries()
    _init_ray(args.address)
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else default_gpus_per_trial()
    check_trial_resources(args.cpus_per_trial, gpus)
    job_file = Path(experiment) / JOB_FILE if local else None
    previous = json.loads(job_file.read_text()) if args.resume and job_file is not None and job_file.is_file() else None
    tracking_uri = resolve_tracking_uri(args.tracking_uri or _unredacted((previous or {}).get("tracking_uri"), "--tracking-uri"))
    check_reachable(tracking_uri)

    dedupe = args.dedupe or bool((previous or {}).get("audit", {}).get("dedupe"))
    audit = audit_dataset(data_root, cache_dir=args.cache_dir, progress=True)
    dataset = load_dataset(data_root, args.image_size, splits=("train", "val"), cache_dir=args.cache_dir, max_bad_fraction=args.max_bad_fraction, progress=True)
    dropped = _apply_audit(audit, dataset, dedupe)
    job = _job_record(args, name, metric, mode, data_root, dataset.fingerprint)
    job["audit"] = {
        "cross_split_groups": audit["cross_split_groups"], "flagged_shortcuts": audit["flagged_shortcuts"],
        "bad_files": len(audit["bad_files"]), "dedupe": dedupe, "dropped": len(dropped),
    }
    if previous is not None:
        for key in ("arch", "data_fingerprint", "image_size", "epochs", "metric"):
            if previous.get(key) != job[key]:
                raise UserError(f"--resume of {name}: {key} was {previous.get(key)!r}, now {job[key]!r}. Resume with the same data and settings.")
        job = {"confirmation": job["confirmation"], "generated_data": job["generated_data"], **previous}  # a job.json from before these keys

    optuna_url = args.optuna_storage or _unredacted(job.get("optuna_storage"), "--optuna-storage") or (f"sqlite:///{experiment}/optuna.db" if local else None)
    if optuna_url is None:
        raise UserError("With a remote --storage-path, give --optuna-storage (e.g. a PostgreSQL URL).")
    if local and optuna_url == f"sqlite:///{experiment}/optuna.db":
        Path(experiment).mkdir(parents=True, exist_ok=True)  # the default storage lives inside
    try:
        storage = open_storage(optuna_url)
    except Exception as exc:  # noqa: BLE001 - any driver or connection error
        raise UserError(f"Cannot open the Optuna storage {redact_url(optuna_url)}: {exc}. Nothing was trained.") from exc
    if local:
        Path(experiment).mkdir(parents=True, exist_ok=True)
    job["optuna_storage"] = redact_url(optuna_url)  # job.json and MLflow never hold a password
    job["tracking_uri"] = redact_url(tracking_uri)
    tracker = SearchTracker(tracking_uri, job, Path(experiment) if local else None)
    try:
        job["mlflow_parent_run_id"] = tracker.start(resume=args.resume)
    except Exception as exc:  # noqa: BLE001 - the store went away since the check
        raise UserError(f"MLflow at {redact_url(tracking_uri)} failed as the job started: {exc}. Nothing was trained.") from exc
    if job_file is not None:
        write_json(job_file, job)
    audit_dir = Path(experiment) / AUDIT_DIR if local else tracker.files_dir(AUDIT_DIR)
    write_audit(audit, audit_dir)
    if dropped:
        write_dropped(dropped, audit_dir)
    tracker.submit("artifact", trial_id=None, path=str(audit_dir), artifact_path=AUDIT_DIR)

    base_config = {k: job[k] for k in ("arch", "epochs", "image_size", "batch_size", "weights", "seed")}
    trainable = tune.with_resources(
        tune.with_parameters(
            train_fracture_model, base_config=base_config, metric=metric, mode=mode, train_split=dataset.train, val_split=dataset.val,
            architecture=architecture(job["arch"]),
        ),
        {"cpu": args.cpus_per_trial, "gpu": gpus},
    )

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the trimmed table below instead of Ray's default output
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # expected: we checkpoint every epoch
    if args.resume:
        logger.info("Resuming %s", experiment)
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        searcher = make_searcher(
            search_space(args.arch), metric=metric, mode=mode, study_name=name, storage=storage,
            seed=job["sampler_seed"], num_samples=args.num_samples, max_epochs=args.epochs, sampler=args.sampler,
        )
        rungs = job["scheduler"]
        scheduler = make_scheduler(
            args.scheduler, metric=metric, rung_metric=rungs["rung_metric"], rung_mode=METRICS[rungs["rung_metric"]],
            max_epochs=args.epochs, rung_epochs=rungs["rung_epochs"], reduction_factor=args.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, search_alg=searcher, scheduler=scheduler, num_samples=args.num_samples,
                max_concurrent_trials=args.max_concurrent or None, reuse_actors=True,
                trial_name_creator=trial_name, trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=experiment.rsplit("/", 1)[0],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=CHECKPOINT_SCORE, checkpoint_score_order=mode),
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
                progress_reporter=search_progress(metric),
                callbacks=[MlflowLoggingCallback(tracker, baseline_point().keys()), DropOptimizerState(), *(callbacks or [])],
                verbose=1,
            ),
        )
    results = tuner.fit()
    tracker.reload_outbox()  # a restored experiment logged through its own (unpickled) tracker

    study = optuna.load_study(study_name=job["name"], storage=storage)
    lost = [t for t in study.trials if t.user_attrs.get(LOST_WITH_DRIVER)]
    for trial in lost:
        tracker.trial_lost(trial.user_attrs.get(RAY_TRIAL_ID, ""))
    finished = [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get(LOST_WITH_DRIVER)]
    total = job["num_samples"]
    if len(finished) < total:
        print(f"\nStopped with {len(finished)} of {total} trials finished; nothing is lost.\n{_resume_hint(job, args)}", file=sys.stderr)
        tracker.job_interrupted()
        return 130

    names = list(baseline_point())
    rows = trial_rows(results, names, metric, mode, job["epochs"], tie_order={t.user_attrs.get(RAY_TRIAL_ID): t.number for t in study.trials})
    best = best_single_run(rows)
    if math.isnan(best[CHECKPOINT_SCORE]):
        raise UserError(f"No trial of {job['name']} finished an epoch; see the trial errors under {experiment}.")

    confirmed: dict = {}  # trial id -> (row, Tune result) of each confirmation run

    def train_confirmation(runs: list) -> list[dict]:
        confirm_results = _fit_confirmation(runs, trainable, experiment, job, tracker, gpus, args)
        confirm_rows = trial_rows(confirm_results, [*names, "seed", CONFIRMS], metric, mode, job["epochs"])
        confirmed.update({trial_id_of(r): (row, r) for r, row in zip(confirm_results, _rows_by_result(confirm_results, confirm_rows))})
        return confirm_rows

    confirmation = None
    if job["confirmation"]["top"] > 0:
        try:
            confirmation = run_confirmation(
                rows, names=names, baseline=baseline_point(), seed=job["seed"], mode=mode, metric=metric, epochs=job["epochs"],
                epochs_trained=sum(r["epochs"] for r in rows), top=job["confirmation"]["top"],
                extra_seeds=job["confirmation"]["extra_seeds"], budget=job["confirmation"]["budget"], train=train_confirmation,
            )
        except ConfirmationInterrupted as stopped:
            print(f"\nStopped during confirmation ({stopped}); nothing is lost.\n{_resume_hint(job, args)}", file=sys.stderr)
            tracker.job_interrupted()
            return 130
    tested_id = (confirmation or {}).get("tested_run") or best["trial_id"]
    tested_row, tested_result = confirmed.get(tested_id) or (
        next(r for r in rows if r["trial_id"] == tested_id), next(r for r in results if trial_id_of(r) == tested_id)
    )
    test_split = load_split(data_root, "test", job["image_size"], cache_dir=args.cache_dir, max_bad_fraction=args.max_bad_fraction)
    winner_checkpoint = best_checkpoint_dir(tested_result, mode)
    report_dir = Path(experiment) if local else tracker.files_dir("report")
    test, clinical, winner_files = evaluate_checkpoint(
        winner_checkpoint / CHECKPOINT_FILE, dataset.val, test_split, job["batch_size"], report_dir, target_sensitivity=args.target_sensitivity, seed=job["seed"],
    )
    summary = {
        "experiment": job["name"],
        "arch": job["arch"],
        "experiment_path": experiment,
        "optuna_storage": redact_url(optuna_url),
        "metric": metric,
        "mode": mode,
        "num_trials": len(rows),
        "trials_stopped_early": sum(r["status"] == "stopped early" for r in rows),
        "trials_failed": sum(r["status"] == "failed" for r in rows),
        "trials_lost_with_driver": [{"optuna_number": t.number, "ray_trial_id": t.user_attrs.get(RAY_TRIAL_ID)} for t in lost],
        "epochs_trained": sum(r["epochs"] for r in rows),
        "epochs_budget": len(rows) * job["epochs"],
        "trial_hours": sum(r["seconds"] for r in rows) / 3600,
        "gpu_hours": sum(r["seconds"] for r in rows) / 3600 * gpus,
        "baseline": baseline_point(),
        "baseline_trial": next((r for r in rows if is_baseline(r, baseline_point())), None),
        "best_trial": best,
        "confirmation": confirmation,
        "tested_trial": tested_row,
        "test": test,
        "test_evaluated_for": tested_id,
        "generated_data": job["generated_data"],
        "clinical": clinical,
        "study_reported": study_reference(job["arch"]),
        "trials": rows,
        "job": job,
    }
    report_files = write_report(report_dir, summary, results, study) + winner_files
    if not local:  # the report and audit beside the checkpoints, as in a local experiment folder
        _publish(report_dir, experiment)
        _publish(audit_dir, f"{experiment}/{AUDIT_DIR}")
    model_dir = save_winner_model(winner_checkpoint, tracker.files_dir("model"))
    tracker.job_finished(summary, report_files, model_dir)
    print("\n" + format_summary(summary))
    print("\n" + where_to_look(experiment, redact_url(optuna_url), local))
    print(tracking_note(tracker))
    tracker.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    return run_search(args)


if __name__ == "__main__":
    sys.exit(run_main(main))
