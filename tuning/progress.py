"""What the user sees while a search runs: Ray Tune's trial table, trimmed, and nothing else of Ray's.

The table keeps the columns that matter (hyperparameters, epoch, the search metric, val loss),
short trial names, and drops Ray's own lines (its temporary folders). Ray's, Optuna's and
MLflow's routine log lines are kept out of the terminal; warnings and errors still show.
"""

from __future__ import annotations

import logging

from ray.tune import CLIReporter

_RAY_ONLY_LINES = ("Result logdir:",)
_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


def trial_name(trial) -> str:
    """`trial_<id>` instead of `train_fracture_model_<id>`: the id is what summaries and MLflow show."""
    return f"trial_{trial.trial_id}"


class SearchProgress(CLIReporter):
    """CLIReporter without the lines that only concern Ray."""

    def report(self, trials, done: bool, *sys_info: str) -> None:
        text = self._progress_str(trials, done, *sys_info)
        print("\n".join(line for line in text.splitlines() if not line.startswith(_RAY_ONLY_LINES)), flush=True)


def search_progress(metric: str) -> SearchProgress:
    return SearchProgress(
        metric_columns={"training_iteration": "epoch", metric: metric.replace("val_", "val "), "val_loss": "val loss"},
        parameter_columns={"lr": "lr", "step_size": "step", "gamma": "gamma", "aug_strength": "aug"},
        max_report_frequency=20,
        sort_by_metric=True,  # by TuneConfig's metric and mode
        max_progress_rows=15,
    )


class _DropNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_TOKEN_NOTICE)


def quiet_libraries() -> None:
    """Keep routine notices of Ray and Optuna out of the terminal (call before ray.init)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):  # store creation and migrations narrate every step
        logging.getLogger(name).setLevel(logging.WARNING)
    # Ray >= 2.60 turns token auth on for a local cluster and says so at every start: the default
    # we want, not something for the user to act on.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_DropNotice())
