"""The app `python -m mlflow_server` serves: MLflow's own, plus fracture-tune's page `/leaderboard`.

Registered as the MLflow app plugin `fracture-tune` (pyproject entry point `mlflow.app`), so
MLflow's server runs it in its workers; with --auth it is wrapped by MLflow's basic-auth like
every other route, so the page needs a login too, and shows each user only the experiments they may read.

MLflow's own page gets a few lines of script that preset MLflow's per-browser choices where a
browser has made none (`ui_presets`): the model-training view, the assistant closed, and each
project experiment's runs-table columns from its saved view `Trials` (tuning.tracking.ui says why
MLflow 3.17 offers no other way).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os

AUTH_ENV = "FRACTURE_MLFLOW_AUTH"
MAX_REQUEST_ENV = "FRACTURE_MLFLOW_MAX_REQUEST_BYTES"
DEFAULT_MAX_REQUEST_MB = 8.0  # a search's largest write is a batch of 1,000 metrics, well under 1 MB
ARTIFACT_ROUTES = ("/api/2.0/mlflow-artifacts/", "/ajax-api/2.0/mlflow-artifacts/")  # uploads: large by nature
LEADERBOARD_ROUTE = "/leaderboard"
MLFLOW_PAGE_ENDPOINT = "serve"  # MLflow's view function for its single page, index.html (mlflow.server)

logger = logging.getLogger("mlflow_server")

# Where MLflow 3.17's page keeps a browser's choices (localStorage; each value is JSON).
WORKFLOW_KEY = "mlflow.workflowType_v1"  # the GenAI / Model training switch
ASSISTANT_OPENED_KEY = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"  # true: the assistant opened itself once already


def runs_layout_key(experiment_id: str) -> str:
    """Where the page keeps a browser's runs-table layout of one experiment (columns, sort, filters)."""
    return f"MLflowLocalStorage-1.1-ExperimentPage-{json.dumps([experiment_id])}-ReactComponentState"


# Sets each preset only where this browser holds no value: a choice made in MLflow's UI stays.
PRESETS_SCRIPT = (
    "<script>/* fracture-tune: MLflow's defaults for this project (python -m mlflow_server) */"
    "(function (presets) { try { for (const [key, value] of Object.entries(presets)) {"
    " if (window.localStorage.getItem(key) === null) window.localStorage.setItem(key, value); } }"
    " catch (error) { /* no storage: MLflow's own defaults */ } })(%s);</script>"
)


def create_app():
    from mlflow.server import app

    if "fracture_leaderboard" not in app.view_functions:
        app.add_url_rule(LEADERBOARD_ROUTE, "fracture_leaderboard", leaderboard_page, methods=["GET"])
        app.before_request(_cap_request_body)
        app.after_request(_with_presets)
    if os.environ.get(AUTH_ENV) == "1":
        from mlflow.server import auth

        # Basic-auth refuses (403) any route it has no validator for, even to a logged-in user; the
        # page is for every logged-in user, and filters its rows by their permissions itself.
        auth.BEFORE_REQUEST_VALIDATORS[(LEADERBOARD_ROUTE, "GET")] = _any_logged_in_user
        return auth.create_app(app)  # FastAPI-wrapped under uvicorn, as MLflow's own plugin does
    if os.environ.get("_MLFLOW_SGI_NAME") == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app


def _any_logged_in_user() -> bool:
    """Basic-auth asks a route's validator only once the login has passed (anonymous: 401)."""
    return True


def _readable_experiments():
    """With --auth, the filter that keeps the experiments the logged-in user may read: MLflow's own,
    the one its run search applies (admins: all; grants, then the server's default permission)."""
    if os.environ.get(AUTH_ENV) != "1":
        return None
    from mlflow.server.auth import filter_experiment_ids

    return filter_experiment_ids


def _with_presets(response):
    """MLflow's page with the presets script first in its head. Never cached: the presets list
    the store's experiments, which a cached copy would miss."""
    from flask import request

    if request.endpoint != MLFLOW_PAGE_ENDPOINT or response.status_code != 200 or response.mimetype != "text/html":
        return response
    response.direct_passthrough = False  # MLflow sends the file as a stream
    page = response.get_data(as_text=True)
    if "<head>" not in page:
        return response
    script = PRESETS_SCRIPT % _htmlsafe_json(ui_presets())
    response.set_data(page.replace("<head>", f"<head>{script}", 1))
    response.headers["Cache-Control"] = "no-store"
    for validator in ("ETag", "Last-Modified"):
        response.headers.pop(validator, None)
    return response


def ui_presets() -> dict[str, str]:
    """localStorage key -> value: the model-training view, the assistant not opening by itself (it
    does once on a loopback address; MLflow has no setting to hide it there), and the runs-table
    layout of each project experiment the user may read that has a `Trials` view."""
    from mlflow import MlflowClient
    from mlflow.server import BACKEND_STORE_URI_ENV_VAR

    from tuning.tracking.names import EXPERIMENT_PREFIX, RUNS_VIEW_TAG
    from tuning.tracking.ui import MODEL_TRAINING_WORKFLOW, view_layout

    presets = {WORKFLOW_KEY: json.dumps(MODEL_TRAINING_WORKFLOW), ASSISTANT_OPENED_KEY: json.dumps(True)}
    try:
        client = MlflowClient(os.environ[BACKEND_STORE_URI_ENV_VAR])
        experiments = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'", max_results=1000)
        readable = _readable_experiments()
        allowed = set(readable([e.experiment_id for e in experiments])) if readable else {e.experiment_id for e in experiments}
    except Exception:  # noqa: BLE001 - the page must load; it then shows MLflow's default columns
        logger.exception("Could not read the project's experiments for the UI presets")
        return presets
    for experiment in experiments:
        layout = view_layout(experiment.tags.get(RUNS_VIEW_TAG))
        if layout is not None and experiment.experiment_id in allowed:
            presets[runs_layout_key(experiment.experiment_id)] = layout
    return presets


def _htmlsafe_json(value) -> str:
    """JSON that cannot end the script element it sits in (Jinja2's `tojson`)."""
    from jinja2.utils import htmlsafe_json_dumps

    return str(htmlsafe_json_dumps(value))


def _cap_request_body():
    """Refuse an API request body over the cap with 413 before it is read: one logged-in user's
    200 MB JSON would otherwise take the worker's memory (and the server) down."""
    from flask import Response, request

    limit = int(os.environ.get(MAX_REQUEST_ENV) or DEFAULT_MAX_REQUEST_MB * 2**20)
    if request.path.startswith(ARTIFACT_ROUTES):
        return None
    if (request.content_length or 0) > limit:
        return Response(
            f"Request body over {limit:,} bytes (python -m mlflow_server --max-request-mb)\n", status=413, mimetype="text/plain"
        )
    request.max_content_length = limit  # a body without Content-Length (chunked) is cut off at the cap too
    return None


def leaderboard_page():
    """The leaderboard as HTML: ?arch=&team=&by=&metric=, links into this server's UI, a plot."""
    from flask import Response, request
    from mlflow import MlflowClient
    from mlflow.server import BACKEND_STORE_URI_ENV_VAR

    from fracture_models.errors import UserError
    from fracture_models.metrics import DEFAULT_SELECTION_METRIC
    from fracture_models.models import list_models
    from tuning.leaderboard import check_metric, collect_jobs, rank, render_html, study_rows

    arch = request.args.get("arch") or None
    team = request.args.get("team") or None
    by = request.args.get("by") if request.args.get("by") in ("team", "user", "arch") else None
    metric = request.args.get("metric") or DEFAULT_SELECTION_METRIC
    form = {"architectures": list_models(), "arch": arch or "", "team": team or "", "metric": metric, "error": None}
    try:
        check_metric(metric)
    except UserError as exc:  # a typo in the form: say so, and show the default ranking
        form["error"], metric = str(exc), DEFAULT_SELECTION_METRIC
    store = os.environ[BACKEND_STORE_URI_ENV_VAR]
    # The page reads the store directly, beside MLflow's API, so it applies the user's permissions itself.
    jobs = collect_jobs(MlflowClient(store), request.host_url, metric, arch=arch, team=team, readable=_readable_experiments())
    groups = rank(jobs, metric, by=by)
    hint = "No finished searches yet. Run one with: python -m tuning.run --synthetic --arch cnn --num-samples 8"
    page = render_html(groups, study_rows(arch), metric, hint, form=form, plot=_comparison_plot(groups, study_rows(None)))
    return Response(page, mimetype="text/html")


def _comparison_plot(groups, study: list[dict]) -> str | None:
    """Each architecture's best winner on test (accuracy) beside the study's, as a base64 PNG."""
    best: dict[str, float] = {}
    for group in groups:
        for job in group.jobs:
            accuracy = job.test.get("test_accuracy")
            if accuracy is not None and accuracy > best.get(job.arch, -1):
                best[job.arch] = accuracy
    if not best:
        return None
    from matplotlib.figure import Figure

    names = [row["arch"] for row in study]
    figure = Figure(figsize=(6, 3.4), dpi=100)
    ax = figure.subplots()
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [best.get(n, 0) for n in names], width=0.4, label="best search here (test accuracy)")
    ax.bar([x + 0.2 for x in xs], [row["test_accuracy"] for row in study], width=0.4, label="the study (reported)")
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 1.25)  # headroom: the legend sits above the bars, never on them
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, loc="upper center", ncol=2, frameon=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()
