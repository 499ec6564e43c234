"""This project's MLflow models: a weights-only model file, with what its inputs and decisions need,
as a python_function model that takes image bytes or paths.

    <model>/MLmodel               python_function flavour; signature, input example, metadata
                                  (architecture, training size, classes, operating threshold)
    <model>/artifacts/model.pt    `fracture_models.predict.model_file`: weights, config, operating
                                  point; torch.load(..., weights_only=True)
    <model>/code/fracture_models  the library that decodes, normalises and predicts
    <model>/fracture_pyfunc.py    the python_function model (models from code: nothing unpickled)

Saved by `save_fracture_model` (the registered winner, every trial's logged model). Loaded by
`mlflow.pyfunc.load_model(uri)`, or by `python -m fracture_models.predict --model URI`, through
`load_predictor`: the loader this package registers for the `models` and `runs` URI schemes.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, NamedTuple

from fracture_models.errors import UserError
from fracture_models.labels import CLASS_NAMES, POSITIVE_CLASS, POSITIVE_LABEL

if TYPE_CHECKING:  # torch only where a model is saved or loaded: the leaderboard imports this package too
    import torch

    from fracture_models.predict import FracturePredictor

logger = logging.getLogger("tuning.tracking")

MODEL_ARTIFACT = "model"  # the key of the weights in the python_function flavour's artifacts
MODEL_FILE = "model.pt"
PYFUNC_CODE = Path(__file__).with_name("fracture_pyfunc.py")
# What loading the model needs; pinned to the versions that saved it, as MLflow's flavours do.
REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pillow", "scikit-learn", "scipy", "pandas")
PREPROCESSING = (
    "decode the file (EXIF rotation; 16-bit grey windowed from its min..max to 0..255; colour with alpha over black), "
    "bilinear resize to {size} x {size} px, scale to 0..1, grey to 3 channels, normalise with ImageNet's mean and std"
)


def signature():
    """Image bytes or paths in; one row per image out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image", required=False), ColSpec("string", "path", required=False)]),
        outputs=Schema(
            [
                ColSpec("double", "fracture_probability"),
                ColSpec("string", "decision"),
                ColSpec("double", "threshold"),
                ColSpec("string", "error"),
            ]
        ),
    )


def input_example(image_size: int):
    """One grey PNG of the training size, as bytes: what a caller sends."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    ramp = np.tile(np.linspace(0, 255, image_size, dtype=np.uint8), (image_size, 1))
    buffer = io.BytesIO()
    Image.fromarray(ramp, mode="L").save(buffer, format="PNG")
    return pd.DataFrame({"image": [buffer.getvalue()]})


def metadata(model: Mapping) -> dict:
    """The facts a caller of the model needs, readable in the UI and from `model.metadata`."""
    config, point = model["config"], model["operating_point"]
    return {
        "format": model["format"],
        "arch": config["arch"],
        "image_size": config["image_size"],
        "epoch": model["epoch"],
        "class_names": list(CLASS_NAMES),
        "positive_class": POSITIVE_CLASS,
        "positive_label": POSITIVE_LABEL,
        "operating_threshold": point["threshold"],
        "threshold_chosen_on": point["chosen_on"] or "none: 0.5, the threshold of the validation metrics",
        "target_sensitivity": point["target_sensitivity"],
        "preprocessing": PREPROCESSING.format(size=config["image_size"]),
        "input": "DataFrame with an 'image' column (file bytes) or a 'path' column (file paths)",
        "output": "fracture_probability, decision ('fractured' at probability >= threshold), threshold, error",
    }


def _pinned_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pinned.append(name)
    return pinned


def save_fracture_model(model: Mapping, out_dir: Path) -> Path:
    """`model` (a `fracture_models.predict.model_file`) as an MLflow model folder at `out_dir`."""
    import mlflow.pyfunc
    import torch

    import fracture_models

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:  # same disk: the weights are large
        weights = Path(tmp) / MODEL_FILE
        torch.save(dict(model), weights)
        code = Path(tmp) / "code" / "fracture_models"
        shutil.copytree(Path(fracture_models.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__"))
        mlflow.pyfunc.save_model(
            path=str(out_dir),
            python_model=str(PYFUNC_CODE),
            artifacts={MODEL_ARTIFACT: str(weights)},
            code_paths=[str(code)],
            signature=signature(),
            input_example=input_example(model["config"]["image_size"]),
            pip_requirements=_pinned_requirements(),  # inferring them loads the model in a subprocess (10 s on 2 cores)
            metadata=metadata(model),
        )
    return out_dir


def set_model_id(model_dir: Path, model_id: str, run_id: str | None) -> None:
    """Write the logged model's id into a saved folder's MLmodel, as `mlflow.<flavour>.log_model` does."""
    from mlflow.models import Model

    mlmodel = Model.load(str(model_dir))
    mlmodel.model_id, mlmodel.run_id = model_id, run_id
    mlmodel.save(str(model_dir / "MLmodel"))


def load_predictor(uri: str, *, device: torch.device | None = None) -> FracturePredictor:
    """The model at an MLflow URI (models:/name@alias, models:/<logged model id>, runs:/<run>/model)
    as a predictor: the `fracture_tune.model_sources` loader of the `models` and `runs` schemes.
    Tracking store: $MLFLOW_TRACKING_URI, else the local store."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from fracture_models.predict import FracturePredictor
    from fracture_models.records import redact_url
    from tuning.tracking.connect import configure_client, resolve_tracking_uri

    configure_client()
    tracking_uri = resolve_tracking_uri(None)
    with tempfile.TemporaryDirectory(prefix="fracture-model-") as tmp:
        try:
            local = Path(download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri))
        except MlflowException as exc:
            raise UserError(f"Cannot load {uri} from MLflow at {redact_url(tracking_uri)}: {exc.message}") from exc
        except OSError as exc:
            raise UserError(f"Cannot load {uri} from MLflow at {redact_url(tracking_uri)}: {exc}") from exc
        weights = local / "artifacts" / MODEL_FILE
        if not weights.is_file():
            raise UserError(
                f"{uri} is not a fracture-tune image model: it has no artifacts/{MODEL_FILE}. Models registered before the "
                "image models (torch.export format) take ImageNet-normalised tensors: load them with mlflow.pytorch.load_model."
            )
        predictor = FracturePredictor.from_file(weights, device=device)
    predictor.source = uri
    return predictor


# ---------------------------------------------------------------------------------------------
# Which trials' models go to MLflow


class CheckpointPolicy(NamedTuple):
    """`--mlflow-checkpoints`: every run's best checkpoint ("all"), those of the job's K best runs
    ("top-K", by the search metric; others are removed as better ones arrive), or only the tested
    winner's ("winner"). A logged model holds the weights only: VGG16 0.54 GB, ResNet50 0.09 GB,
    the study's CNN at 224 px 0.21 GB."""

    keep: str  # "all", "top" or "winner"
    top: int | None = None

    @classmethod
    def parse(cls, text: str) -> "CheckpointPolicy":
        text = text.strip().lower()
        if text in ("all", "winner"):
            return cls(text)
        if text.startswith("top-") and text[4:].isdigit() and int(text[4:]) >= 1:
            return cls("top", int(text[4:]))
        raise ValueError(f"--mlflow-checkpoints takes all, top-K (K >= 1, e.g. top-5) or winner, not {text!r}")

    def __str__(self) -> str:
        return f"top-{self.top}" if self.keep == "top" else self.keep

    @property
    def per_trial(self) -> bool:
        """True when a run's model is logged as the run ends (all, top-K), not once the winner is known."""
        return self.keep != "winner"


def checkpoint_policy_flag(text: str) -> str:
    """argparse type of --mlflow-checkpoints: the policy's canonical spelling."""
    import argparse

    try:
        return str(CheckpointPolicy.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
