"""The MLflow names a search writes and the leaderboard reads: stated once, here."""

from __future__ import annotations

EXPERIMENT_PREFIX = "fracture-"
CHAMPION = "champion"  # the registered model's alias for the best version on validation
ROLE_TAG = "role"  # what a run is: SEARCH (a job's parent), TRIAL or CONFIRMATION (its children)
SEARCH_ROLE, TRIAL_ROLE, CONFIRMATION_ROLE = "search", "trial", "confirmation"
JOB_TAG = "job_name"
TRIAL_TAG = "ray_trial_id"
GENERATED_DATA_TAG = "generated_data"
DATA_FILES_TAG = "audit_files"  # the data's image files: the job's audit summary "files", tagged audit_<key>
# Parent-run metrics of a finished job.
TRIALS_METRIC, STOPPED_EARLY_METRIC = "trials", "trials_stopped_early"
TRIAL_HOURS_METRIC, GPU_HOURS_METRIC = "trial_hours", "gpu_hours"
# A trial run's tags: how it ended (fracture_models.metrics.run_state) and whether early stopping cut it.
STATE_TAG, STOPPED_EARLY_TAG = "state", "stopped_early"
# A trial's run that restarted from an earlier epoch: the new run names the old (deleted) one, and the old the new.
RESTARTED_FROM_TAG, RESTARTED_AS_TAG = "restarted_from_run", "restarted_as_run"
# A trial run's metrics at its best epoch (best_metric_name), beside the selection metric's.
AT_BEST_EPOCH = ("val_fracture_sensitivity", "val_fracture_specificity")
# How MLflow's UI shows an experiment (tuning.tracking.ui): its kind, the tag MLflow's own kind selector
# writes, and the saved runs-table view `Trials`, which MLflow's "Views" menu keeps as an experiment tag.
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
RUNS_VIEW_TAG, RUNS_VIEW_NAME = "mlflow.sharedViewState.fracture-trials", "Trials"


def experiment_name(arch: str) -> str:
    """One MLflow experiment per architecture; the registered model of its winners has the same name."""
    return f"{EXPERIMENT_PREFIX}{arch}"


def confirm_metric_name(subject: str, statistic: str) -> str:
    """A parent run's confirmation metric: confirm_winner_mean, confirm_baseline_sd, confirm_winner_runs."""
    return f"confirm_{subject}_{statistic}"


def best_metric_name(metric: str) -> str:
    """The parent and trial runs' metric holding `metric` at the best epoch: best_val_fracture_f1."""
    return f"best_{metric}"


# Each trial's best checkpoint as an MLflow 3 logged model of its run (tuning.tracking.models).
MODEL_TYPE = "fracture-classifier"
CHECKPOINT_SCORE_TAG = "checkpoint_score"  # a logged model's rank: the metric at its epoch, demoted for a one-class model


def run_name(role: str, trial_id: str) -> str:
    """A trial's or confirmation run's MLflow run name; its logged model has the same name."""
    return f"{'confirm' if role == CONFIRMATION_ROLE else 'trial'}_{trial_id}"
