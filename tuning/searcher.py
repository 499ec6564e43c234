"""Optuna TPE behind Ray Tune, with a persistent study and early-stopped trials marked PRUNED.

Stock `OptunaSearch` tells Optuna COMPLETE for a trial that ASHA stopped early, with its last
(partial) value. Here such a trial is told PRUNED instead, so TPE and optuna-dashboard see it
for what it is, and each Optuna trial carries its Ray Tune trial id. A trial that completes is
told the score the project selects on, its best epoch's (`checkpoint_score`), not its last
epoch's, so TPE learns from that number and Optuna's best trial is the search's best trial. The
objective carries the metric's name.
"""

from __future__ import annotations

import abc
import logging
import time
import warnings
from typing import Mapping

import optuna
import sqlalchemy.exc
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from fracture_models.metrics import is_better
from tuning.search_space import Range, baseline_point, to_optuna
from tuning.trainable import CHECKPOINT_SCORE

RAY_TRIAL_ID = "ray_trial_id"
LOST_WITH_DRIVER = "lost_with_driver"  # user attr of an Optuna trial whose driver died before Tune saved it
REQUEUED_FROM = "requeued_from"  # user attr of the trial that runs a lost trial's configuration again

logger = logging.getLogger(__name__)


class StudyAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that knows the epoch budget, so it can tell early stopping from the end."""

    def __init__(self, *args, max_epochs: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._best_scores: dict[str, float] = {}  # trial id -> its best epoch's checkpoint score so far
        with warnings.catch_warnings():  # experimental in older Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names([self._metric])

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)
        score = result.get(CHECKPOINT_SCORE)
        best = self._best_scores.get(trial_id)
        if score is not None and (best is None or is_better(score, best, self._mode)):
            self._best_scores[trial_id] = float(score)

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ID, trial_id)
        return config

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.__dict__.setdefault("_best_scores", {})  # saved by a version that told Optuna the last epoch
        self._requeue_lost_trials()

    def _requeue_lost_trials(self) -> None:
        """After a driver died (SIGKILL, a lost machine), Optuna can hold RUNNING trials that Ray
        Tune never saved: they started after its last experiment snapshot and cannot resume.
        Each is recorded as FAIL with the reason, and its configuration is queued to run again.
        One killed while Optuna was still drawing it has no whole configuration: nothing of it
        ran, and Tune draws a fresh trial in its place."""
        known = {t.number for t in self._ot_trials.values()}
        for lost in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if lost.number in known:
                continue
            optuna.trial.Trial(self._ot_study, lost._trial_id).set_user_attr(LOST_WITH_DRIVER, True)
            self._ot_study.tell(lost.number, state=optuna.trial.TrialState.FAIL)
            config = self._configuration_of(lost)
            if config is not None:
                self._ot_study.enqueue_trial(config, user_attrs={REQUEUED_FROM: lost.number})

    def _configuration_of(self, trial: optuna.trial.FrozenTrial) -> dict | None:
        """Every parameter of the space for `trial`: its own, or those it was queued with (the
        baseline, a requeued trial) when it died between Optuna's ask and the last parameter's write."""
        for config in (trial.params, trial.system_attrs.get("fixed_params") or {}):
            if set(config) >= set(self._space):
                return {name: config[name] for name in self._space}
        return None

    def _already_told(self, trial_id: str) -> bool:
        """A trial that finished just before the driver died is resumed by Tune and ends again."""
        ot_trial = self._ot_trials.get(trial_id)
        return ot_trial is not None and self._ot_study.get_trials(deepcopy=False)[ot_trial.number].state.is_finished()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._already_told(trial_id):
            self._completed_trials.add(trial_id)
            return
        stopped_early = (
            not error
            and result is not None
            and trial_id not in self._completed_trials
            and result.get(TRAINING_ITERATION, self._max_epochs) < self._max_epochs
        )
        if not stopped_early:
            best = self._best_scores.get(trial_id)
            if result is not None and not error and best is not None:
                result = {**result, self._metric: best}
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("stopped_at_epoch", int(result[TRAINING_ITERATION]))
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def open_storage(url: str, attempts: int = 5) -> optuna.storages.BaseStorage:
    """An RDB storage object (OptunaSearch wants an object, not a URL) that retries a database
    that went away for a moment (`RetryingStorage`).

    Processes that open a fresh storage at once (the search and optuna-dashboard, two drivers on
    the team database) race to create its tables; one that loses tries again and finds them.
    """
    engine_kwargs = {"pool_pre_ping": True} if not url.startswith("sqlite") else {}
    for attempt in range(1, attempts):
        try:
            return _retrying(optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs))
        except sqlalchemy.exc.DatabaseError as exc:
            if not _lost_schema_race(exc):
                raise
            time.sleep(0.1 * attempt)
    return _retrying(optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs))


def _retrying(storage: optuna.storages.RDBStorage) -> "RetryingStorage":
    """`storage` behind Optuna's own trial cache (what Optuna adds when given an RDB storage, and
    not to a wrapper: without it every sampler call reloads every trial), then the retries."""
    return RetryingStorage(optuna.storages.get_storage(storage))


RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)  # 30 s in all, then the error stops the job (tuning.run says how to resume)


def _connection_error(exc: BaseException) -> sqlalchemy.exc.DBAPIError | None:
    """The database error behind `exc` (Optuna wraps it in StorageInternalError) when it is a
    connection lost or refused (a restart, a failover, a dropped network); None for a full disk,
    a local file's I/O error or a bad statement, which waiting does not mend."""
    while exc is not None and not isinstance(exc, sqlalchemy.exc.DBAPIError):
        exc = exc.__cause__
    if exc is None or any(sign in str(exc.orig) for sign in ("disk is full", "No space left", "could not extend file", "disk I/O error")):
        return None
    transient = exc.connection_invalidated or isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))
    return exc if transient else None


def _retried(name: str):
    def call(self, *args, **kwargs):
        for delay in (*RETRY_DELAYS_S, None):
            try:
                return getattr(self.inner, name)(*args, **kwargs)
            except (sqlalchemy.exc.DBAPIError, optuna.exceptions.StorageInternalError) as exc:
                lost = _connection_error(exc)
                if delay is None or lost is None:
                    raise
                logger.warning("Optuna storage unreachable (%s); %s again in %.1f s", " ".join(str(lost.orig).split())[:160], name, delay)
                time.sleep(delay)

    call.__name__ = call.__qualname__ = name
    return call


def _retrying_methods(cls):
    for name in _STORAGE_METHODS:
        setattr(cls, name, _retried(name))
    abc.update_abstractmethods(cls)
    return cls


_STORAGE_METHODS = [name for name, value in vars(optuna.storages.BaseStorage).items() if callable(value) and not name.startswith("_")]


@_retrying_methods
class RetryingStorage(optuna.storages.BaseStorage):
    """An Optuna storage whose every call is tried again, with a bounded backoff (`RETRY_DELAYS_S`),
    when the database drops or refuses the connection for a moment; other errors, and a fault that
    outlasts the backoff, are raised. A write whose commit the server made but whose answer was
    lost with the connection is sent again: for Optuna's writes (set a value, a state, an
    attribute) that is harmless; a new trial could be made twice, a window of milliseconds."""

    def __init__(self, inner: optuna.storages.BaseStorage) -> None:
        self.inner = inner

    def __getattr__(self, name: str):  # the RDB storage's own attributes (url, engine, ...)
        if name == "inner":  # not set yet (unpickling)
            raise AttributeError(name)
        inner = self.inner
        return getattr(inner, name) if hasattr(inner, name) else getattr(getattr(inner, "_backend", inner), name)


def _lost_schema_race(exc: sqlalchemy.exc.DatabaseError) -> bool:
    """Another process created a table, or stamped the schema's version row, first."""
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in str(exc.orig)


def make_searcher(
    space: Mapping[str, Range],
    *,
    metric: str,
    mode: str,
    study_name: str,
    storage: optuna.storages.BaseStorage,
    seed: int,
    num_samples: int,
    max_epochs: int,
    sampler: str = "tpe",
) -> StudyAwareOptunaSearch:
    """The baseline first, then TPE seeded by `seed` (random start-up trials scaled to the budget)
    or, with sampler="random", seeded random search (the benchmarks' reference)."""
    if sampler == "random":
        optuna_sampler = optuna.samplers.RandomSampler(seed=seed)
    elif sampler == "tpe":
        startup = min(10, max(3, num_samples // 5))
        with warnings.catch_warnings():  # multivariate TPE is "experimental" but long-standing
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna_sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)
    else:
        raise ValueError(f"unknown sampler {sampler!r}")
    return StudyAwareOptunaSearch(
        space=to_optuna(space),
        metric=metric,
        mode=mode,
        points_to_evaluate=[baseline_point()],
        sampler=optuna_sampler,
        study_name=study_name,
        storage=storage,
        max_epochs=max_epochs,
    )
