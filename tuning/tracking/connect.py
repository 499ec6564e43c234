"""Where the tracking store is and whether it answers, checked before any training."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fracture_models.errors import UserError
from fracture_models.records import redact_url
from tuning.tracking.store import backend_uri, store_dir


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the local store `python -m mlflow_server` serves."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or backend_uri(store_dir())


def configure_client() -> None:
    # The driver must not stall for minutes on a dead server: fail fast, the outbox retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # the end of the job prints where runs are


_AUTH_REFUSED = re.compile(r"(error code|status code|Response code)\D{0,5}40[13]\b|Unauthorized|Permission denied", re.I)


def check_reachable(uri: str) -> None:
    """Fail before any training when the tracking server does not answer or refuses us."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure_client()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        with _one_opener_at_a_time(uri):
            MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as exc:
        if _AUTH_REFUSED.search(str(exc)) or exc.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            raise UserError(
                f"The MLflow server at {redact_url(uri)} refused these credentials: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to an account that may write."
            ) from exc
        raise UserError(_unreachable(uri, exc)) from exc
    except Exception as exc:  # noqa: BLE001 - connection errors of any HTTP or DB driver
        raise UserError(_unreachable(uri, exc)) from exc


@contextmanager
def _one_opener_at_a_time(uri: str) -> Iterator[None]:
    """The first process to open a fresh SQLite store creates its tables and runs its migrations;
    two at once collide ("duplicate column name", "table ... already exists", a stray
    _alembic_tmp_ table) and can leave the store broken, which a retry cannot mend. So the
    processes of this machine open it one after another, under an flock beside mlflow.db."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    database = Path(uri.removeprefix("sqlite:///"))
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held for seconds at most, while the tables are made
        yield


_REASONS = re.compile(
    r"Connection refused|Name or service not known|No route to host|timed out|Temporary failure in name resolution|"
    r"Network is unreachable|certificate verify failed|unable to open database file|No such file or directory",
    re.I,
)


def _reason(exc: Exception, limit: int = 200) -> str:
    """The part of a client error a user can act on, whole words only."""
    text = " ".join(str(exc).split())
    found = _REASONS.search(text)
    if found:
        return found.group(0)
    if not text:
        return type(exc).__name__
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def _unreachable(uri: str, exc: Exception) -> str:
    return (
        f"Cannot reach the MLflow tracking store at {redact_url(uri)} ({_reason(exc)}). Start it with `python -m mlflow_server`, "
        "fix --tracking-uri / $MLFLOW_TRACKING_URI, or drop both to log to the local store. Nothing was trained."
    )


def is_outage(exc: Exception) -> bool:
    """True for errors that mean 'try again later' (no route, refused, timeout, server error)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or "API request to" in str(exc) or "Max retries exceeded" in str(exc)
    return False
