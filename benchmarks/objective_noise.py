"""How much of a trial's score is the configuration, and how much is chance?

Trains the study's baseline on the search-efficiency benchmark's exact task (the same generated
data, image size, epochs and training seed), once per learning rate within half a percent of
1e-3, and reports each run's best validation fracture F1 (what a trial reports). No searcher can
tell these configurations apart, so their spread is the noise floor of the objective: where it
is as large as the gaps at the top of a search, "first reach random search's best" is a race
for the luckiest run, not for the best configuration.

    python benchmarks/objective_noise.py --out benchmarks/results/objective_noise.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from search_efficiency import task_spec  # beside this script in benchmarks/

from fracture_models.config import TrainConfig
from fracture_models.data import load_dataset
from fracture_models.engine import build_training, fit, make_loaders
from fracture_models.metrics import selection_score
from fracture_models.records import write_json
from fracture_models.study import BASELINE_HYPERPARAMETERS
from fracture_models.synthetic import ensure_generated

METRIC = "val_fracture_f1"


def train_once(data_dir: str, cache_dir: str, image_size: int, epochs: int, seed: int, lr: float) -> dict:
    torch.set_num_threads(1)  # one core per run, as a trial gets with --cpus-per-trial 1
    dataset = load_dataset(Path(data_dir), image_size, cache_dir=Path(cache_dir), progress=False)
    config = TrainConfig(arch="cnn", epochs=epochs, image_size=image_size, seed=seed, **{**BASELINE_HYPERPARAMETERS, "lr": lr})
    state = build_training(config)
    history = fit(state, *make_loaders(state, dataset.train, dataset.val))
    scores = [selection_score(row, METRIC, "max", prefix="val_") for row in history]
    return {"lr": lr, "best": max(scores), "final": scores[-1], "by_epoch": [round(s, 4) for s in scores]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lr-factors", type=float, nargs="+", default=[0.995, 0.996, 0.997, 0.998, 0.999, 1.0, 1.001, 1.002, 1.003, 1.004, 1.005]
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s, seed 0 of the benchmark)")
    parser.add_argument("--train", type=int, default=1200, help="generated training images (default: %(default)s, the benchmark's)")
    parser.add_argument("--val", type=int, default=1000, help="generated validation images (default: %(default)s, the benchmark's)")
    parser.add_argument("--difficulty", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/objective_noise.json"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="objective-noise-"))
    spec = task_spec(args.train, args.val, args.difficulty)  # the search-efficiency benchmark's data, byte for byte
    data_dir = ensure_generated(work / "data", spec)
    load_dataset(data_dir, args.image_size, cache_dir=work / "cache", progress=False)  # decode once, before the workers
    base_lr = BASELINE_HYPERPARAMETERS["lr"]
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(
            pool.map(
                train_once,
                *zip(
                    *[(str(data_dir), str(work / "cache"), args.image_size, args.epochs, args.seed, base_lr * f) for f in args.lr_factors]
                ),
            )
        )
    bests = [r["best"] for r in runs]
    report = {
        "settings": {**vars(args), "out": str(args.out), "data": spec.__dict__},
        "runs": runs,
        "best": {"mean": statistics.mean(bests), "sd": statistics.stdev(bests), "min": min(bests), "max": max(bests)},
    }
    write_json(args.out, report)
    for r in runs:
        print(f"lr {r['lr']:.6f}: best {METRIC} {r['best']:.4f} (final {r['final']:.4f})")
    b = report["best"]
    print(
        f"{len(runs)} runs of configurations within {max(abs(f - 1) for f in args.lr_factors):.1%} of lr {base_lr}: "
        f"best {METRIC} mean {b['mean']:.4f}, sd {b['sd']:.4f}, range {b['min']:.4f}-{b['max']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
