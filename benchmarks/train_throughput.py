"""Training images/s per architecture and image size, with and without channels_last.

    python benchmarks/train_throughput.py [--archs cnn resnet50 vgg16] [--sizes 64 224] [--batch-size 16] [--threads N] [--rounds R]

Runs real optimiser steps of `fracture_models.engine.train_one_epoch` on random uint8 images
(data loading is measured separately in data_pipeline.py). One warm-up step, then at least
`--min-steps` steps and `--min-seconds` seconds per configuration. `--threads 1` is what a search
trial gets on a CPU (Ray sets one thread per CPU it holds); `--rounds` alternates the two layouts
that many times and reports each round, as the machine is noisy.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fracture_models.config import TrainConfig  # noqa: E402
from fracture_models.data import DecodedSplit  # noqa: E402
from fracture_models.engine import build_training, select_device, train_one_epoch  # noqa: E402
from fracture_models.loader import BatchLoader  # noqa: E402


def measure(arch: str, size: int, batch_size: int, channels_last: bool, device: torch.device, min_steps: int, min_seconds: float) -> float:
    config = TrainConfig(
        arch=arch, image_size=size, batch_size=batch_size, channels_last=channels_last, weights="none"
    )  # speed does not depend on the weights
    state = build_training(config, device)
    n = batch_size * (min_steps + 1)
    split = DecodedSplit("bench", torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8), torch.arange(n) % 2, [""] * n)
    loader = BatchLoader(split, batch_size, device=device, train=True, aug_strength=1.0, channels_last=state.channels_last)
    warm = DecodedSplit("warm", split.images[:batch_size], split.labels[:batch_size], [""] * batch_size)
    train_one_epoch(state, BatchLoader(warm, batch_size, device=device, train=True, channels_last=state.channels_last))
    seen, start = 0, time.perf_counter()
    while True:
        train_one_epoch(state, loader)
        seen += loader.num_images
        if time.perf_counter() - start >= min_seconds:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["cnn", "resnet50", "vgg16"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--min-steps", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of the two layouts per configuration")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; batch {args.batch_size}; baseline augmentation on the device")
    print("| model | px | train images/s (contiguous) | train images/s (channels_last) | channels_last speed-up |")
    print("|---|---|---|---|---|")
    for arch in args.archs:
        for size in args.sizes:
            for _ in range(args.rounds):
                plain = measure(arch, size, args.batch_size, False, device, args.min_steps, args.min_seconds)
                last = measure(arch, size, args.batch_size, True, device, args.min_steps, args.min_seconds)
                print(f"| {arch} | {size} | {plain:.1f} | {last:.1f} | {last / plain:.2f}x |", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory of this process: {peak:.1f} GiB")


if __name__ == "__main__":
    main()
