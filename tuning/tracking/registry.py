"""The model registry: a job's winner as this project's MLflow image model (`tuning.tracking.models`),
and the `champion` alias."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

from fracture_models.metrics import is_better
from tuning.tracking.names import CHAMPION, experiment_name

logger = logging.getLogger("tuning.tracking")


def register_winner(client, arch: str, parent_run_id: str, model_dir: str, description: dict) -> None:
    """Log the winner as an MLflow PyTorch model, register a version, move `champion` if it is better."""
    from mlflow.exceptions import MlflowException

    name = experiment_name(arch)
    artifact_uri = client.get_run(parent_run_id).info.artifact_uri
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{parent_run_id}'")
    if existing:
        return  # registered before an outage cut the answer short, or by an earlier replay
    client.log_artifacts(parent_run_id, model_dir, "model")
    try:
        client.create_registered_model(name, description=f"fracture-tune {arch}: winners of searches, champion = best validation")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {k: str(v) for k, v in description.items()}
    version = client.create_model_version(name, source=f"{artifact_uri}/model", run_id=parent_run_id, tags=tags)
    decision = champion_decision(client, name, description)
    client.set_model_version_tag(name, version.version, "champion_decision", decision)
    if decision.startswith("promoted"):
        client.set_registered_model_alias(name, CHAMPION, version.version)
    client.set_tag(parent_run_id, "registered_model_version", f"{name}/{version.version}")
    client.set_tag(parent_run_id, "champion_decision", decision)
    logger.info("Registered %s version %s: %s", name, version.version, decision)


def champion_decision(client, name: str, candidate: Mapping) -> str:
    """'promoted ...' when `candidate` beats the champion on the same data and metric, else why not."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return "promoted: the first version, so it is the champion"
    tags = current.tags
    if tags.get("data_fingerprint") != candidate["data_fingerprint"]:
        return f"kept version {current.version}: it was selected on other data (fingerprint {tags.get('data_fingerprint')})"
    if tags.get("metric") != candidate["metric"]:
        return f"kept version {current.version}: it was selected on {tags.get('metric')}, not {candidate['metric']}"
    if "value" not in tags:
        return f"kept version {current.version}: it has no validation value to compare (set by hand?); move the alias by hand"
    old, new = float(tags["value"]), float(candidate["value"])
    if is_better(new, old, candidate["mode"]):
        return f"promoted: {candidate['metric']} {new:.4f} beats version {current.version}'s {old:.4f}"
    return f"kept version {current.version}: its {candidate['metric']} {old:.4f} is not beaten by {new:.4f}"


def save_winner_model(checkpoint_dir: Path, out_dir: Path, clinical: Mapping | None = None) -> Path:
    """The winner's checkpoint as this project's MLflow model (`tuning.tracking.models`): it takes
    image bytes or paths and decides at the operating threshold the clinical report chose on validation."""
    from fracture_models.engine import load_checkpoint
    from fracture_models.predict import OperatingPoint, model_file
    from tuning.tracking.models import save_fracture_model
    from tuning.trainable import CHECKPOINT_FILE

    point = OperatingPoint.from_clinical(clinical) if clinical else None
    return save_fracture_model(model_file(load_checkpoint(checkpoint_dir / CHECKPOINT_FILE), point), out_dir)
