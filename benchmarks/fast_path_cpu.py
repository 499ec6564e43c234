"""The fast path's levers on the CPU: seconds per epoch (training + validation), plain loop first.

    python benchmarks/fast_path_cpu.py [--arch cnn] [--size 64] [--repeats 3] [--compile]

Each variant trains the same seeded configuration for one epoch on random images, alternating
variant by variant `--repeats` times; the median is reported, in wall seconds and in this
process's CPU seconds (steadier than wall time when other jobs share the cores). One thread by
default (`--threads`). Variants: plain (a host sync per batch, validation at the training batch size), each
lever alone, and all of them (torch.compile only with --compile: its first call compiles).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fracture_models.config import TrainConfig  # noqa: E402
from fracture_models.data import DecodedSplit  # noqa: E402
from fracture_models.engine import build_training, fit, make_loaders  # noqa: E402

PLAIN = dict(sync_every_batch=True, val_batch_factor=1, adam="for-loop")


def _split(name: str, n: int, size: int) -> DecodedSplit:
    generator = torch.Generator().manual_seed(n)
    return DecodedSplit(
        name, torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=generator), torch.arange(n) % 2, [""] * n
    )


def epoch_seconds(arch: str, size: int, levers: dict, train, val) -> tuple[float, float]:
    """(wall, CPU) seconds of one epoch: training and validation."""
    state = build_training(TrainConfig(arch=arch, image_size=size, batch_size=32, epochs=1, weights="none", **levers), torch.device("cpu"))
    loaders = make_loaders(state, train, val)
    wall, cpu = time.perf_counter(), time.process_time()
    fit(state, *loaders)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cnn")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=640)
    parser.add_argument("--val", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also torch.compile (the first call compiles; later ones reuse)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, val = _split("train", args.train, args.size), _split("val", args.val, args.size)
    variants = {
        "plain": PLAIN,
        "no host sync": {**PLAIN, "sync_every_batch": False},
        "validation 4x batch": {**PLAIN, "val_batch_factor": 4},
        "fused Adam": {**PLAIN, "adam": "fused"},
        "foreach Adam": {**PLAIN, "adam": "foreach"},
        "fast defaults": {},
    }
    if args.compile:
        variants["fast defaults + compile"] = {"compile": "default"}
        epoch_seconds(args.arch, args.size, variants["fast defaults + compile"], train, val)  # the compile, paid once
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, levers in variants.items():
            times[name].append(epoch_seconds(args.arch, args.size, levers, train, val))
    plain = statistics.median(cpu for _, cpu in times["plain"])
    print(
        f"{args.arch} at {args.size} px, batch 32, {args.train} training + {args.val} validation images, {torch.get_num_threads()} threads"
    )
    print("| variant | CPU s per epoch (median) | CPU s, each run | wall s (median) | speed vs plain (CPU s) |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        cpu = statistics.median(c for _, c in values)
        wall = statistics.median(w for w, _ in values)
        print(f"| {name} | {cpu:.2f} | {', '.join(f'{c:.2f}' for _, c in values)} | {wall:.2f} | {plain / cpu:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
