"""Generated X-ray-like images in the Kaggle dataset's exact folder layout.

    python -m fracture_models.synthetic OUT_DIR [--train 600 --val 200 --test 200 --image-size 128 --seed 0]

Each image is a procedural long bone (bright cortex, darker marrow, wider ends, slight bend) in
soft tissue. A `fractured` bone has a jagged dark break across its shaft, often displaced.
Nuisances shared by both classes, so that no single one gives the class away: position, angle,
length, width, a second bone, a smooth joint line near one end, contrast and gamma, noise, blur
and burnt-in L/R markers. Files are named by integer, mixed PNG and JPEG, some stored RGB
although grey and some as 16-bit PNG, at slightly varying resolutions; the format never depends
on the class. Output is deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from fracture_models.data import DATASET_FOLDER
from fracture_models.errors import UserError
from fracture_models.labels import CLASS_NAMES, POSITIVE_LABEL, SPLITS

logger = logging.getLogger(__name__)

MANIFEST = "synthetic.json"
GENERATOR_VERSION = 3  # bump when the images change, so cached copies are regenerated


@dataclass(frozen=True)
class SyntheticSpec:
    """What determines a generated dataset; equal specs give byte-identical files."""

    train: int = 600
    val: int = 200
    test: int = 200
    image_size: int = 128
    seed: int = 0
    difficulty: float = 1.0

    def count(self, split: str) -> int:
        return getattr(self, split)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))  # overflow-free logistic


def _jagged(rng: np.random.Generator, b: np.ndarray, amplitude: float, pieces: int) -> np.ndarray:
    """A random piecewise-linear curve over the across-bone coordinate b: the break's edge."""
    knots = np.linspace(-1.0, 1.0, pieces)
    values = rng.uniform(-amplitude, amplitude, pieces)
    return np.interp(b, knots, values)


def _bone(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    *,
    centre: tuple[float, float],
    angle: float,
    half_length: float,
    half_width: float,
    fractured: bool,
    difficulty: float,
) -> np.ndarray:
    """Projected density of one long bone (0 outside), with an optional fracture."""
    cos, sin = np.cos(angle), np.sin(angle)
    a = (x - centre[0]) * cos + (y - centre[1]) * sin  # along the bone
    b = -(x - centre[0]) * sin + (y - centre[1]) * cos  # across the bone
    b = b - rng.uniform(-0.15, 0.15) * a * a  # slight bend
    gap = np.zeros_like(a)
    if fractured:
        a0 = rng.uniform(-0.45, 0.45) * half_length
        tilt = np.tan(rng.uniform(-0.7, 0.7))
        edge = a0 + tilt * b + _jagged(rng, b / half_width, half_width * rng.uniform(0.15, 0.45), int(rng.integers(4, 9)))
        distal = a > edge
        if rng.random() < 0.7:  # displaced: the distal fragment shifts sideways and along
            b = np.where(distal, b - rng.choice([-1, 1]) * rng.uniform(0.3, 0.7) * half_width, b)
            a = np.where(distal, a - rng.uniform(0.0, 0.3) * half_width, a)
        width = half_width * rng.uniform(0.6, 1.0) / difficulty
        gap = rng.uniform(0.7, 1.0) * np.exp(-(((a - edge) / width) ** 2))
    end = _smoothstep((np.abs(a) / half_length - 0.7) / 0.3)
    local_width = half_width * (1 + 0.55 * end)
    d = np.abs(b) / local_width
    soft = 0.6 / (x.shape[1] * half_width)
    inside = _sigmoid((1 - d) / soft) * _sigmoid((half_length - np.abs(a)) / (soft * half_width * 4))
    cortex = rng.uniform(0.25, 0.45)
    density = inside * (1 - cortex + cortex * np.clip(d, 0, 1) ** 3)
    return density * (1 - gap)


def render_radiograph(rng: np.random.Generator, width: int, height: int, fractured: bool, difficulty: float = 1.0) -> np.ndarray:
    """One grey image in [0, 1], shape [height, width]."""
    scale = min(width, height) / 2
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    x, y = (x - width / 2) / scale, (y - height / 2) / scale
    angle = rng.uniform(0, np.pi)
    centre = (rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25))
    half_width = rng.uniform(0.11, 0.19)
    # Soft tissue: a broad limb-shaped band around the bone plus slow variation.
    cos, sin = np.cos(angle), np.sin(angle)
    across = -(x - centre[0]) * sin + (y - centre[1]) * cos
    tissue = 0.12 + rng.uniform(0.05, 0.15) * np.exp(-((across / (half_width * rng.uniform(2.5, 4.5))) ** 2))
    tissue = tissue + 0.04 * np.sin(rng.uniform(1, 4) * x + rng.uniform(0, 6)) * np.cos(rng.uniform(1, 4) * y)
    density = _bone(
        rng,
        x,
        y,
        centre=centre,
        angle=angle,
        half_length=rng.uniform(0.6, 1.0),
        half_width=half_width,
        fractured=fractured,
        difficulty=difficulty,
    )
    if rng.random() < 0.35:  # a neighbouring bone (radius/ulna, tibia/fibula), never broken
        offset = half_width * rng.uniform(2.2, 3.0) * rng.choice([-1, 1])
        density = np.maximum(
            density,
            _bone(
                rng,
                x,
                y,
                centre=(centre[0] - offset * sin, centre[1] + offset * cos),
                angle=angle + rng.uniform(-0.1, 0.1),
                half_length=rng.uniform(0.5, 0.9),
                half_width=half_width * rng.uniform(0.5, 0.8),
                fractured=False,
                difficulty=difficulty,
            ),
        )
    if rng.random() < 0.5:  # a smooth joint line near one end: dark, straight, in both classes
        along = (x - centre[0]) * cos + (y - centre[1]) * sin
        joint = rng.choice([-1, 1]) * rng.uniform(0.55, 0.8)
        density = density * (1 - 0.7 * np.exp(-(((along - joint) / 0.03) ** 2)))
    image = tissue + rng.uniform(0.5, 0.75) * density
    for _ in range(int(rng.integers(0, 3))):  # burnt-in markers (L/R letters, rulers)
        h, w = rng.integers(height // 16, height // 7), rng.integers(width // 16, width // 7)
        top, left = rng.integers(0, height - h), rng.integers(0, width - w)
        image[top : top + h, left : left + w] = rng.uniform(0.8, 1.0)
    image = np.clip(image, 0, 1) ** rng.uniform(0.7, 1.4)
    image = image * rng.uniform(0.75, 1.0) + rng.uniform(0.0, 0.08)
    image = image + rng.normal(0, rng.uniform(0.01, 0.04) * difficulty, image.shape)
    return np.clip(image, 0, 1)


def _save(rng: np.random.Generator, image: np.ndarray, stem: Path) -> Path:
    """Save in a random format (never chosen by class): JPEG, 8-bit PNG, RGB-stored grey, 16-bit PNG."""
    pil = Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L")
    if rng.random() < 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    kind = rng.random()
    if kind < 0.45:
        path = stem.with_suffix(rng.choice([".jpg", ".jpeg"]))
        (pil.convert("RGB") if rng.random() < 0.3 else pil).save(path, quality=int(rng.integers(75, 96)))
    elif kind < 0.9:
        path = stem.with_suffix(".png")
        (pil.convert("RGB") if rng.random() < 0.3 else pil).save(path)
    else:  # 16-bit PNG using only part of the range, as detector output often does
        path = stem.with_suffix(".png")
        low, span = rng.integers(200, 4000), rng.integers(1500, 20000)
        values = np.round(low + np.asarray(pil, dtype=np.float64) / 255 * span).astype(np.uint16)
        Image.fromarray(values).save(path)
    return path


def generate(out_dir: str | Path, spec: SyntheticSpec) -> Path:
    """Write the dataset under OUT_DIR in the doubled Kaggle layout; return the inner root."""
    out = Path(out_dir)
    root = out / DATASET_FOLDER / DATASET_FOLDER
    for split_index, split in enumerate(SPLITS):
        rng = np.random.default_rng([spec.seed, split_index])
        n = spec.count(split)
        labels = np.array([POSITIVE_LABEL] * (n // 2) + [1 - POSITIVE_LABEL] * (n - n // 2))
        rng.shuffle(labels)
        for name in CLASS_NAMES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for number, label in enumerate(labels):
            jitter = rng.uniform(0.8, 1.25, 2)
            width, height = (max(16, int(spec.image_size * j)) for j in jitter)
            image = render_radiograph(rng, width, height, fractured=label == POSITIVE_LABEL, difficulty=spec.difficulty)
            _save(rng, image, root / split / CLASS_NAMES[label] / str(number))
    (out / MANIFEST).write_text(json.dumps(_manifest(spec), indent=2) + "\n")
    return root


def _manifest(spec: SyntheticSpec) -> dict:
    return {"generator_version": GENERATOR_VERSION, **asdict(spec)}


def is_generated(root: str | Path) -> bool:
    """True when a dataset folder (the download or either inner folder) was made by `generate`:
    its numbers are not the real dataset's and must never sit unlabelled beside the study's."""
    root = Path(root)
    return any((folder / MANIFEST).is_file() for folder in (root, *list(root.parents)[:2]))


def ensure_generated(out_dir: str | Path, spec: SyntheticSpec) -> Path:
    """Generate unless OUT_DIR already holds exactly this spec; returns OUT_DIR."""
    out = Path(out_dir)
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == _manifest(spec):
        return out
    if out.exists():
        shutil.rmtree(out)
    logger.info("Generating synthetic dataset in %s", out)
    generate(out, spec)
    return out


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    defaults = SyntheticSpec()
    parser = argparse.ArgumentParser(
        prog="python -m fracture_models.synthetic",
        description="Write generated X-ray-like images in the dataset's layout.",
        add_help=add_help,
    )
    parser.add_argument("out_dir", type=Path, help="folder to write (the dataset's doubled top folder goes inside)")
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=int, default=defaults.count(split), help=f"images in {split} (default: %(default)s)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=defaults.image_size,
        help="approximate side in px; each image varies by -20%%/+25%% (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--difficulty", type=float, default=defaults.difficulty, help="higher: thinner breaks, more noise (default: %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for split in SPLITS:
            if getattr(args, split) < 2:
                raise UserError(f"--{split} must be at least 2 (one image per class), got {getattr(args, split)}.")
        if args.image_size < 16 or args.difficulty <= 0:
            raise UserError("--image-size must be >= 16 and --difficulty > 0.")
        spec = SyntheticSpec(args.train, args.val, args.test, args.image_size, args.seed, args.difficulty)
        root = generate(args.out_dir, spec)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = sum(spec.count(s) for s in SPLITS)
    print(f"Wrote {total} images to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
