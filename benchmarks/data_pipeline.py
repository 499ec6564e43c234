"""Data path: decode-once uint8 cache + batched augmentation vs a per-file PIL pipeline.

    python benchmarks/data_pipeline.py [--images 600 --native-size 500 --image-size 224 --epochs 3]

Both read the same generated files (about 500 px, mixed PNG/JPEG) and yield normalised
224 px batches of 32, with the study's baseline augmentation or none:

* plain: the study's style - torchvision ImageFolder, per-image PIL transforms
  (Grayscale(3), Resize, RandomHorizontalFlip, RandomVerticalFlip, RandomRotation(15),
  ColorJitter(0.2, 0.2), ToTensor, Normalize), DataLoader with 2 workers;
* cached: `fracture_models` - decode once into a uint8 tensor (timed separately; reused by
  every later epoch, trial and run), then index + augment whole batches on the device.

No model runs: this measures only how fast each path can feed one. Prints images/s per path,
the ratio, and the ratio with the one-time decode charged to these epochs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fracture_models.augment import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from fracture_models.data import decode_split, resolve_dataset_root  # noqa: E402
from fracture_models.engine import select_device  # noqa: E402
from fracture_models.loader import BatchLoader  # noqa: E402
from fracture_models.synthetic import SyntheticSpec, ensure_generated  # noqa: E402


def plain_loader(root: Path, image_size: int, augment: bool, batch_size: int, workers: int):
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    steps = [transforms.Grayscale(num_output_channels=3), transforms.Resize((image_size, image_size))]
    if augment:
        steps += [
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            transforms.RandomRotation(15),
            transforms.ColorJitter(brightness=0.2, contrast=0.2),
        ]
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    dataset = datasets.ImageFolder(str(root / "train"), transform=transforms.Compose(steps))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def images_per_second(loader, epochs: int, device: torch.device) -> float:
    seen, start = 0, time.perf_counter()
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            seen += y.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def first_job_seconds(data: Path, image_size: int) -> tuple[float, float]:
    """What a first job pays before training, with empty caches: the audit and the loader each
    decoding every file (as before 2026-11-28; test at the evaluation), and `audit_and_load`'s one
    decode per file (test into the cache for the evaluation)."""
    from fracture_models.audit import audit_and_load, audit_dataset
    from fracture_models.data import load_dataset

    seconds = []
    for together in (False, True):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            if together:
                audit_and_load(data, image_size, splits=("train", "val"), cache_dir=Path(cache))
            else:
                audit_dataset(data, cache_dir=Path(cache))
                load_dataset(data, image_size, splits=("train", "val"), cache_dir=Path(cache))
                load_dataset(data, image_size, splits=("test",), cache_dir=Path(cache))  # at the evaluation
            seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="training images (default: %(default)s)")
    parser.add_argument("--native-size", type=int, default=500, help="approximate side of the files (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=224, help="model input side (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the plain path (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "fracture-bench-data")
    args = parser.parse_args()

    device = select_device()
    spec = SyntheticSpec(train=args.images, val=2, test=2, image_size=args.native_size, seed=0)
    print(f"generating {args.images} images at ~{args.native_size} px in {args.data} (once)...", flush=True)
    root = resolve_dataset_root(ensure_generated(args.data, spec))

    start = time.perf_counter()
    split = decode_split(root, "train", args.image_size)  # not cached: measure the decode itself
    decode_seconds = time.perf_counter() - start
    print(f"device {device}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    print(
        f"decode once: {len(split)} images in {decode_seconds:.1f} s ({len(split) / decode_seconds:.0f} images/s), "
        f"cache {split.images.numel() / 2**20:.1f} MiB {tuple(split.images.shape)}"
    )
    apart, once = first_job_seconds(args.data, args.image_size)
    print(
        f"first job's audit and decode: {apart:.1f} s apart (audit, then loader), {once:.1f} s with one decode per file ({apart / once:.2f}x)"
    )
    print(f"| augmentation | plain per-file (images/s) | cached (images/s) | ratio | ratio incl. decode over {args.epochs} epochs |")
    print("|---|---|---|---|---|")
    for augment in (True, False):
        plain = images_per_second(plain_loader(root, args.image_size, augment, args.batch_size, args.workers), args.epochs, device)
        cached_loader = BatchLoader(split, args.batch_size, device=device, train=True, aug_strength=1.0 if augment else 0.0)
        images_per_second(cached_loader, 1, device)  # warm-up (CUDA context, allocator)
        cached = images_per_second(cached_loader, args.epochs, device)
        total = len(split) * args.epochs
        amortised = total / (decode_seconds + total / cached)
        label = "baseline (1.0)" if augment else "none"
        print(f"| {label} | {plain:.0f} | {cached:.0f} | {cached / plain:.1f}x | {amortised / plain:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
