"""The model registry: a job's winner as an MLflow PyTorch model, and the `champion` alias."""

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


def save_winner_model(checkpoint_dir: Path, out_dir: Path) -> Path:
    """The winner's checkpoint as an MLflow PyTorch model folder (MLmodel, weights, signature)."""
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from fracture_models.engine import load_checkpoint
    from fracture_models.models import create_model
    from tuning.trainable import CHECKPOINT_FILE

    checkpoint = load_checkpoint(checkpoint_dir / CHECKPOINT_FILE)
    config = checkpoint["config"]
    model = create_model(config["arch"], weights="none", image_size=config["image_size"])
    model.load_state_dict(checkpoint["model"])
    model.eval()
    # Saved as torch.export's pt2 (no pickle to load); a batch of 2 keeps the batch size dynamic.
    # Requirements are stated: inferring them loads the model in a subprocess (10 s on 2 cores).
    example = np.zeros((2, 3, config["image_size"], config["image_size"]), dtype=np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    mlflow.pytorch.save_model(
        model,
        str(out_dir),
        signature=infer_signature(example, output),
        input_example=example,
        serialization_format="pt2",
        pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
    )
    return out_dir
