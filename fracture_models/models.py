"""A strict registry of architectures, each with a 2-class output and the facts that travel with it.

`create_model(name, ...)` fails loudly on an unknown name; `list_models()` lists them. Builders
do no I/O unless weights are asked for. `weights` is `"none"` (random init), `"imagenet"`
(torchvision's own download-and-cache loading) or a path to a torchvision ImageNet state dict.

Adding an architecture is one registration, here or in another package:

    register_model("tiny", build_tiny)                       # every fact has a default
    register_model("effnet", build, default_weights="imagenet", gradcam_layer=lambda m: m.features[-1],
                   search_space={"lr": {"low": 1e-5, "high": 3e-3, "log": True}})

The builder is called as `builder(num_classes=..., weights=..., image_size=...)`. A package makes
its architectures available everywhere (the driver, every Ray worker, the audit, `--help`) by
declaring a module in the entry-point group `fracture_tune.architectures` that registers them
on import; the registry imports those modules the first time it is asked for a name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

import torch
from torch import nn

from fracture_models.errors import UserError, WeightsUnavailableError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "fracture_tune.architectures"


def last_conv(model: nn.Module) -> nn.Module:
    """The model's last `Conv2d`: the default Grad-CAM layer."""
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM; register the architecture with gradcam_layer=...")
    return convolutions[-1]


@dataclass(frozen=True)
class Architecture:
    """A registered architecture and its facts, each with a default."""

    name: str
    builder: Callable[..., nn.Module]
    default_weights: str = "none"  # the study's starting point: "none" or "imagenet"
    gradcam_layer: Callable[[nn.Module], nn.Module] = last_conv  # the layer Grad-CAM explains
    channels_last_on_cpu: bool = False  # faster on the CPU in channels_last (always used on CUDA)
    # Overrides of the common search space, by hyperparameter: {"lr": {"low": ..., "high": ..., "log": True}}.
    search_space: Mapping[str, Mapping] = field(default_factory=lambda: MappingProxyType({}))


_REGISTRY: dict[str, Architecture] = {}
_plugins_loaded = False


def register_model(name: str, builder: Callable[..., nn.Module] | None = None, **facts):
    """Register `builder` under `name` with its facts (see `Architecture`); without a builder,
    a decorator. Registering a name twice is an error, unless it is the same builder again."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        entry = Architecture(name, builder, **facts)
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = entry
        return builder

    return add(builder) if builder is not None else add


def load_plugins() -> None:
    """Import the modules of the `fracture_tune.architectures` entry points once (they register)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
            logger.warning("Architecture plugin %s (%s) failed to load: %s", point.name, point.value, exc)


def list_models() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)


def architecture(name: str) -> Architecture:
    """The registry entry of `name`; unknown names raise a `UserError` listing the known ones."""
    if name not in _REGISTRY:
        load_plugins()
    if name not in _REGISTRY:
        raise UserError(f"Unknown architecture {name!r}; choose one of: {', '.join(list_models())}.")
    return _REGISTRY[name]


def ensure_registered(entry: Architecture) -> None:
    """Register an entry handed over from another process (a Ray worker gets the driver's)."""
    if entry.name not in _REGISTRY:
        load_plugins()
    _REGISTRY.setdefault(entry.name, entry)


def resolve_weights(name: str, weights: str | None) -> str:
    """`weights` as given, or the study's starting point for the architecture when None."""
    return architecture(name).default_weights if weights is None else weights


def create_model(name: str, *, num_classes: int = 2, weights: str | None = None, image_size: int = 224) -> nn.Module:
    """Build a registered model; `weights=None` starts where the study did (`default_weights`)."""
    entry = architecture(name)
    return entry.builder(num_classes=num_classes, weights=resolve_weights(name, weights), image_size=image_size)


def check_weights_available(name: str, weights: str | None) -> None:
    """Fail fast, before data is decoded or generated, when the weights cannot be loaded."""
    weights = resolve_weights(name, weights)
    if weights == "none":
        return
    create_model(name, weights=weights, image_size=32)


# ---------------------------------------------------------------------------------------------
# The study's custom CNN


class StudyCNN(nn.Module):
    """Four conv3x3-BN-ReLU-maxpool blocks (32, 64, 128, 256), then FC 1024-512-128-classes.

    At 224 px the flatten size is 256 x 14 x 14 = 50,176 and the model has 52,361,346
    parameters, as in the study; at other sizes the flatten size follows the image size.
    """

    def __init__(self, num_classes: int = 2, image_size: int = 224) -> None:
        super().__init__()
        if image_size < 16:
            raise UserError(f"The CNN needs images of at least 16 px (four 2x2 poolings), got {image_size}.")
        blocks: list[nn.Module] = []
        in_channels = 3
        for out_channels in (32, 64, 128, 256):
            blocks += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        side = image_size // 16
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * side * side, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("cnn", channels_last_on_cpu=True)  # 1.2-1.5x on the CPU at 64-224 px, batch 32 (benchmarks/README.md)
def _cnn(*, num_classes: int, weights: str, image_size: int) -> nn.Module:
    if weights != "none":
        raise UserError("The custom CNN has no pretrained weights; use --weights none.")
    return StudyCNN(num_classes=num_classes, image_size=image_size)


# ---------------------------------------------------------------------------------------------
# torchvision backbones


def _imagenet_state_dict(weights: str, enum_value) -> dict[str, torch.Tensor] | None:
    """None for random init; else the ImageNet state dict from a file or torchvision's cache."""
    if weights == "none":
        return None
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"--weights must be 'none', 'imagenet' or a weights file; {path} does not exist.")
        return torch.load(path, map_location="cpu", weights_only=True)
    from torch.hub import get_dir

    file_name = os.path.basename(enum_value.url)
    cached = Path(get_dir()) / "checkpoints" / file_name
    try:
        return enum_value.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - urllib, ssl and hash errors all mean "not available"
        raise WeightsUnavailableError(
            f"Could not load ImageNet weights {file_name} ({type(exc).__name__}: {exc}). They are "
            f"looked up in torchvision's cache at {cached} and downloaded from {enum_value.url} "
            "when missing. On a machine without internet: copy that file into the cache folder "
            "(or set TORCH_HOME to a folder whose hub/checkpoints/ holds it), pass the file with "
            "--weights /path/to/" + file_name + ", or train from random init with --weights none."
        ) from exc


# Fine-tuned from ImageNet, where Adam's 1e-3 is already at the high end (tuning/search_space.py).
_FINE_TUNING_LR = MappingProxyType({"lr": MappingProxyType({"low": 1e-5, "high": 3e-3, "log": True})})


@register_model(
    "resnet50",
    default_weights="imagenet",
    gradcam_layer=lambda model: model.layer4,
    channels_last_on_cpu=True,
    search_space=_FINE_TUNING_LR,
)
def _resnet50(*, num_classes: int, weights: str, image_size: int) -> nn.Module:
    from torchvision.models import ResNet50_Weights, resnet50

    model = resnet50(weights=None)
    state = _imagenet_state_dict(weights, ResNet50_Weights.IMAGENET1K_V2)
    if state is not None:
        model.load_state_dict(state)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


@register_model("vgg16", default_weights="imagenet", search_space=_FINE_TUNING_LR)
def _vgg16(*, num_classes: int, weights: str, image_size: int) -> nn.Module:
    """VGG16; the pretrained fc6/fc7 stay, the 1000-way layer becomes FC 4096-256-classes."""
    from torchvision.models import VGG16_Weights, vgg16

    model = vgg16(weights=None)
    state = _imagenet_state_dict(weights, VGG16_Weights.IMAGENET1K_V1)
    if state is not None:
        model.load_state_dict(state)
    model.classifier[6] = nn.Sequential(
        nn.Linear(4096, 256),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(256, num_classes),
    )
    return model
