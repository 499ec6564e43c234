"""The study's pipeline as a plain PyTorch library: data, models, training loop, metrics.

Imports neither Ray, Optuna nor MLflow, so it works the same in a notebook, a single run
(`python -m fracture_models.train`) and inside a Ray Tune trial.
"""

from fracture_models.labels import CLASS_NAMES, NEGATIVE_CLASS, POSITIVE_CLASS, POSITIVE_LABEL

__all__ = ["CLASS_NAMES", "NEGATIVE_CLASS", "POSITIVE_CLASS", "POSITIVE_LABEL"]
__version__ = "0.1.0"
