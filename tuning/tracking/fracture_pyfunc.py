"""The python_function model of this project's MLflow models, as MLflow's "models from code": MLflow
runs this file to load a model (nothing is unpickled), so it ends by calling `set_model`. It is
copied into every model folder (`tuning.tracking.models`) and imports only `fracture_models`,
which the folder carries too, so it loads where fracture-tune is not installed.

Input: a DataFrame with an `image` column (the bytes of image files) or a `path` column (paths of
image files); a row with both is read from its bytes. Output: one row per image, in order, with
`fracture_probability`, `decision` ('fractured' or 'not fractured', at the model's operating
threshold), `threshold`, and `error` (why a file could not be decoded; empty when it could).
"""

from __future__ import annotations

import math

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


def _images(model_input) -> list:
    """Bytes or paths, one per row: a row's `image` where it has one, else its `path`."""
    if isinstance(model_input, pd.DataFrame):
        columns = [c for c in ("image", "path") if c in model_input.columns]
        if not columns:
            raise ValueError(f"expected an 'image' (file bytes) or 'path' column, got {list(model_input.columns)}")
        rows = model_input[columns].to_dict("records")
        return [row["image"] if row.get("image") is not None and not _missing(row["image"]) else row.get("path") for row in rows]
    if isinstance(model_input, (pd.Series, list, tuple)):
        return list(model_input)
    return [model_input]


def _missing(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


class FracturePyfunc(PythonModel):
    """Image bytes or paths in; fracture probability and decision out (see the module's docstring)."""

    def load_context(self, context) -> None:
        from fracture_models.predict import FracturePredictor

        self.predictor = FracturePredictor.from_file(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        images = _images(model_input)
        present = [image for image in images if image is not None and not _missing(image)]
        verdicts = self.predictor.predict(present)  # batched, in order
        rows = [
            {"error": "no image bytes and no path in this row"} if image is None or _missing(image) else next(verdicts) for image in images
        ]
        return pd.DataFrame(
            {
                "fracture_probability": [r.get("fracture_probability", math.nan) for r in rows],
                "decision": [r.get("decision", "") for r in rows],
                "threshold": [r.get("threshold", self.predictor.operating_point.threshold) for r in rows],
                "error": [r.get("error", "") for r in rows],
            }
        )


mlflow.models.set_model(FracturePyfunc())
