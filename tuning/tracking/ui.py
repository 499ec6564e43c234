"""The project's experiments in MLflow's UI: the model-training view, a runs table whose columns
are the ones that matter for comparing trials, and links straight to that table.

What MLflow 3.17's UI goes by (read from its bundle, checked in Chromium by tests/test_ui_landing.py):
- An experiment opens on the page of one switch per browser, "GenAI" (an "Overview" of traces)
  or "Model training" (the runs table): a link's `?workflowType=`, else the browser's last choice,
  else GenAI. The experiment tag `mlflow.experimentKind` chose in earlier 3.x releases; 3.17 reads
  it no more, and no server setting changes the default.
- The runs table shows no metric or tag column until a user picks some; a browser keeps its pick
  per experiment. A saved view (the "Views" menu; one experiment tag each) holds a layout anyone
  can open.
So the links here carry the switch, each experiment keeps the kind tag and the saved view `Trials`,
and `python -m mlflow_server` makes both the defaults of browsers that chose nothing yet
(mlflow_server.app).
"""

from __future__ import annotations

import json
from typing import Iterable, Mapping

from tuning.tracking.names import (
    AT_BEST_EPOCH,
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    RUNS_VIEW_NAME,
    RUNS_VIEW_TAG,
    STATE_TAG,
    STOPPED_EARLY_TAG,
    best_metric_name,
)

MODEL_TRAINING_WORKFLOW = "machine_learning"  # the switch's "Model training", as `?workflowType=` names it


def runs_table_url(base: str, experiment_id: str | None) -> str:
    """The experiment's runs table in the model-training view, whatever the browser chose last;
    the UI's front page while the experiment is not known yet."""
    base = base.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType={MODEL_TRAINING_WORKFLOW}" if experiment_id else base


def trials_columns(selection_metrics: Iterable[str]) -> list[str]:
    """The `Trials` view's columns: each selection metric at the best epoch, sensitivity and
    specificity there, the trial's state and whether early stopping cut it."""
    selection = list(selection_metrics)
    metrics = [*selection, *(m for m in AT_BEST_EPOCH if m not in selection)]
    return [_column("metrics", best_metric_name(m)) for m in metrics] + [_column("tags", t) for t in (STATE_TAG, STOPPED_EARLY_TAG)]


def experiment_tags(current: Mapping[str, str], metric: str, now_ms: int) -> dict[str, str]:
    """The tags an experiment lacks for the UI: the model-training kind (a kind someone chose is
    kept) and the `Trials` view, with `metric`'s best-epoch column added where a job selects on
    a metric the view does not show yet. Empty when nothing is missing."""
    missing = {} if EXPERIMENT_KIND_TAG in current else {EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
    if RUNS_VIEW_TAG not in current:
        return {**missing, RUNS_VIEW_TAG: _view(trials_columns([metric]), now_ms, now_ms)}
    saved = _parsed(current[RUNS_VIEW_TAG])
    column = _column("metrics", best_metric_name(metric))
    if saved is None or column in saved[1]:  # None: saved again from MLflow's UI in a form not read here; theirs
        return missing
    envelope, columns = saved  # columns someone saved over the view stay; the new metric's goes first
    return {**missing, RUNS_VIEW_TAG: _view([column, *columns], envelope["createdAt"], now_ms)}


def view_layout(view: str | None) -> str | None:
    """The runs-table layout a `Trials` view holds, as MLflow keeps a layout (JSON of the columns,
    and of filters or sort where saved); None for no view or one in a form not read here."""
    saved = _parsed(view) if view is not None else None
    return saved[0]["state"] if saved else None


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the runs table's column id: metrics.`best_val_fracture_f1`, tags.`state`


def _view(columns: list[str], created_ms: int, updated_ms: int) -> str:
    """A saved view as MLflow's "Views" menu stores it: its name and times around the layout's JSON."""
    layout = json.dumps({"selectedColumns": columns})
    return json.dumps({"name": RUNS_VIEW_NAME, "createdAt": created_ms, "updatedAt": updated_ms, "state": layout})


def _parsed(view: str) -> tuple[dict, list[str]] | None:
    """A saved view's envelope and columns; None for a form not read here."""
    try:
        envelope = json.loads(view)
        columns = json.loads(envelope["state"])["selectedColumns"]
        int(envelope["createdAt"])
    except (ValueError, KeyError, TypeError):
        return None
    return (envelope, columns) if isinstance(columns, list) else None
