"""The team's MLflow tracking server: `python -m mlflow_server` (stores, auth, a safe bind)."""
