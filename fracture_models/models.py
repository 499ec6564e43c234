"""A strict registry of the study's three architectures, each with a 2-class output.

`create_model(name, ...)` fails loudly on an unknown name; `list_models()` lists them. Builders
do no I/O unless weights are asked for. `weights` is `"none"` (random init), `"imagenet"`
(torchvision's own download-and-cache loading) or a path to a torchvision ImageNet state dict.
Each entry carries the study's own starting point (`default_weights`): ImageNet for the
fine-tuned ResNet50 and VGG16, random init for the custom CNN.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fracture_models.errors import UserError, WeightsUnavailableError


@dataclass(frozen=True)
class Architecture:
    """A registered architecture and the facts that travel with it."""

    name: str
    builder: Callable[..., nn.Module]
    default_weights: str = "none"  # the study's starting point: "none" or "imagenet"


_REGISTRY: dict[str, Architecture] = {}


def register_model(name: str, *, default_weights: str = "none") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = Architecture(name, builder, default_weights)
        return builder

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def architecture(name: str) -> Architecture:
    """The registry entry of `name`; unknown names raise a `UserError` listing the known ones."""
    if name not in _REGISTRY:
        raise UserError(f"Unknown architecture {name!r}; choose one of: {', '.join(list_models())}.")
    return _REGISTRY[name]


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


@register_model("cnn")
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


@register_model("resnet50", default_weights="imagenet")
def _resnet50(*, num_classes: int, weights: str, image_size: int) -> nn.Module:
    from torchvision.models import ResNet50_Weights, resnet50

    model = resnet50(weights=None)
    state = _imagenet_state_dict(weights, ResNet50_Weights.IMAGENET1K_V2)
    if state is not None:
        model.load_state_dict(state)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


@register_model("vgg16", default_weights="imagenet")
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
