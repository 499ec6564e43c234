"""Audit accuracy: does the duplicate detection find planted copies, and only them?

    python benchmarks/audit_accuracy.py [--work /tmp/audit_accuracy] [--out benchmarks/results/audit_accuracy.json]

Two generators of different style, each with cross-split copies planted (a random combination
of flips, rotation up to 10 degrees, scale 0.8-1.25, shift and crop up to 8%, resize, JPEG
quality 50-95, brightness and contrast +-15%, mild noise; a copy keeps its source's class):

* `project`: `fracture_models.synthetic` (one long bone per image, random pose);
* `lookalike`: `lookalike_xrays` (hands; dozens of distinct images per pose, both classes).

Per generator: recall (planted pairs reported as their own group), false groups (any other
group, including a planted pair merged with other images) per 1,000 images and how many mix
classes, the duplicate search's run time, and the confirmation score of planted copies against
the best-scoring distinct pairs (every candidate pair that is not a planted copy, and for
`lookalike` also random same-pose pairs across classes). Then the quickstart set
(`SyntheticSpec(seed=0)`, no copies: every group is false) and the audit's run time on a set
the size of the real dataset (10,581 images).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lookalike_xrays import LookalikeSpec  # noqa: E402
from benchmarks.lookalike_xrays import generate as generate_lookalikes  # noqa: E402
from fracture_models import audit  # noqa: E402
from fracture_models.data import to_8bit  # noqa: E402
from fracture_models.records import write_json  # noqa: E402
from fracture_models.synthetic import SyntheticSpec, ensure_generated  # noqa: E402
from fracture_models.synthetic import generate as generate_project  # noqa: E402

REAL_DATASET = SyntheticSpec(train=9246, val=828, test=506, image_size=224, seed=1)  # the Kaggle set's split sizes


def _grey(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return to_8bit(image).convert("L")


def plant_copy(source: Path, copy_stem: Path, rng: np.random.Generator) -> tuple[Path, dict]:
    """Write a transformed copy of SOURCE (a random combination of flips, rotation, scale, shift,
    crop, resize, brightness/contrast, noise, JPEG); return its path and what was done."""
    image, done = _grey(source), {}
    if rng.random() < 0.5:
        image, done["mirror"] = ImageOps.mirror(image), True
    if rng.random() < 0.25:
        image, done["flip"] = ImageOps.flip(image), True
    if rng.random() < 0.7:
        angle, scale = rng.uniform(-10, 10), float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        shift = rng.uniform(-0.08, 0.08, 2) * image.size
        border = int(np.median(np.concatenate([np.asarray(image)[[0, -1]].ravel(), np.asarray(image)[:, [0, -1]].ravel()])))
        # PIL maps each output pixel to an input one: rotate by angle, scale by 1/scale, about the centre.
        cx, cy = image.width / 2, image.height / 2
        c, s = np.cos(np.radians(angle)) / scale, np.sin(np.radians(angle)) / scale
        matrix = (c, s, cx - c * (cx + shift[0]) - s * (cy + shift[1]), -s, c, cy + s * (cx + shift[0]) - c * (cy + shift[1]))
        image = image.transform(image.size, Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR, fillcolor=border)
        done.update(angle=round(angle, 2), scale=round(scale, 3), shift=[round(v / n, 3) for v, n in zip(shift, image.size)])
    if rng.random() < 0.5:
        total = rng.uniform(0, 0.08, 2)
        first = rng.uniform(0, 1, 2) * total
        w, h = image.size
        box = (int(first[0] * w), int(first[1] * h), w - int((total[0] - first[0]) * w), h - int((total[1] - first[1]) * h))
        image, done["crop"] = image.crop(box), [round(float(t), 3) for t in total]
    if rng.random() < 0.5:
        factor = rng.uniform(0.8, 1.25)
        image = image.resize((max(8, round(image.width * factor)), max(8, round(image.height * factor))), Image.Resampling.BILINEAR)
        done["resize"] = round(factor, 3)
    pixels = np.asarray(image, dtype=np.float64)
    if rng.random() < 0.6:
        gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-0.15, 0.15) * pixels.mean()
        pixels = (pixels - pixels.mean()) * gain + pixels.mean() + offset
        done.update(contrast=round(gain, 3), brightness=round(offset, 1))
    if rng.random() < 0.5:
        sigma = rng.uniform(2, 6)
        pixels = pixels + rng.normal(0, sigma, pixels.shape)
        done["noise"] = round(sigma, 2)
    image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    if rng.random() < 0.6:
        quality = int(rng.integers(50, 96))
        path = copy_stem.with_suffix(".jpg")
        image.save(path, quality=quality)
        done["jpeg"] = quality
    else:
        path = copy_stem.with_suffix(".png")
        image.save(path)
    return path, done


def plant_copies(root: Path, count: int, rng: np.random.Generator) -> list[dict]:
    """Copy `count` random images into another split (train -> val or test, val -> test,
    test -> train), same class; return the planted pairs (paths relative to ROOT)."""
    files = sorted(p for p in root.glob("*/*/*") if p.is_file() and p.parent.parent.name in ("train", "val", "test"))
    planted = []
    for number, index in enumerate(rng.choice(len(files), count, replace=False)):
        source = files[index]
        split = source.parent.parent.name
        target = {"train": str(rng.choice(["val", "test"])), "val": "test", "test": "train"}[split]
        copy, done = plant_copy(source, root / target / source.parent.name / f"copy{number:03d}", rng)
        planted.append({"source": str(source.relative_to(root)), "copy": str(copy.relative_to(root)), "transform": done})
    return planted


def _summary(values: list[float]) -> dict:
    if not values:
        return {}
    v = np.array(values)
    return {
        "n": len(v),
        "min": round(float(v.min()), 4),
        "p5": round(float(np.percentile(v, 5)), 4),
        "median": round(float(np.median(v)), 4),
        "p95": round(float(np.percentile(v, 95)), 4),
        "p99": round(float(np.percentile(v, 99)), 4),
        "max": round(float(v.max()), 4),
    }


def evaluate(root: Path, planted: list[dict], *, poses: dict[str, int] | None = None, same_pose_pairs: int = 0, seed: int = 0) -> dict:
    """Run the duplicate search on ROOT and score it against the planted pairs."""
    start = time.perf_counter()
    records, thumbs = audit.scan(root)
    scores = audit.near_duplicate_scores(records, thumbs)
    groups = audit.duplicate_groups(records, thumbs, scores=scores)
    seconds = time.perf_counter() - start
    truth = {frozenset((p["source"], p["copy"])) for p in planted}
    found = [frozenset(m["path"] for m in g["members"]) for g in groups]
    false = [g for g, members in zip(groups, found) if members not in truth]
    index = {r.path: i for i, r in enumerate(records)}
    planted_pairs = {tuple(sorted((index[p["source"]], index[p["copy"]]))) for p in planted}
    copy_matches = [scores[pair] for pair in sorted(planted_pairs) if pair in scores]
    distinct = [m for pair, m in scores.items() if pair not in planted_pairs]
    # the hardest distinct pairs: those whose fine detail matches as well as a copy's might
    hard = [m for m in distinct if m.detail >= audit.DEFAULT_MIN_DETAIL_CORRELATION]
    result = {
        "images": len(records),
        "planted": len(planted),
        "recall": round(sum(t in found for t in truth) / max(len(truth), 1), 4),
        "planted_not_candidates": len(planted_pairs) - len(copy_matches),
        "false_groups": len(false),
        "false_groups_per_1000": round(1000 * len(false) / len(records), 3),
        "false_groups_mixing_classes": int(sum(g["conflicting_labels"] for g in false)),
        "seconds": round(seconds, 1),
        "candidate_pairs": len(scores),
        "thresholds": {
            "detail": audit.DEFAULT_MIN_DETAIL_CORRELATION,
            "texture": audit.MIN_TEXTURE_CORRELATION,
            "peak": audit.MIN_TEXTURE_PEAK,
        },
        "audit_version": audit.AUDIT_VERSION,
        "copy_detail": _summary([m.detail for m in copy_matches]),
        "copy_texture": _summary([m.texture for m in copy_matches]),
        "copy_peak": _summary([m.peak for m in copy_matches]),
        "confirmed_copy_peak": _summary([m.peak for m in copy_matches if m.confirms()]),
        "distinct_candidate_detail": _summary([m.detail for m in distinct]),
        "distinct_texture_where_detail_passes": _summary([m.texture for m in hard]),
        "distinct_candidate_texture": _summary([m.texture for m in distinct]),
        "distinct_peak_where_detail_passes": _summary([m.peak for m in hard]),
        # the pairs the texture peak alone turns away: detail and texture pass
        "distinct_peak_where_detail_and_texture_pass": _summary([m.peak for m in hard if m.texture >= audit.MIN_TEXTURE_CORRELATION]),
        "missed": [p for p in planted if frozenset((p["source"], p["copy"])) not in found],
        "planted_pairs": planted,
        "false_group_members": [[m["path"] for m in g["members"]] for g in false[:20]],
    }
    if poses and same_pose_pairs:
        rng = np.random.default_rng(seed)
        by_pose: dict[int, list[int]] = {}
        for i, r in enumerate(records):
            if r.path in poses:
                by_pose.setdefault(poses[r.path], []).append(i)
        sampled = []
        while len(sampled) < same_pose_pairs:
            members = by_pose[int(rng.choice(list(by_pose)))]
            i, j = rng.choice(members, 2, replace=False)
            if records[i].label != records[j].label:
                side = audit.compare_side(records[i], records[j])
                check = audit.geometric_check(thumbs.features[i], thumbs.features[j])
                sampled.append(audit.match(*(audit.native_grey(root / records[k].path, side) for k in (i, j)), check))
        result["same_pose_cross_class_detail"] = _summary([m.detail for m in sampled])
        result["same_pose_cross_class_texture_where_detail_passes"] = _summary(
            [m.texture for m in sampled if m.detail >= audit.DEFAULT_MIN_DETAIL_CORRELATION]
        )
        result["same_pose_cross_class_peak_where_detail_passes"] = _summary(
            [m.peak for m in sampled if m.detail >= audit.DEFAULT_MIN_DETAIL_CORRELATION]
        )
    return result


def lookalike_benchmark(work: Path, images: int, poses: int, copies: int, image_size: int, seed: int) -> dict:
    root = work / "lookalike"
    rows = generate_lookalikes(root, LookalikeSpec(images=images, poses=poses, image_size=image_size, seed=seed))
    planted = plant_copies(root, copies, np.random.default_rng([seed, 99]))
    return evaluate(root, planted, poses={r["path"]: r["pose"] for r in rows}, same_pose_pairs=300, seed=seed)


def project_benchmark(work: Path, images: int, copies: int, image_size: int, seed: int) -> dict:
    train, held_out = images * 7 // 10, images * 3 // 20
    root = generate_project(
        work / "project", SyntheticSpec(train=train, val=held_out, test=images - train - held_out, image_size=image_size, seed=seed)
    )
    planted = plant_copies(root, copies, np.random.default_rng([seed, 99]))
    return evaluate(root, planted)


def quickstart_check(work: Path) -> dict:
    """The quickstart's generated set (no copies): any group is false."""
    root = generate_project(work / "quickstart", SyntheticSpec(seed=0))
    result = evaluate(root, [])
    return {
        k: result[k]
        for k in (
            "images",
            "false_groups",
            "false_group_members",
            "seconds",
            "candidate_pairs",
            "distinct_candidate_detail",
            "distinct_texture_where_detail_passes",
            "distinct_peak_where_detail_passes",
        )
    }


def real_size_timing(cache: Path) -> dict:
    """The whole audit (`audit_dataset`, no cache) on 10,581 generated images of about 224 px."""
    data = ensure_generated(cache / "real_size", REAL_DATASET)
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        report = audit.audit_dataset(data, cache_dir=Path(cache_dir))
        seconds = time.perf_counter() - start
    return {
        "images": report["num_files"],
        "seconds": round(seconds, 1),
        "duplicate_groups": len(report["duplicate_groups"]),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "audit_accuracy",
        help="where the sets are generated (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "audit_accuracy.json")
    parser.add_argument("--images", type=int, default=1500, help="images per generator before copies (default: %(default)s)")
    parser.add_argument("--copies", type=int, default=50, help="planted copies per generator (default: %(default)s)")
    parser.add_argument("--poses", type=int, default=40, help="poses of the look-alike set (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-real-size", action="store_true", help="skip the 10,581-image timing")
    args = parser.parse_args(argv)
    import shutil

    for name in ("lookalike", "project", "224/project", "quickstart"):
        shutil.rmtree(args.work / name, ignore_errors=True)
    results = {
        "machine": f"{os.cpu_count()} CPUs, no GPU",
        "lookalike": lookalike_benchmark(args.work, args.images, args.poses, args.copies, 224, args.seed),
        "project": project_benchmark(args.work, args.images, args.copies, 128, args.seed + 1),
        "project_224": project_benchmark(args.work / "224", args.images, args.copies, 224, args.seed + 1),
        "quickstart": quickstart_check(args.work),
    }
    if not args.skip_real_size:
        results["real_size"] = real_size_timing(args.work)
    for name in ("lookalike", "project", "project_224"):
        r = results[name]
        print(
            f"{name}: {r['images']} images, recall {r['recall']:.3f}, false groups {r['false_groups']} ({r['false_groups_per_1000']:.2f}/1000, "
            f"{r['false_groups_mixing_classes']} mixing classes), {r['seconds']:.1f} s"
        )
    print(f"quickstart: {results['quickstart']['false_groups']} groups")
    if "real_size" in results:
        print(f"real size: {results['real_size']['images']} images in {results['real_size']['seconds']:.1f} s")
    write_json(args.out, results)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
