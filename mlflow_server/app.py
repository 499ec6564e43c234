"""The app `python -m mlflow_server` serves: MLflow's own, plus fracture-tune's page `/leaderboard`.

Registered as the MLflow app plugin `fracture-tune` (pyproject entry point `mlflow.app`), so
MLflow's server runs it in its workers; with --auth it is wrapped by MLflow's basic-auth like
every other route, so the page needs a login too, and shows each user only the experiments they may read.
"""

from __future__ import annotations

import base64
import io
import os

AUTH_ENV = "FRACTURE_MLFLOW_AUTH"
MAX_REQUEST_ENV = "FRACTURE_MLFLOW_MAX_REQUEST_BYTES"
DEFAULT_MAX_REQUEST_MB = 8.0  # a search's largest write is a batch of 1,000 metrics, well under 1 MB
ARTIFACT_ROUTES = ("/api/2.0/mlflow-artifacts/", "/ajax-api/2.0/mlflow-artifacts/")  # uploads: large by nature
LEADERBOARD_ROUTE = "/leaderboard"


def create_app():
    from mlflow.server import app

    if "fracture_leaderboard" not in app.view_functions:
        app.add_url_rule(LEADERBOARD_ROUTE, "fracture_leaderboard", leaderboard_page, methods=["GET"])
        app.before_request(_cap_request_body)
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
