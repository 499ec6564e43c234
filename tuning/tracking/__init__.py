"""MLflow tracking of a search, done on the driver: one parent run per job, one child run per trial.

Trials may run on any Ray node; only the driver talks to MLflow, so workers need no tracking
URI, credentials or network route to the server. Every write goes through an ordered outbox:
when the server is unreachable, the writes wait in `<experiment>/mlflow_outbox.jsonl` (training
goes on) and are sent, in order, as soon as it answers again, at the latest when the job ends.
Whatever is still pending then is sent by `python -m tuning.tracking <experiment folder>`.

    names        the MLflow names a search writes and the leaderboard reads
    store        the local store's folder (shared with `python -m mlflow_server`)
    connect      resolving the tracking URI; failing fast when it does not answer
    environment  git commit and package versions of a job
    outbox       ordered writes that survive an outage
    tracker      the job's parent and child runs
    registry     the winner's model version and the `champion` alias
    replay       `python -m tuning.tracking`: send what an outage left pending

Nothing here imports Ray: the Tune callbacks are in `tuning.callbacks`.
"""

from tuning.tracking.connect import check_reachable, resolve_tracking_uri
from tuning.tracking.environment import git_commit, package_versions
from tuning.tracking.names import CHAMPION, CONFIRMATION_ROLE, experiment_name
from tuning.tracking.registry import champion_decision, save_winner_model
from tuning.tracking.tracker import SearchTracker, tracking_note

__all__ = [
    "CHAMPION",
    "CONFIRMATION_ROLE",
    "SearchTracker",
    "champion_decision",
    "check_reachable",
    "experiment_name",
    "git_commit",
    "package_versions",
    "resolve_tracking_uri",
    "save_winner_model",
    "tracking_note",
]


def __getattr__(name: str):
    """Experiments saved before the callbacks moved pickled them as tuning.tracking.MlflowLoggingCallback."""
    if name == "MlflowLoggingCallback":
        from tuning.callbacks import MlflowLoggingCallback

        return MlflowLoggingCallback
    raise AttributeError(f"module 'tuning.tracking' has no attribute {name!r}")
