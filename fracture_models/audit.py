"""Data audit: duplicates across splits, attributes that give the class away, files that do not decode.

    python -m fracture_models.audit --data-dir DIR [--out FOLDER]

* Exact duplicates share a content hash (sha256 of the file's bytes).
* Near-duplicates (re-encoded, resized, flipped, slightly shifted copies) in two steps.
  Candidates: pairs whose perceptual hashes (64-bit DCT hash, over the four flips) differ in
  few bits, plus each image's nearest neighbours by the flip-symmetric magnitude spectrum of
  its thumbnail, which a shift barely changes. Confirmed: the pair's thumbnails and their fine
  detail both correlate highly at the best flip and shift (`match_correlation`).
* A shortcut is a file attribute (format, mode, width, height) whose value predicts the class:
  the majority class of each value is learned on train and scored on val + test, as a model
  learning the shortcut would be. Flagged at a held-out balanced accuracy of at least
  `SHORTCUT_BALANCED_ACCURACY` with a chi-square p-value below `SHORTCUT_P_VALUE`.

The audit of a dataset is cached (keyed by every file's path, size and mtime), so a tuning job
pays for it once.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

from fracture_models.data import default_cache_dir, list_split_files, resolve_dataset_root, stat_fingerprint, to_8bit
from fracture_models.errors import UserError
from fracture_models.labels import CLASS_NAMES, SPLITS
from fracture_models.records import write_json

logger = logging.getLogger(__name__)

AUDIT_VERSION = 1
HASH_SIDE = 32  # the grey image is reduced to 32 x 32 before the DCT
HASH_BITS = 8  # the 8 x 8 lowest frequencies give a 64-bit hash
HASH_CANDIDATE_BITS = 8  # pairs within this many bits of 64 are candidates
THUMB_SIDE = 64
SPECTRUM_RADIUS = 8
SPECTRUM_NEIGHBOURS = 3  # each image's nearest spectra are candidates too (they catch shifts)
MAX_SHIFT = 4  # px of THUMB_SIDE (6%) tried when matching a candidate pair
# A matched pair is a near-duplicate when both its thumbnails (overall shape) and their fine
# detail (thumbnail minus its blur: edges, texture, noise) correlate. Measured on 500 generated
# X-rays of 128 px with planted copies (here and in tests/test_audit.py): copies scored >= 0.96
# and >= 0.79 (a 3% shift is the hardest), distinct images <= 0.945 and <= 0.70. Below 100 px the
# detail thins out: at 96 px one distinct pair reached 0.965 and 0.83.
MIN_SHAPE_CORRELATION = 0.95
DEFAULT_MIN_DETAIL_CORRELATION = 0.75
DETAIL_BLUR_SIGMA = 2.0  # thumbnail px
SHORTCUT_ATTRIBUTES = ("format", "mode", "width", "height")
SHORTCUT_BALANCED_ACCURACY = 0.7
SHORTCUT_P_VALUE = 1e-3
NUMERIC_BINS = 5
SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}  # --dedupe keeps the copy in the first of these

AUDIT_FILE = "audit.json"
DUPLICATES_FILE = "duplicates.csv"
ATTRIBUTES_FILE = "attributes.csv"
DROPPED_FILE = "dedupe_dropped.csv"


@dataclass(frozen=True)
class ImageRecord:
    """What the audit knows of one file; `phash` is one hex string per flip (none, h, v, both)."""

    split: str
    label: int
    path: str  # relative to the dataset root
    format: str
    mode: str
    width: int
    height: int
    bytes: int
    sha256: str
    phash: tuple[str, ...]
    error: str = ""

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


# ---------------------------------------------------------------------------------------------
# Fingerprints: a perceptual hash, a shift-invariant spectrum and a thumbnail per image


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


_DCT = _dct_matrix(HASH_SIDE)
_WINDOW = np.outer(np.hanning(THUMB_SIDE), np.hanning(THUMB_SIDE))
_FLIPS = (lambda x: x, lambda x: x[..., ::-1], lambda x: x[..., ::-1, :], lambda x: x[..., ::-1, ::-1])


def perceptual_hashes(grey: np.ndarray) -> tuple[str, ...]:
    """64-bit DCT hashes (pHash) of a HASH_SIDE-square grey image and of its three flips, as hex."""
    hashes = []
    for flip in _FLIPS:
        low = (_DCT @ flip(grey.astype(np.float64)) @ _DCT.T)[:HASH_BITS, :HASH_BITS].ravel()
        bits = low[1:] > np.median(low[1:])  # the DC term only measures brightness
        hashes.append(f"{int(''.join('1' if b else '0' for b in bits), 2):016x}")
    return tuple(hashes)


def spectrum(thumb: np.ndarray) -> np.ndarray:
    """Log-magnitude of the low frequencies, symmetric under flips: a shifted or flipped copy
    has (nearly) the same one. Unit-normalised, so a dot product is a cosine similarity."""
    centred = (thumb - thumb.mean()) * _WINDOW
    magnitude = np.fft.fftshift(np.abs(np.fft.fft2(centred)))
    c, r = THUMB_SIDE // 2, SPECTRUM_RADIUS
    low = np.log1p(magnitude[c - r : c + r + 1, c - r : c + r + 1])
    low = low + low[:, ::-1]  # |F(u, v)| of a mirrored image is |F(-u, v)|, of a flipped one |F(u, -v)| = |F(-u, v)|
    low = low.ravel() - low.mean()
    return (low / (np.linalg.norm(low) + 1e-12)).astype(np.float32)


def thumbnail(image: Image.Image) -> np.ndarray:
    """THUMB_SIDE-square float32 grey thumbnail (box-filtered, so small shifts blur out)."""
    return np.asarray(image.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), dtype=np.float32)


def _inspect(root: Path, split: str, path: Path, label: int) -> tuple[ImageRecord, np.ndarray | None]:
    relative = str(path.relative_to(root))
    try:
        data = path.read_bytes()
    except OSError as exc:
        return ImageRecord(split, label, relative, "", "", 0, 0, 0, "", (), f"unreadable: {exc}"), None
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, mode, (width, height) = image.format or "", image.mode, image.size
            if image.format == "JPEG":
                image.draft("L", (THUMB_SIDE * 2, THUMB_SIDE * 2))
            image.load()
            grey = to_8bit(ImageOps.exif_transpose(image)).convert("L")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged files
        reason = "empty file (0 bytes)" if not data else f"does not decode: {type(exc).__name__}: {exc}"
        return ImageRecord(split, label, relative, "", "", 0, 0, len(data), digest, (), reason), None
    hashes = perceptual_hashes(np.asarray(grey.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX)))
    return ImageRecord(split, label, relative, fmt, mode, width, height, len(data), digest, hashes), thumbnail(grey)


def scan(root: Path, *, num_workers: int | None = None, progress: bool = False) -> tuple[list[ImageRecord], np.ndarray]:
    """One record per image file of every split, and the thumbnails [N, THUMB_SIDE, THUMB_SIDE]
    (zeros where a file does not decode)."""
    jobs = [(split, path, label) for split in SPLITS for path, label in list_split_files(root, split)]
    workers = num_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results: Iterable = pool.map(lambda job: _inspect(root, *job), jobs)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(jobs), desc="audit", unit="img", leave=False, disable=None)
        inspected = list(results)
    thumbs = np.zeros((len(inspected), THUMB_SIDE, THUMB_SIDE), dtype=np.float32)
    for i, (_, thumb) in enumerate(inspected):
        if thumb is not None:
            thumbs[i] = thumb
    return [record for record, _ in inspected], thumbs


# ---------------------------------------------------------------------------------------------
# Duplicates


def _groups(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(a)] = find(b)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    return [sorted(g) for g in members.values() if len(g) > 1]


def _popcount(values: np.ndarray) -> np.ndarray:
    as_bytes = values.view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(-1)


def candidate_pairs(records: Sequence[ImageRecord], thumbs: np.ndarray, chunk: int = 512) -> set[tuple[int, int]]:
    """Pairs (i < j) worth matching: close perceptual hashes under some flip (re-encoded, resized,
    flipped copies), or among each other's nearest spectra (shifted copies)."""
    usable = np.array([i for i, r in enumerate(records) if not r.error], dtype=np.int64)
    if len(usable) < 2:
        return set()
    hashes = np.array([[int(h, 16) for h in records[i].phash] for i in usable], dtype=np.uint64)
    spectra = np.stack([spectrum(thumbs[i]) for i in usable])
    k = min(SPECTRUM_NEIGHBOURS, len(usable) - 1)
    pairs: set[tuple[int, int]] = set()
    for start in range(0, len(usable), chunk):
        rows = np.arange(start, min(start + chunk, len(usable)))
        bits = _popcount(hashes[rows, 0][:, None, None] ^ hashes[None, :, :]).min(-1)
        similarity = spectra[rows] @ spectra.T
        similarity[np.arange(len(rows)), rows] = -np.inf
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        close = [*zip(*np.nonzero(bits <= HASH_CANDIDATE_BITS)), *((r, n) for r in range(len(rows)) for n in nearest[r])]
        for a, b in close:
            i, j = int(usable[rows[a]]), int(usable[b])
            if i != j:
                pairs.add((min(i, j), max(i, j)))
    return pairs


def match_correlation(a: np.ndarray, b: np.ndarray, max_shift: int = MAX_SHIFT) -> float:
    """Best normalised cross-correlation between the centre of thumbnail `a` and every window of
    `b` shifted by up to `max_shift` px, over b's four flips."""
    side, r = a.shape[0], max_shift
    centre = a[r : side - r, r : side - r].ravel()
    centre = centre - centre.mean()
    centre = centre / (np.linalg.norm(centre) + 1e-12)
    best = -1.0
    for flip in _FLIPS:
        windows = np.lib.stride_tricks.sliding_window_view(np.ascontiguousarray(flip(b)), (side - 2 * r, side - 2 * r))
        windows = windows.reshape(-1, centre.size)
        windows = windows - windows.mean(1, keepdims=True)
        norms = np.linalg.norm(windows, axis=1) + 1e-12
        best = max(best, float(((windows @ centre) / norms).max()))
    return best


def detail(thumbs: np.ndarray) -> np.ndarray:
    """The thumbnails' fine detail (edges, texture, noise): each minus its Gaussian blur."""
    from scipy.ndimage import gaussian_filter

    return thumbs - gaussian_filter(thumbs, sigma=(0, DETAIL_BLUR_SIGMA, DETAIL_BLUR_SIGMA))


def duplicate_groups(records: Sequence[ImageRecord], thumbs: np.ndarray, min_detail: float = DEFAULT_MIN_DETAIL_CORRELATION) -> list[dict]:
    """Groups of exact and near-duplicate files, each with its members and whether it crosses splits."""
    by_hash: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if not r.error:
            by_hash.setdefault(r.sha256, []).append(i)
    exact = [(g[0], other) for g in by_hash.values() for other in g[1:]]
    near: dict[tuple[int, int], float] = {}
    fine = detail(thumbs)
    for i, j in sorted(candidate_pairs(records, thumbs)):
        if records[i].sha256 == records[j].sha256 or match_correlation(thumbs[i], thumbs[j]) < MIN_SHAPE_CORRELATION:
            continue
        score = match_correlation(fine[i], fine[j])
        if score >= min_detail:
            near[(i, j)] = score
    groups = []
    for members in _groups(len(records), [*exact, *near]):
        inside = set(members)
        scores = [s for (i, _), s in near.items() if i in inside]
        splits = sorted({records[i].split for i in members}, key=SPLITS.index)
        groups.append(
            {
                "kind": "exact" if len({records[i].sha256 for i in members}) == 1 else "near",
                "cross_split": len(splits) > 1,
                "conflicting_labels": len({records[i].label for i in members}) > 1,
                "splits": splits,
                "min_detail_correlation": round(min(scores), 4) if scores else 1.0,
                "members": [{"split": records[i].split, "class": records[i].class_name, "path": records[i].path} for i in members],
            }
        )
    groups.sort(key=lambda g: (not g["cross_split"], g["kind"] != "exact", g["members"][0]["path"]))
    return groups


def duplicates_to_drop(groups: Iterable[dict]) -> list[dict]:
    """For `--dedupe`: in each cross-split group keep the copies in the most protected split
    (test, then val) and drop the others, so the evaluation splits stay as published and the
    model never trains on a copy of an image it is scored on."""
    dropped = []
    for group in groups:
        if not group["cross_split"]:
            continue
        keep = min(SPLIT_PRIORITY[m["split"]] for m in group["members"])
        dropped += [dict(m, kind=group["kind"]) for m in group["members"] if SPLIT_PRIORITY[m["split"]] != keep]
    return dropped


# ---------------------------------------------------------------------------------------------
# Attributes and shortcuts


def _attribute_values(records: Sequence[ImageRecord], attribute: str) -> list[str]:
    """Categorical values; width and height go into quantile bins of the training files."""
    raw = [getattr(r, attribute) for r in records]
    if attribute not in ("width", "height"):
        return [str(v) for v in raw]
    distinct = sorted(set(raw))
    if len(distinct) <= NUMERIC_BINS:
        return [str(v) for v in raw]
    train = np.array([v for v, r in zip(raw, records) if r.split == "train"] or raw)
    edges = np.unique(np.quantile(train, np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1]))
    bounds = [int(train.min()), *[int(e) for e in edges], int(train.max())]
    labels = [f"{lo}-{hi}" for lo, hi in zip(bounds[:-1], bounds[1:])]
    return [labels[int(np.searchsorted(edges, v, side="right"))] if len(labels) > 1 else labels[0] for v in raw]


def _chi_square_p(table: np.ndarray) -> float:
    from scipy.stats import chi2_contingency

    table = table[table.sum(1) > 0][:, table.sum(0) > 0]
    if table.shape[0] < 2 or table.shape[1] < 2:
        return 1.0
    return float(chi2_contingency(table).pvalue)


def shortcut_scores(records: Sequence[ImageRecord]) -> list[dict]:
    """Per attribute: the held-out balanced accuracy of predicting the class from it alone."""
    records = [r for r in records if not r.error]
    labels = np.array([r.label for r in records])
    held_out = np.array([r.split != "train" for r in records])
    scores = []
    for attribute in SHORTCUT_ATTRIBUTES:
        values = _attribute_values(records, attribute)
        distinct = sorted(set(values))
        counts = np.zeros((len(distinct), len(CLASS_NAMES)), dtype=np.int64)
        for value, label, is_held_out in zip(values, labels, held_out):
            if not is_held_out:
                counts[distinct.index(value), label] += 1
        train_majority = int(np.bincount(labels[~held_out], minlength=len(CLASS_NAMES)).argmax()) if (~held_out).any() else 0
        rule = {v: (int(counts[k].argmax()) if counts[k].sum() else train_majority) for k, v in enumerate(distinct)}
        predicted = np.array([rule[v] for v in values])
        recalls = [float((predicted[held_out & (labels == c)] == c).mean()) for c in range(len(CLASS_NAMES)) if (held_out & (labels == c)).any()]
        balanced = float(np.mean(recalls)) if recalls else float("nan")
        table = np.zeros((len(distinct), len(CLASS_NAMES)), dtype=np.int64)
        for value, label in zip(values, labels):
            table[distinct.index(value), label] += 1
        p_value = _chi_square_p(table)
        scores.append(
            {
                "attribute": attribute,
                "held_out_balanced_accuracy": balanced,
                "chi_square_p": p_value,
                "flagged": bool(balanced >= SHORTCUT_BALANCED_ACCURACY and p_value < SHORTCUT_P_VALUE),
                "rule": {v: CLASS_NAMES[c] for v, c in rule.items()},
            }
        )
    return scores


def attribute_table(records: Sequence[ImageRecord]) -> list[dict]:
    """Counts of each attribute value by split and class (the table to read a shortcut from)."""
    records = [r for r in records if not r.error]
    rows = []
    for attribute in SHORTCUT_ATTRIBUTES:
        values = _attribute_values(records, attribute)
        counts: dict[tuple[str, str, str], int] = {}
        for record, value in zip(records, values):
            key = (value, record.split, record.class_name)
            counts[key] = counts.get(key, 0) + 1
        for value in sorted({v for v, _, _ in counts}):
            row = {"attribute": attribute, "value": value}
            for split in SPLITS:
                for class_name in CLASS_NAMES:
                    row[f"{split}/{class_name}"] = counts.get((value, split, class_name), 0)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# The report


def audit_records(records: Sequence[ImageRecord], thumbs: np.ndarray, *, min_detail: float = DEFAULT_MIN_DETAIL_CORRELATION) -> dict:
    groups = duplicate_groups(records, thumbs, min_detail)
    shortcuts = shortcut_scores(records)
    counts = {split: {c: sum(r.split == split and r.class_name == c for r in records) for c in CLASS_NAMES} for split in SPLITS}
    return {
        "audit_version": AUDIT_VERSION,
        "num_files": len(records),
        "counts": counts,
        "min_detail_correlation": min_detail,
        "duplicate_groups": groups,
        "cross_split_groups": sum(g["cross_split"] for g in groups),
        "conflicting_label_groups": sum(g["conflicting_labels"] for g in groups),
        "shortcuts": shortcuts,
        "flagged_shortcuts": [s["attribute"] for s in shortcuts if s["flagged"]],
        "attributes": attribute_table(records),
        "bad_files": [{"split": r.split, "class": r.class_name, "path": r.path, "reason": r.error} for r in records if r.error],
    }


def audit_dataset(
    data_dir: str | os.PathLike, *, min_detail: float = DEFAULT_MIN_DETAIL_CORRELATION, cache_dir: Path | None = None, progress: bool = False
) -> dict:
    """Audit a dataset folder (any layout `resolve_dataset_root` accepts); cached by file stats."""
    root = resolve_dataset_root(data_dir)
    files = [f for split in SPLITS for f in list_split_files(root, split)]
    key = hashlib.sha256(f"{AUDIT_VERSION}|{min_detail}|{stat_fingerprint(files, root)}".encode()).hexdigest()[:20]
    cache_path = (cache_dir or default_cache_dir()) / f"audit-{key}.json"
    if cache_path.is_file():
        report = json.loads(cache_path.read_text())
        logger.info("Loaded the audit of %s from cache %s", root, cache_path)
    else:
        report = audit_records(*scan(root, progress=progress), min_detail=min_detail)
        write_json(cache_path, report)
    return {**report, "root": str(root)}


def write_audit(report: dict, folder: Path) -> list[Path]:
    """audit.json, duplicates.csv (one row per group member) and attributes.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [write_json(folder / AUDIT_FILE, report)]
    with open(folder / DUPLICATES_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "kind", "cross_split", "split", "class", "path"])
        for number, group in enumerate(report["duplicate_groups"], 1):
            for m in group["members"]:
                writer.writerow([number, group["kind"], group["cross_split"], m["split"], m["class"], m["path"]])
    files.append(folder / DUPLICATES_FILE)
    with open(folder / ATTRIBUTES_FILE, "w", newline="") as f:
        rows = report["attributes"]
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["attribute", "value"])
        writer.writeheader()
        writer.writerows(rows)
    files.append(folder / ATTRIBUTES_FILE)
    return files


def write_dropped(dropped: Sequence[dict], folder: Path) -> Path:
    """The files `--dedupe` left out, one row each."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / DROPPED_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["split", "class", "path", "kind"])
        writer.writeheader()
        writer.writerows(dropped)
    return folder / DROPPED_FILE


def format_audit(report: dict, max_groups: int = 10) -> str:
    """The report as text for a terminal."""
    counts = ", ".join(f"{split} {sum(c.values())}" for split, c in report["counts"].items())
    groups = report["duplicate_groups"]
    lines = [f"Audit of {report.get('root', 'the dataset')}: {report['num_files']} files ({counts})", ""]
    exact = sum(g["kind"] == "exact" for g in groups)
    lines.append(
        f"Duplicates: {len(groups)} groups ({exact} exact, {len(groups) - exact} near), "
        f"{report['cross_split_groups']} across splits, {report['conflicting_label_groups']} with conflicting labels."
    )
    for number, group in enumerate(groups[:max_groups], 1):
        where = "across splits" if group["cross_split"] else "within a split"
        lines.append(f"  {number}. {group['kind']}, {where}:")
        lines += [f"       {m['split']:>5}  {m['class']:<14} {m['path']}" for m in group["members"]]
    if len(groups) > max_groups:
        lines.append(f"  ... {len(groups) - max_groups} more in {DUPLICATES_FILE}")
    lines += ["", "Attributes that could give the class away (learned on train, scored on val + test):"]
    for s in report["shortcuts"]:
        flag = "  SHORTCUT" if s["flagged"] else ""
        lines.append(f"  {s['attribute']:>7}: balanced accuracy {s['held_out_balanced_accuracy']:.2f}, chi-square p {s['chi_square_p']:.2g}{flag}")
        if s["flagged"]:
            lines.append("           " + ", ".join(f"{v} -> {c}" for v, c in s["rule"].items()))
    bad = report["bad_files"]
    lines += ["", f"Files that do not decode: {len(bad)}"]
    lines += [f"  {b['split']}/{b['class']}: {b['path']} ({b['reason']})" for b in bad[:max_groups]]
    return "\n".join(lines)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Audit a fracture dataset: duplicates across splits, shortcuts, bad files.", add_help=add_help)
    parser.add_argument("--data-dir", type=Path, required=True, help="dataset folder (the Kaggle download or any folder with train/ val/ test/)")
    parser.add_argument("--out", type=Path, default=None, help="write audit.json, duplicates.csv and attributes.csv here")
    parser.add_argument(
        "--min-detail-correlation",
        type=float,
        default=DEFAULT_MIN_DETAIL_CORRELATION,
        help="near-duplicate threshold: correlation of two images' fine detail after the best flip and small shift (default: %(default)s)",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default: $FRACTURE_CACHE_DIR, else ~/.cache/fracture-tune)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        report = audit_dataset(args.data_dir, min_detail=args.min_detail_correlation, cache_dir=args.cache_dir, progress=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_audit(report))
    if args.out:
        files = write_audit(report, args.out)
        print(f"\nWrote {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
