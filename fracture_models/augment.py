"""The study's transforms, applied to whole uint8 batches on the training device.

One scalar drives training augmentation: `aug_strength` 0 = none, 1.0 = the baseline below,
larger = stronger. The study names the operations (horizontal and vertical flips, rotation,
colour jitter) but not their amounts; the platform's baseline (strength 1.0) is:

* horizontal and vertical flip, each with probability 0.5 (probability 0.5 * min(s, 1));
* rotation uniform in +/-15 degrees (scaled by s), zero (black) fill, bilinear;
* brightness and contrast factors uniform in [1 - 0.2 s, 1 + 0.2 s] (torchvision's
  ColorJitter(brightness=0.2, contrast=0.2) at s = 1; saturation and hue do nothing to grey X-rays).

Flips and rotation are one affine resampling per batch, so augmentation costs a single
`grid_sample` instead of per-image PIL work. Evaluation never augments: `to_model_input`
with strength 0 only scales, expands grey to three channels and normalises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augmentation:
    """Amounts of each operation at a given strength."""

    flip_probability: float
    max_rotation_degrees: float
    brightness: float
    contrast: float

    @classmethod
    def at_strength(cls, strength: float) -> "Augmentation":
        if strength < 0:
            raise ValueError(f"aug_strength must be >= 0, got {strength}")
        return cls(
            flip_probability=0.5 * min(strength, 1.0),
            max_rotation_degrees=15.0 * strength,
            brightness=min(0.2 * strength, 0.9),  # keep factors positive
            contrast=min(0.2 * strength, 0.9),
        )

    @property
    def is_identity(self) -> bool:
        return not (self.flip_probability or self.max_rotation_degrees or self.brightness or self.contrast)


def _uniform(n: int, amount: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=generator, device=device) * 2 - 1) * amount


def augment(images: torch.Tensor, augmentation: Augmentation, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly flip, rotate and jitter a float batch in [0, 1] of shape [B, C, H, W]."""
    if augmentation.is_identity:
        return images
    n, device = images.shape[0], images.device
    if augmentation.flip_probability or augmentation.max_rotation_degrees:
        p = augmentation.flip_probability
        flip_x = torch.where(torch.rand(n, generator=generator, device=device) < p, -1.0, 1.0)
        flip_y = torch.where(torch.rand(n, generator=generator, device=device) < p, -1.0, 1.0)
        angle = _uniform(n, math.radians(augmentation.max_rotation_degrees), generator, device)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3, device=device, dtype=images.dtype)
        theta[:, 0, 0], theta[:, 0, 1] = cos * flip_x, -sin * flip_y
        theta[:, 1, 0], theta[:, 1, 1] = sin * flip_x, cos * flip_y
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if augmentation.brightness:
        images = images * (1 + _uniform(n, augmentation.brightness, generator, device)).view(n, 1, 1, 1).to(images.dtype)
    if augmentation.contrast:
        factor = (1 + _uniform(n, augmentation.contrast, generator, device)).view(n, 1, 1, 1).to(images.dtype)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * factor + mean
    return images.clamp_(0.0, 1.0)


def to_model_input(
    images: torch.Tensor,
    *,
    augmentation: Augmentation | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 [B, 1|3, H, W] -> normalised float [B, 3, H, W], augmented only if asked."""
    x = images.to(dtype).div_(255.0)
    if augmentation is not None:
        x = augment(x, augmentation, generator)  # on one channel when grey: a third of the work
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    return (x - mean) / std
