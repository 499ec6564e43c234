"""Batches from a decoded split: index the uint8 tensor, move to the device, augment there."""

from __future__ import annotations

from typing import Iterator

import torch

from fracture_models.augment import Augmentation, to_model_input
from fracture_models.data import DecodedSplit

# Splits copied to a GPU, by content: the next trial in the same process (a reused Ray actor)
# indexes the copy already there instead of copying ~0.5 GB again. Only the last few are kept.
_ON_DEVICE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_ON_DEVICE_KEEP = 4


def _on_device(split: DecodedSplit, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device.type == "cpu" or not split.fingerprint:  # no content key: copy (a no-op on the CPU)
        return split.images.to(device), split.labels.to(device)
    key = (split.name, split.fingerprint, tuple(split.images.shape), str(device))
    if key not in _ON_DEVICE:
        _ON_DEVICE[key] = (split.images.to(device), split.labels.to(device))
        while len(_ON_DEVICE) > _ON_DEVICE_KEEP:
            _ON_DEVICE.pop(next(iter(_ON_DEVICE)))
    return _ON_DEVICE[key]


class BatchLoader:
    """Iterates (inputs, labels) over a `DecodedSplit` without any per-file work.

    On CUDA the whole uint8 split is copied to the GPU once per process (10,581 grey images at
    224 px are about 0.5 GB; later trials in the process reuse the copy), so a batch is an index
    into device memory. Shuffling and augmentation are
    seeded: epoch e of a loader with seed s is the same on every run.
    """

    def __init__(
        self,
        split: DecodedSplit,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        train: bool = False,
        aug_strength: float = 0.0,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.images, self.labels = _on_device(split, self.device)
        self.batch_size = batch_size
        self.train = train
        self.augmentation = Augmentation.at_strength(aug_strength) if train else None
        self.seed = seed
        self.channels_last = channels_last
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    @property
    def num_images(self) -> int:
        return int(self.labels.numel())

    def set_epoch(self, epoch: int) -> None:
        """Shuffle and augmentation depend on (seed, epoch), so a resumed run repeats them."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_images
        generator = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.train:
            order = torch.randperm(n, generator=generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            if self.train and index.numel() < 2:
                break  # a batch of one breaks batch norm; its image comes back next epoch
            x = to_model_input(self.images[index], augmentation=self.augmentation, generator=generator)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[index]
