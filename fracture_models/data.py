"""Load the Kaggle bone-fracture dataset from its on-disk layout, decode once, cache as uint8.

Layout (as downloaded; the top folder is doubled)::

    <root>/Bone_Fracture_Binary_Classification/Bone_Fracture_Binary_Classification/
        train/fractured/  train/not fractured/  val/...  test/...

`load_dataset` accepts the download root, the inner folder, or any folder holding
`train/ val/ test/`. Every file is fully decoded once (a `verify()` pass misses some damaged
files), resized to a square `image_size`, and stored as a compact uint8 tensor (one channel when
every image is grey). The tensor is cached on disk keyed by the files' fingerprint and the size,
so later epochs, trials and runs on the same machine never decode again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from fracture_models.errors import DatasetError
from fracture_models.labels import CLASS_NAMES, SPLITS

logger = logging.getLogger(__name__)

DATASET_FOLDER = "Bone_Fracture_Binary_Classification"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
DEFAULT_MAX_BAD_FRACTION = 0.05
# Caps per file, so that a small or sparse file cannot take the memory of every decode thread: the
# dataset's radiographs are at most a few thousand px and a few MB.
MAX_FILE_BYTES = 256 * 2**20
MAX_PIXELS = 64_000_000  # e.g. 8000 x 8000; a 16-bit one decodes to 128 MB (256 MB windowed in float32)
# A JPEG is decoded at the smallest DCT scale that still gives this many px (or the size asked,
# when larger): what the audit's local features need, so one decode serves the audit and the loader.
DRAFT_MIN_SIDE = 256
CACHE_FORMAT_VERSION = 2  # 2: JPEGs drafted at DRAFT_MIN_SIDE or more
DATASET_URL = "https://www.kaggle.com/datasets/bmadushanirodrigo/fracture-multi-region-x-ray-data"


@dataclass(frozen=True)
class ExcludedFile:
    """A file left out of the dataset because it did not fully decode."""

    path: str
    reason: str


@dataclass(frozen=True)
class DecodedFile:
    """One file as the decoder read it. `image` is 8-bit L or RGB with the EXIF orientation
    applied (a JPEG at the smallest DCT scale of at least DRAFT_MIN_SIDE px), or None with the
    `reason`; `format`, `mode`, `width` and `height` are the file's own, from its header."""

    path: Path
    sha256: str = ""
    num_bytes: int = 0
    format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    image: Image.Image | None = None
    reason: str = ""


Visit = Callable[[DecodedFile], None]  # sees each file the loader decodes (the audit inspects them)


@dataclass
class DecodedSplit:
    """One split, decoded and resized: `images` is uint8 [N, C, H, W] with C in {1, 3}."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    excluded: list[ExcludedFile] = field(default_factory=list)
    fingerprint: str = ""

    def __len__(self) -> int:
        return int(self.labels.numel())

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(CLASS_NAMES)).tolist()
        return dict(zip(CLASS_NAMES, counts))

    def without(self, paths: Iterable[str]) -> "DecodedSplit":
        """The split minus the images at these relative paths; the fingerprint records the drop."""
        drop = set(paths) & set(self.paths)
        if not drop:
            return self
        keep = [i for i, p in enumerate(self.paths) if p not in drop]
        digest = hashlib.sha256(self.fingerprint.encode())
        for path in sorted(drop):
            digest.update(f"-{path}\n".encode())
        index = torch.tensor(keep, dtype=torch.int64)
        return DecodedSplit(
            self.name, self.images[index], self.labels[index], [self.paths[i] for i in keep], self.excluded, digest.hexdigest()[:16]
        )


@dataclass
class FractureDataset:
    """The three decoded splits plus where they came from."""

    root: Path
    image_size: int
    splits: dict[str, DecodedSplit]

    @property
    def train(self) -> DecodedSplit:
        return self.splits["train"]

    @property
    def val(self) -> DecodedSplit:
        return self.splits["val"]

    @property
    def test(self) -> DecodedSplit:
        return self.splits["test"]

    @property
    def excluded(self) -> list[ExcludedFile]:
        return [bad for split in self.splits.values() for bad in split.excluded]

    @property
    def fingerprint(self) -> str:
        """Content hash of every file in every split: equal on any machine for equal data."""
        digest = hashlib.sha256()
        for name in sorted(self.splits):
            digest.update(f"{name}:{self.splits[name].fingerprint}\n".encode())
        return digest.hexdigest()[:16]

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "image_size": self.image_size,
            "fingerprint": self.fingerprint,
            "splits": {
                name: {"images": len(s), "classes": s.class_counts(), "excluded": len(s.excluded)} for name, s in self.splits.items()
            },
            "excluded_files": len(self.excluded),
        }


# ---------------------------------------------------------------------------------------------
# Layout


def resolve_dataset_root(data_dir: str | os.PathLike) -> Path:
    """Return the folder that holds `train/ val/ test/`, accepting the download root too."""
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DatasetError(
            f"Dataset folder not found: {path}. Download the dataset from {DATASET_URL} and "
            "pass the unzipped folder with --data-dir (or use --synthetic for generated data)."
        )
    candidates = [path, path / DATASET_FOLDER, path / DATASET_FOLDER / DATASET_FOLDER]
    for candidate in candidates:
        if all((candidate / split).is_dir() for split in SPLITS):
            return candidate
    for candidate in candidates:
        present = [s for s in SPLITS if (candidate / s).is_dir()]
        if present:
            missing = [s for s in SPLITS if s not in present]
            raise DatasetError(
                f"Split folder(s) {', '.join(missing)} missing in {candidate}: expected "
                f"{', '.join(SPLITS)}, each with class folders {' and '.join(map(repr, CLASS_NAMES))}."
            )
    raise DatasetError(
        f"No dataset found in {path}: expected train/, val/ and test/ there or under "
        f"{DATASET_FOLDER}/{DATASET_FOLDER}/ (the Kaggle download, {DATASET_URL})."
    )


def list_split_files(root: Path, split: str) -> list[tuple[Path, int]]:
    """(path, label) for every image file of a split, labels by class-folder name."""
    split_dir = root / split
    files: list[tuple[Path, int]] = []
    for label, class_name in enumerate(CLASS_NAMES):
        class_dir = split_dir / class_name
        if not class_dir.is_dir():
            found = sorted(p.name for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
            raise DatasetError(
                f"Class folder missing: {class_dir}. Each split needs folders "
                f"{' and '.join(map(repr, CLASS_NAMES))} (lowercase, with a space); found {found}."
            )
        images = sorted(
            p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        images = [p for p in images if _utf8_name(p)]
        if not images:
            raise DatasetError(f"Class folder has no images: {class_dir}.")
        files.extend((p, label) for p in images)
    return files


def _utf8_name(path: Path) -> bool:
    """False (with a warning naming the file) for a name that is not valid UTF-8: it could not be
    written to a report, a cache key or MLflow, so the file is left out rather than the job."""
    try:
        path.name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        logger.warning("Excluding %s: its file name is not valid UTF-8; rename it to include it.", ascii(str(path)))
        return False


def stat_fingerprint(files: Sequence[tuple[Path, int]], root: Path) -> str:
    """Cheap key for the cache: relative path, label, size and mtime of every file."""
    digest = hashlib.sha256()
    for path, label in files:
        st = path.stat()
        digest.update(f"{path.relative_to(root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Decoding


def to_8bit(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit `L` or `RGB`. High-bit-depth grey is windowed to its value range."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # As a radiology viewer windows it: the actual min..max maps to 0..255, never clipped.
        values = np.asarray(image, dtype=np.float32)  # 16-bit values are exact in float32; half of float64's memory
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA", "LA", "RGBA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def _open(path: Path, data: bytes, size: int) -> DecodedFile:
    """Fully decode image bytes (see `DecodedFile`); raises on anything that does not fully decode
    (truncated, empty, not an image) or exceeds MAX_PIXELS."""
    with Image.open(io.BytesIO(data)) as image:
        fmt, mode, (width, height) = image.format or "", image.mode, image.size  # from the header
        if width * height > MAX_PIXELS:
            raise ValueError(f"{width} x {height} px is more than the {MAX_PIXELS:,} pixels a file may have")
        if image.format == "JPEG":
            side = max(size, DRAFT_MIN_SIDE)
            image.draft(image.mode, (side, side))  # decode at a reduced DCT scale: same pixels, less work
        image.load()
        image = to_8bit(ImageOps.exif_transpose(image))
    return DecodedFile(path, "", len(data), fmt, mode, width, height, image)


def _square(image: Image.Image, size: int) -> np.ndarray:
    """uint8 [size, size] grey or [size, size, 3]: the model's input before normalisation."""
    array = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    if array.ndim == 3 and (array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all():
        array = array[..., 0]  # grey stored as RGB
    return np.ascontiguousarray(array)


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Fully decode image bytes and resize to `size` x `size`: uint8 [H, W] grey or [H, W, 3].

    Raises on anything that does not fully decode (truncated, empty, not an image).
    """
    return _square(_open(Path(), data, size).image, size)


def read_image_file(path: Path, size: int) -> DecodedFile:
    """A file read (within MAX_FILE_BYTES, checked before reading) and decoded for images of up to
    `size` px; on failure `image` is None and `reason` says why."""
    try:
        size_bytes = path.stat().st_size
        if size_bytes > MAX_FILE_BYTES:  # checked before reading: a sparse 4 GB file costs nothing to name
            return DecodedFile(path, num_bytes=size_bytes, reason=f"{size_bytes:,} bytes, more than the {MAX_FILE_BYTES:,} a file may have")
        data = path.read_bytes()
    except OSError as exc:
        return DecodedFile(path, reason=f"unreadable: {exc}")
    content_hash = hashlib.sha256(data).hexdigest()
    if not data:
        return DecodedFile(path, content_hash, reason="empty file (0 bytes)")
    try:
        decoded = _open(path, data, size)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged files
        return DecodedFile(path, content_hash, len(data), reason=f"does not decode: {type(exc).__name__}: {exc}")
    return replace(decoded, sha256=content_hash)


def _decode_file(path: Path, size: int, visit: Visit | None = None) -> tuple[np.ndarray | None, str, str]:
    """(pixels or None, content sha256, reason if it failed); `visit` sees the file, decoded or not."""
    decoded = read_image_file(path, size)
    if visit is not None:
        visit(decoded)
    if decoded.image is None:
        return None, decoded.sha256, decoded.reason
    return _square(decoded.image, size), decoded.sha256, ""


def decode_file(path: Path, size: int) -> np.ndarray:
    """One file decoded and resized exactly as a split's files are; raises `ValueError` saying why not."""
    array, _, reason = _decode_file(Path(path), size)
    if array is None:
        raise ValueError(reason)
    return array


def stack_images(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """Decoded images as one uint8 [N, C, H, W] tensor: one channel when every image is grey, else
    three (grey repeated), the layout a `DecodedSplit` keeps and `to_model_input` reads."""
    grey = all(a.ndim == 2 for a in arrays)
    channels = [a[None] if grey else (np.repeat(a[None], 3, 0) if a.ndim == 2 else a.transpose(2, 0, 1)) for a in arrays]
    return torch.from_numpy(np.stack(channels))


def decode_split(
    root: Path,
    split: str,
    image_size: int,
    *,
    files: Sequence[tuple[Path, int]] | None = None,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    num_workers: int | None = None,
    progress: bool = False,
    visit: Visit | None = None,
) -> DecodedSplit:
    """Decode every file of one split. Bad files are excluded with a warning naming each.
    `visit` sees each decoded file (in the decode threads)."""
    files = list_split_files(root, split) if files is None else files
    workers = num_workers or min(8, os.cpu_count() or 1)
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    excluded: list[ExcludedFile] = []
    content = hashlib.sha256()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results: Iterator = pool.map(lambda item: _decode_file(item[0], image_size, visit), files)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(files), desc=f"decode {split}", unit="img", leave=False, disable=None)
        for (path, label), (array, content_hash, reason) in zip(files, results):
            relative = str(path.relative_to(root))
            content.update(f"{relative}|{label}|{content_hash}\n".encode())
            if array is None:
                logger.warning("Excluding %s: %s", path, reason)
                excluded.append(ExcludedFile(str(path), reason))
                continue
            arrays.append(array)
            labels.append(label)
            paths.append(relative)

    if files and len(excluded) / len(files) > max_bad_fraction:
        raise DatasetError(
            f"{len(excluded)} of {len(files)} files in {root / split} do not decode "
            f"(more than the allowed {max_bad_fraction:.0%}); first: {excluded[0].path} "
            f"({excluded[0].reason}). Check the download, or raise --max-bad-fraction."
        )
    for label, class_name in enumerate(CLASS_NAMES):
        if label not in labels:
            raise DatasetError(f"No decodable images left in {root / split / class_name}.")

    return DecodedSplit(
        name=split,
        images=stack_images(arrays),
        labels=torch.tensor(labels, dtype=torch.int64),
        paths=paths,
        excluded=excluded,
        fingerprint=content.hexdigest()[:16],
    )


# ---------------------------------------------------------------------------------------------
# Cache


def default_cache_dir() -> Path:
    """`$FRACTURE_CACHE_DIR`, else `~/.cache/fracture-tune`."""
    env = os.environ.get("FRACTURE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fracture-tune"


def _save_split(split: DecodedSplit, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "name": split.name,
        "images": split.images,
        "labels": split.labels,
        "paths": split.paths,
        "excluded": [[bad.path, bad.reason] for bad in split.excluded],
        "fingerprint": split.fingerprint,
    }
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: concurrent readers never see a half-written cache


def _load_split(path: Path) -> DecodedSplit | None:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
        logger.warning("Ignoring unreadable cache %s: %s", path, exc)
        return None
    if payload.get("version") != CACHE_FORMAT_VERSION:
        return None
    return DecodedSplit(
        name=payload["name"],
        images=payload["images"],
        labels=payload["labels"],
        paths=list(payload["paths"]),
        excluded=[ExcludedFile(p, r) for p, r in payload["excluded"]],
        fingerprint=payload["fingerprint"],
    )


def load_split(
    root: Path,
    split: str,
    image_size: int,
    *,
    cache_dir: Path | None = None,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    num_workers: int | None = None,
    progress: bool = False,
    visit: Visit | None = None,
) -> DecodedSplit:
    """A decoded split from the cache when the files are unchanged, else decoded (each file seen by
    `visit`) and cached."""
    files = list_split_files(root, split)
    key = stat_fingerprint(files, root)[:20]
    cache_path = (cache_dir or default_cache_dir()) / f"{split}-{image_size}px-{key}.pt"
    cached = _load_split(cache_path)
    if cached is not None:
        logger.info("Loaded %s (%d images) from cache %s", split, len(cached), cache_path)
        for bad in cached.excluded:
            logger.warning("Excluding %s: %s", bad.path, bad.reason)
        return cached
    decoded = decode_split(
        root, split, image_size, files=files, max_bad_fraction=max_bad_fraction, num_workers=num_workers, progress=progress, visit=visit
    )
    _save_split(decoded, cache_path)
    logger.info("Decoded %s: %d images, %d excluded; cached at %s", split, len(decoded), len(decoded.excluded), cache_path)
    return decoded


def load_dataset(
    data_dir: str | os.PathLike,
    image_size: int,
    *,
    splits: Sequence[str] = SPLITS,
    cache_dir: Path | None = None,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    num_workers: int | None = None,
    progress: bool = False,
    visit: Visit | None = None,
) -> FractureDataset:
    """Resolve the layout and load each split (decoded once, cached; `visit` sees each file decoded)."""
    if image_size < 16:
        raise DatasetError(f"--image-size must be at least 16 pixels, got {image_size}.")
    root = resolve_dataset_root(data_dir)
    for split in splits:  # check the whole layout before spending time decoding
        list_split_files(root, split)
    loaded = {
        split: load_split(
            root,
            split,
            image_size,
            cache_dir=cache_dir,
            max_bad_fraction=max_bad_fraction,
            num_workers=num_workers,
            progress=progress,
            visit=visit,
        )
        for split in splits
    }
    return FractureDataset(root=root, image_size=image_size, splits=loaded)
