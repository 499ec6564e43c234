"""Command-line pieces shared by every entry point: argument groups, data folder, error exit.

Entry points build their parser with `parents=[get_common_parser(), ...]` (as torchvision's
references do) so that a flag is declared once.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Callable

from fracture_models.data import DEFAULT_MAX_BAD_FRACTION, default_cache_dir
from fracture_models.errors import UserError
from fracture_models.models import architecture, list_models
from fracture_models.study import BASELINE_BATCH_SIZE, BASELINE_EPOCHS, BASELINE_HYPERPARAMETERS, BASELINE_IMAGE_SIZE
from fracture_models.synthetic import SyntheticSpec, ensure_generated

DEFAULT_DATA_DIR = "./data"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


MAX_IMAGE_SIZE = 1024  # px; the study trains at 224, and 1024 px already needs ~3 MB per decoded image


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, got {text}")
    return value


def _image_size(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_IMAGE_SIZE} px, got {text} (the study trains at 224)")
    return value


def get_common_parser(add_help: bool = False) -> argparse.ArgumentParser:
    """Architecture, data and training-budget flags shared by training and tuning."""
    parser = argparse.ArgumentParser(add_help=add_help)
    parser.add_argument("--arch", default="cnn", choices=list_models(), help="architecture (default: %(default)s)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("FRACTURE_DATA_DIR", DEFAULT_DATA_DIR)),
        help="dataset folder: the Kaggle download, its inner folder, or any folder with train/ val/ test/ "
        "(default: $FRACTURE_DATA_DIR, else %s)" % DEFAULT_DATA_DIR,
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="use generated X-ray-like images (made once under the cache folder) instead of --data-dir",
    )
    parser.add_argument("--epochs", type=_positive_int, default=BASELINE_EPOCHS, help="epochs (default: %(default)s)")
    parser.add_argument(
        "--image-size", type=_image_size, default=BASELINE_IMAGE_SIZE, help="square input side in px (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=BASELINE_BATCH_SIZE, help="batch size (default: %(default)s, assumed by the study)"
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="'none' (random init), 'imagenet' (torchvision's cached download) or a path to a torchvision "
        "ImageNet weights file (default: where the study started: imagenet for "
        + ", ".join(name for name in list_models() if architecture(name).default_weights == "imagenet")
        + "; none for the others)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N' (default: %(default)s)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where decoded images and generated data are cached (default: $FRACTURE_CACHE_DIR, else ~/.cache/fracture-tune)",
    )
    parser.add_argument(
        "--max-bad-fraction",
        type=_fraction,
        default=DEFAULT_MAX_BAD_FRACTION,
        help="stop if more than this share of a split's files do not decode (default: %(default)s)",
    )
    return parser


def get_hyperparameter_parser(add_help: bool = False) -> argparse.ArgumentParser:
    """The hyperparameters that tuning searches; defaults are the study's baseline."""
    parser = argparse.ArgumentParser(add_help=add_help)
    base = BASELINE_HYPERPARAMETERS
    parser.add_argument("--lr", type=_positive_float, default=base["lr"], help="Adam learning rate (default: %(default)s)")
    parser.add_argument(
        "--step-size", type=_positive_int, default=base["step_size"], help="StepLR step size in epochs (default: %(default)s)"
    )
    parser.add_argument("--gamma", type=_positive_float, default=base["gamma"], help="StepLR decay factor (default: %(default)s)")
    parser.add_argument(
        "--aug-strength",
        type=_non_negative_float,
        default=base["aug_strength"],
        help="training augmentation: 0 none, 1.0 the study's baseline, larger stronger (default: %(default)s)",
    )
    return parser


def resolve_data_dir(args: argparse.Namespace) -> Path:
    """The dataset folder to load: --data-dir, or the generated dataset with --synthetic."""
    if not args.synthetic:
        return args.data_dir
    cache = args.cache_dir or default_cache_dir()
    spec = SyntheticSpec(seed=args.seed)
    out = cache / f"synthetic-{spec.train}-{spec.val}-{spec.test}-{spec.image_size}px-seed{spec.seed}"
    return ensure_generated(out, spec)


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run an entry point: user errors print one line and exit 2, Ctrl-C exits 130."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
