"""Where MLflow keeps things when nobody configured anything: one folder, shared by the server
and by `tuning` (so a first user's search shows up when they start the server to browse it).

    <store>/mlflow.db     experiments, runs, metrics, the model registry (SQLite)
    <store>/artifacts/    plots, tables, checkpoints, registered models
    <store>/auth/         users database and secret key, with --auth only

<store> is $FRACTURE_MLFLOW_DIR, else ./runs/mlflow (beside the searches in ./runs/tune).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STORE = "./runs/mlflow"


def store_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("FRACTURE_MLFLOW_DIR") or DEFAULT_STORE).expanduser().resolve()


def backend_uri(store: Path) -> str:
    return f"sqlite:///{store / 'mlflow.db'}"


def artifacts_dir(store: Path) -> Path:
    return store / "artifacts"
