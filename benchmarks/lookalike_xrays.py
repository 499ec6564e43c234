"""Hand radiographs that look alike: many distinct images of each pose, both classes per pose.

    python benchmarks/lookalike_xrays.py OUT_DIR [--images 1500 --poses 40 --image-size 224 --seed 0]

Written for the audit benchmark, independently of `fracture_models.synthetic` (no code shared):
a PA hand and wrist with radius, ulna, carpals, metacarpals and phalanges as hollow tubes
(bright cortex, trabecular texture), soft tissue, collimation edges, an L/R marker, a heel-effect
gradient and film grain. A *pose* fixes the anatomy, framing, collimation and marker; each
image of it jitters the pose slightly (hand angle, position, size, finger spread) and draws its
own texture, exposure and grain, and half carry a break across one bone. Distinct images of one
pose are the hard negatives of duplicate detection: the same radiograph to a coarse look, not
copies of each other.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

CLASS_NAMES = ("not fractured", "fractured")  # the dataset's folder names; label = index
SPLIT_SHARES = {"train": 0.7, "val": 0.15, "test": 0.15}


@dataclass(frozen=True)
class LookalikeSpec:
    """What determines a generated set; equal specs give identical files."""

    images: int = 1500
    poses: int = 40
    image_size: int = 224
    seed: int = 0


@dataclass(frozen=True)
class Bone:
    start: tuple[float, float]  # (x, y) in units of the image's shorter side, centre at 0
    end: tuple[float, float]
    radius: float


def _pose(rng: np.random.Generator) -> dict:
    """One pose: the hand's anatomy (finger spread, bend, proportions) and its framing."""
    return {
        "spread": rng.uniform(0.05, 0.16),  # radians between neighbouring fingers
        "bends": rng.uniform(-0.08, 0.08, (5, 3)),
        "palm": rng.uniform(0.22, 0.28),
        "carpals": rng.uniform(0.021, 0.025, 8),
        "angle": rng.uniform(-0.5, 0.5),
        "centre": (rng.uniform(-0.08, 0.08), rng.uniform(0.1, 0.3)),
        "scale": rng.uniform(0.85, 1.15),
        "collimation": rng.uniform(0.02, 0.12, 4),
        "marker": (rng.uniform(0.05, 0.8), rng.uniform(0.05, 0.8), "LR"[int(rng.integers(2))]),
        "aspect": rng.uniform(0.8, 1.0),
        "broken": int(rng.choice([0, 1, *range(10, 29)])),  # the bone a fracture crosses: radius, ulna or a hand bone
    }


def _bones(pose: dict, rng: np.random.Generator) -> list[Bone]:
    """The pose's bones in a hand frame (wrist at the origin, fingers towards -y), as this image
    holds them: the wrist, each finger and each joint a little differently."""
    wrist = rng.normal(0, 0.04)  # forearm against hand, radians
    forearm = np.array([[np.cos(wrist), -np.sin(wrist)], [np.sin(wrist), np.cos(wrist)]])
    bones = [
        Bone(tuple(forearm @ (-0.07, 0.05)), tuple(forearm @ (-0.09, 0.6)), 0.045),  # radius
        Bone(tuple(forearm @ (0.07, 0.06)), tuple(forearm @ (0.08, 0.6)), 0.032),  # ulna
    ]
    for k in range(8):  # carpals: two rows of four
        x, y = -0.075 + 0.05 * (k % 4) + rng.normal(0, 0.004), -0.01 - 0.045 * (k // 4) + rng.normal(0, 0.004)
        bones.append(Bone((x, y), (x + 0.01, y - 0.01), pose["carpals"][k]))
    segments = {0: (0.16, 0.11), 1: (0.14, 0.08, 0.06), 2: (0.15, 0.09, 0.065), 3: (0.14, 0.085, 0.06), 4: (0.12, 0.07, 0.05)}
    for finger in range(5):
        angle = (finger - 2) * pose["spread"] + (0.55 if finger == 0 else 0.0) + rng.normal(0, 0.05)
        base = np.array([-0.1 + 0.05 * finger, -0.1])
        direction = np.array([np.sin(angle), -np.cos(angle)])
        length = pose["palm"] * (0.75 if finger == 0 else 1.0 - 0.05 * abs(finger - 2))
        end = base + direction * length
        bones.append(Bone(tuple(base), tuple(end), 0.018))  # metacarpal
        for s, seg in enumerate(segments[finger]):
            bend = angle + pose["bends"][finger, s] + rng.normal(0, 0.05)
            direction = np.array([np.sin(bend), -np.cos(bend)])
            start = end + direction * 0.012
            end = start + direction * seg
            bones.append(Bone(tuple(start), tuple(end), 0.016 - 0.002 * s))
    return bones


def _capsule(x: np.ndarray, y: np.ndarray, bone: Bone) -> tuple[np.ndarray, np.ndarray]:
    """Distance from the bone's axis segment and the position along it (0..1)."""
    (x0, y0), (x1, y1) = bone.start, bone.end
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0, 1)
    return np.hypot(x - x0 - t * dx, y - y0 - t * dy), t


def render(rng: np.random.Generator, frame: dict, size: int, fractured: bool) -> np.ndarray:
    """One radiograph of the pose in [0, 1] (bone bright), shape [height, width]."""
    bones = _bones(frame, rng)
    height, width = size, round(size * frame["aspect"])
    short = min(height, width)
    y, x = (np.mgrid[0:height, 0:width] - np.array([height, width])[:, None, None] / 2) / short
    angle = frame["angle"] + rng.uniform(-0.05, 0.05)
    scale = frame["scale"] * rng.uniform(0.97, 1.03)
    cx, cy = (c + rng.uniform(-0.02, 0.02) for c in frame["centre"])
    cos, sin = np.cos(angle), np.sin(angle)
    hx, hy = ((x - cx) * cos + (y - cy) * sin) / scale, (-(x - cx) * sin + (y - cy) * cos) / scale  # hand frame
    texture = gaussian_filter(rng.normal(size=(height, width)), 0.8) - gaussian_filter(rng.normal(size=(height, width)), 2.5)
    density, tissue = np.zeros((height, width)), np.zeros((height, width))
    broken = frame["broken"] if fractured else -1
    for k, bone in enumerate(bones):
        d, t = _capsule(hx, hy, bone)
        r = bone.radius * (1 + 0.35 * np.exp(-(((t - 0.0) / 0.12) ** 2)) + 0.35 * np.exp(-(((t - 1.0) / 0.12) ** 2)))
        outer = np.sqrt(np.clip(r * r - d * d, 0, None))
        inner = np.sqrt(np.clip((0.6 * r) ** 2 - d * d, 0, None))
        tube = (outer - 0.7 * inner) / r * (1 + 0.5 * texture)
        if k == broken:  # a jagged dark line across the bone, sometimes displaced
            t0 = rng.uniform(0.25, 0.75)
            across = (hx - bone.start[0]) * (bone.end[1] - bone.start[1]) - (hy - bone.start[1]) * (bone.end[0] - bone.start[0])
            across = across / (np.hypot(bone.end[0] - bone.start[0], bone.end[1] - bone.start[1]) * r.mean() + 1e-12)
            edge = t0 + np.interp(across, np.linspace(-1.5, 1.5, 7), rng.uniform(-0.06, 0.06, 7)) + rng.uniform(-0.2, 0.2) * across
            tube = tube * (1 - 0.85 * np.exp(-(((t - edge) / rng.uniform(0.015, 0.03)) ** 2)))
        density = np.maximum(density, tube)
        tissue = np.maximum(tissue, np.clip(1 - d / (bone.radius * 3.2), 0, 1))
    tissue = gaussian_filter(tissue, 2.0) * rng.uniform(0.5, 0.7)
    image = 1 - np.exp(-(rng.uniform(1.2, 1.8) * density + tissue))
    image = image + 0.06 * (y + 0.5) * rng.uniform(0.5, 1.5)  # heel effect
    top, bottom, left, right = (
        int(c * n) for c, n in zip(frame["collimation"] + rng.uniform(-0.01, 0.01, 4), (height, height, width, width))
    )
    shutter = np.ones((height, width), bool)
    shutter[top : height - bottom, left : width - right] = False
    image[shutter] = 0.85 + 0.05 * image[shutter]
    image = image * rng.uniform(0.8, 1.0) + rng.uniform(0.0, 0.1)
    image = gaussian_filter(image + rng.normal(0, rng.uniform(0.012, 0.03), image.shape), rng.uniform(0.4, 0.8))
    pil = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    mx, my, letter = frame["marker"]
    box = (int(mx * width), int(my * height))
    draw = ImageDraw.Draw(pil)
    draw.rectangle([box, (box[0] + short // 12, box[1] + short // 10)], fill=int(rng.integers(20, 40)))
    draw.text((box[0] + short // 48, box[1] + short // 64), letter, fill=int(rng.integers(220, 255)))
    return np.asarray(pil, dtype=np.float64) / 255


def radiograph(spec: LookalikeSpec, number: int, fractured: bool) -> tuple[Image.Image, dict]:
    """Image NUMBER of the set SPEC (of pose `number % spec.poses`) and how it is saved: PIL's
    `save` arguments, PNG or JPEG at quality 85-95."""
    rng = np.random.default_rng([spec.seed, 2, number])
    pixels = render(rng, _pose(np.random.default_rng([spec.seed, 1, number % spec.poses])), spec.image_size, fractured)
    image = Image.fromarray(np.round(pixels * 255).astype(np.uint8))
    if rng.random() < 0.5:
        return image, {"format": "JPEG", "quality": int(rng.integers(85, 96))}
    return image, {"format": "PNG"}


def generate(out_dir: str | Path, spec: LookalikeSpec) -> list[dict]:
    """Write OUT_DIR/{train,val,test}/{class}/NNNNN.{png,jpg}; return one row per image
    (path relative to OUT_DIR, split, label, pose)."""
    out = Path(out_dir)
    rng = np.random.default_rng(spec.seed)
    splits = rng.choice(list(SPLIT_SHARES), size=spec.images, p=list(SPLIT_SHARES.values()))
    for split in SPLIT_SHARES:
        for name in CLASS_NAMES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
    rows = []
    for number in range(spec.images):
        label = int(rng.integers(2))
        image, saved = radiograph(spec, number, fractured=bool(label))
        path = Path(str(splits[number]), CLASS_NAMES[label], f"{number:05d}.{'jpg' if saved['format'] == 'JPEG' else 'png'}")
        image.save(out / path, **saved)
        rows.append({"path": str(path), "split": str(splits[number]), "label": label, "pose": number % spec.poses})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write look-alike hand radiographs in the dataset's split/class layout.")
    parser.add_argument("out_dir", type=Path)
    defaults = LookalikeSpec()
    parser.add_argument("--images", type=int, default=defaults.images, help="images in all (default: %(default)s)")
    parser.add_argument("--poses", type=int, default=defaults.poses, help="distinct poses; images go round them (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="height in px (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    rows = generate(args.out_dir, LookalikeSpec(args.images, args.poses, args.image_size, args.seed))
    print(f"Wrote {len(rows)} images to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
