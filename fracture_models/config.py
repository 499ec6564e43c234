"""The resolved configuration of one training run: a small typed dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from fracture_models.study import BASELINE_BATCH_SIZE, BASELINE_EPOCHS, BASELINE_HYPERPARAMETERS, BASELINE_IMAGE_SIZE


@dataclass
class TrainConfig:
    """Everything that determines a run's result. Defaults are the study's recipe."""

    arch: str = "cnn"
    epochs: int = BASELINE_EPOCHS
    lr: float = BASELINE_HYPERPARAMETERS["lr"]
    step_size: int = BASELINE_HYPERPARAMETERS["step_size"]
    gamma: float = BASELINE_HYPERPARAMETERS["gamma"]
    aug_strength: float = BASELINE_HYPERPARAMETERS["aug_strength"]
    batch_size: int = BASELINE_BATCH_SIZE
    image_size: int = BASELINE_IMAGE_SIZE
    weights: str | None = None  # None: the architecture's default, the study's starting point
    seed: int = 0
    device: str = "auto"
    channels_last: bool | None = None  # None: on CUDA only
    # Speed levers (fracture_models.fast). None changes the recipe; the defaults give the same metrics
    # as the plain loop (loss and accuracy bit for bit, validation to float rounding).
    sync_every_batch: bool = False  # True: read loss and accuracy after every batch (a host sync per step), as before
    adam: str = "auto"  # "auto" (fused on CUDA, torch's default elsewhere), "fused", "foreach" or "for-loop"
    val_batch_factor: int = 4  # validation batches hold this many training batches: no gradients, so memory allows it
    compile: str = "off"  # torch.compile of the training forward: "off", "default", "reduce-overhead" (CUDA graphs), "max-autotune"

    def __post_init__(self) -> None:
        from fracture_models.fast import check_speed_settings
        from fracture_models.models import resolve_weights

        self.weights = resolve_weights(self.arch, self.weights)
        check_speed_settings(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
