"""Data audit: duplicates across splits, attributes that give the class away, files that do not decode.

    python -m fracture_models.audit --data-dir DIR [--out FOLDER]

* Exact duplicates share a content hash (sha256 of the file's bytes).
* Near-duplicates (re-encoded, resized, flipped, turned, scaled, shifted, cropped, re-exposed
  copies) in three steps. The scan's single decode keeps a 128 px grey thumbnail (uint8, aspect
  kept) and ORB keypoints with binary descriptors of the image at 256 px and of its mirror image,
  each keypoint where its pixel's centre lies (`_pixel_centred`: ORB reports a pyramid level's
  keypoints up to ~2 px off, which cancels between images in one pose but not under a half turn),
  and, in the same worker, what candidates are drawn from (big scans and checks run in forked
  worker processes, `_workers`: on two cores, 25-35% faster than threads held up on the GIL).
  Candidates (each channel proposed copies no other did on the benchmark's sets; a perceptual
  hash channel proposed none and was dropped in version 10): each image's `CANDIDATES` best of
  its `SHORTLIST` nearest neighbours by a shift-, rotation-, scale- and mirror-free spectrum;
  its `VOTED_PER_IMAGE` partners sharing the most ORB descriptors that agree on one turn and
  scale (`descriptor_votes`: hashed votes with weak geometric consistency), which proposes
  textured copies that global descriptors rank below same-pose look-alikes; and its
  `FRAME_CANDIDATES` nearest in the frame of its bright structure's moments (`moment_views`:
  centroid, principal axis and spread, which move with a shift, turn or scale that keeps the
  structure in view), which proposes smooth copies that have few corners to vote with.
  Geometric check (`geometric_check`, about 1 ms of CPU a pair: the descriptors'
  matrix products, `cross_checked_matches`, and RANSAC): the ORB matches that one similarity of
  a copy's range (turn within 12 degrees of 0 or 180, scale 0.65-1.55) lays on each other, by
  RANSAC, for b and its mirror image, or only the view whose votes are decisive
  (`matched_views`); pairs with few votes are screened first on a third of a's
  descriptors (>= `SCREEN_MIN_INLIERS`, a third of `MIN_INLIERS`; both views from one
  product; same-pose look-alikes pass, so pairs with many votes skip the screen). Only pairs
  with >= `MIN_INLIERS` that are among one member's `REGISTERED_PER_IMAGE` best go on: the
  count ranks but does not decide (same-pose look-alikes reach 99 inliers, a copy scaled by
  0.86 and cropped can have 13).
  Confirmed (`match`), at native resolution: both files are decoded again at the smaller one's
  longer side (at most FEATURE_SIDE px), b is laid on a by the geometric check's similarity
  (mapped to the compared images axis by axis, pixel centre to pixel centre: a copy laid a
  pixel off loses the texture that confirms it), and over the overlap the fine detail
  (band-pass 0.7-2.0 px) correlates at >= `DEFAULT_MIN_DETAIL_CORRELATION` (0.80) and the
  finest texture (band-pass 0.5-1.5 px) correlates at >= `MIN_TEXTURE_CORRELATION` (0.15) in 3
  of 4 of the overlap's 16 px patches, each patch's correlation corrected for the two images'
  noise (`noise_sigma`: noise added to a copy of a smooth image drowns its finest texture),
  and that texture peaks where b is laid (`texture_peak` > 0: the patches agree better there
  than `PEAK_SHIFT` px off in any direction). Edges two radiographs of one pose share (a
  collimation frame, a marker, a cortex) fill the finest band and pass the patch quartile,
  but they agree as well shifted along themselves; a copy's texture pins it in every direction.
  A pair laid at detail >= `MIN_REFINE_DETAIL` but not confirmed is first corrected by ECC
  (`_refined`: a similarity moving b's corners at most `MAX_REFINE_SHIFT` px): the ORB fit of
  a scaled, turned, re-encoded copy can be a pixel or two, or 1.5% in scale, off. When both
  views of b (plain, mirror image) had >= `MIN_INLIERS` and the better one is not confirmed,
  the other is laid too. A copy matches everywhere; another radiograph of the same pose
  matches along its shared edges but not in its texture; an unrelated image that happens to
  share a few edges, in neither. Measured in benchmarks/README.md ("Audit accuracy", versions
  11 to 14; two generators at 128 and 224 px, eight draws): recall 0.96-1.00 per set for
  version 14 on eight draws, the same as version 13's where both ran; distinct registered
  pairs reach detail 0.91, and where the detail passes their texture reaches 0.1497
  (threshold 0.15) on look-alikes and smooth 128 px bones; three pairs crossed it. Two
  look-alikes of one pose whose collimation frame and marker lie on each other (0.21, seed 81)
  are turned away by the texture peak (-0.043); two radiographs of one pose at 123 px (0.26,
  peak 0.20) and a copy shrunk to 185 px against a look-alike of its source's pose (0.22, peak
  0.008) are not, and remain version 14's two false groups, each within one class. The margin
  shrinks with resolution: at small sizes the finest band holds edges and noise but little
  texture, and two images of one pose can pass for copies.
* A shortcut is a file attribute (format, mode, width, height) whose value predicts the class:
  the majority class of each value is learned on train and scored on val + test, as a model
  learning the shortcut would be. Flagged at a held-out balanced accuracy of at least
  `SHORTCUT_BALANCED_ACCURACY` with a chi-square p-value below `SHORTCUT_P_VALUE`.

The audit of a dataset is cached (keyed by every file's path, size and mtime), so a tuning job
pays for it once.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from fracture_models.data import (
    DEFAULT_MAX_BAD_FRACTION,
    DRAFT_MIN_SIDE,
    DecodedFile,
    FractureDataset,
    default_cache_dir,
    list_split_files,
    load_dataset,
    load_split,
    read_image_file,
    resolve_dataset_root,
    stat_fingerprint,
)
from fracture_models.labels import CLASS_NAMES, SPLITS
from fracture_models.records import write_json

logger = logging.getLogger(__name__)

AUDIT_VERSION = 14  # 14: the texture must peak where laid; 13: 5 frame candidates, the mirror image's ORB described at the mirrored keypoints; 12: moment frames at three spans; 11: texture corrected for noise, similarity refinement, both views laid; 10: ECC shift refinement, registered from 12 inliers, 4 frame candidates, no hash channel; 9: candidates in the moment frame; 8: keypoints at their pixel centres, similarity mapped per axis
THUMB_SIDE = 128  # the grey thumbnail kept per image (uint8, aspect kept, centred on a square)
COARSE_SIDE = 64  # log-polar spectra are taken at half the thumbnail's resolution
LOG_POLAR_SHAPE = (64, 32)  # angles over 180 degrees x log-spaced radii of the spectrum
LOG_POLAR_RADII = (1.5, 0.4 * COARSE_SIDE)  # spectrum radii (px of COARSE_SIDE) sampled
MAX_SCALE = 1.5  # candidates by log-polar correlation consider scales between 1 / MAX_SCALE and MAX_SCALE
SHORTLIST = 16  # nearest neighbours per image by the rotation-, scale- and shift-free spectrum
CANDIDATES = 2  # of those, the best by log-polar phase correlation are matched in full
FRAME_SIDE = 16  # the thumbnail resampled in its own moment frame (`moment_views`) to this square
FRAME_SPAN = 2.0  # the frame reaches this many spreads of the bright structure from its centroid
FRAME_ZOOMS = (1.0, 1 / 1.15, 1.15)  # each image is also resampled at these spans (a zoomed copy crops the spread)
FRAME_BLUR = 1.5  # px of the thumbnail: noise and JPEG blocks out of the moments
FRAME_CANDIDATES = 5  # each image's nearest in the moment frame become candidates (4 missed two copies the 5th found, 3 one the 4th)
MIN_OVERLAP = 0.3  # of the smaller image's area, after registration
MIN_REFINE_DETAIL = 0.5  # pairs laid at least this well by the ORB similarity, but not confirmed, are corrected by ECC
REFINE_ITERATIONS = 50
MAX_REFINE_SHIFT = 4.0  # px at `compare_side`: how far ECC may move a corner of the laid image
DETAIL_BAND = (0.7, 2.0)  # the fine detail compared: Gaussian sigmas (px at `compare_side`) of a band-pass
TEXTURE_BAND = (0.5, 1.5)  # the finest texture, compared patch by patch
TEXTURE_PATCH = 16
MIN_TEXTURE_STD = 0.5  # grey levels of the band-passed patch: less is clipped or flattened
MIN_TEXTURE_RELIABILITY = 0.25  # noise at most doubles a patch's correlation per image (0.1-0.5 confirm the same copies)
DEFAULT_MIN_DETAIL_CORRELATION = 0.80  # see the module docstring for the measured margins
MIN_TEXTURE_CORRELATION = 0.15
PEAK_SHIFT = 3  # px at `compare_side`: twice TEXTURE_BAND's larger sigma, where texture no longer correlates with itself
MIN_TEXTURE_PEAK = 0.0  # a copy's texture agrees better where laid than PEAK_SHIFT px off; shared edges agree as well along themselves
FEATURE_SIDE = DRAFT_MIN_SIDE  # local features are found on the grey image scaled to this longer side (256 px)
ORB_FEATURES = 300  # ORB keypoints kept per image (and as many on its mirror image)
ORB_SCALE = 1.2  # ORB's pyramid: each level's image is this much smaller than the one before
ORB_LEVELS = 6
VOTE_TABLES = 8  # hash tables of the descriptor vote; each keys on VOTE_KEY_BYTES whole bytes
VOTE_KEY_BYTES = 3
VOTE_BUCKET_CAP = 16  # buckets fuller than this hold common structure (edges, markers): no vote
VOTE_ANGLE_BIN = 30  # degrees: votes agree on a turn within one such bin
VOTED_PER_IMAGE = 2  # each image's partners with the most consistent votes become candidates
MIN_DECISIVE_VOTES = 16  # a pair's plain or mirror votes decide which view is matched when this many
DECISIVE_VOTE_RATIO = 4  # and this many times the other view's
DESCRIPTOR_BITS = 256  # ORB's
MAX_DESCRIPTOR_DISTANCE = 64  # of DESCRIPTOR_BITS, for a descriptor match to enter RANSAC
MAX_TURN_DEGREES = 12  # the copy's rotation (or 180 degrees more): planted copies turn up to 10
SCALE_RANGE = (0.65, 1.55)  # the copy's scale: 0.8-1.25 times a crop of up to 8%
MIN_INLIERS = 12  # geometrically consistent matches before a pair is registered in full (copies: >= 13)
SCREEN_STRIDE = 3  # the screen matches every third descriptor of one image's
SCREEN_MIN_INLIERS = MIN_INLIERS // SCREEN_STRIDE
RANSAC_ITERATIONS = 1000
SCREEN_ITERATIONS = 300  # RANSAC's in the screen: 4 inliers among 30 matches are drawn with 99% in 257
SCREEN_BELOW_VOTES = 16  # pairs with fewer descriptor votes are screened first (same-pose look-alikes pass it)
REGISTERED_PER_IMAGE = 2  # only each image's best pairs by inliers are registered in full
PROCESSES_FROM_FILES = 2000  # scans of this many files run in worker processes (threads hold each other up on the GIL)
PROCESSES_FROM_PAIRS = 10000  # and geometric checks of this many pairs
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
    """What the audit knows of one file."""

    split: str
    label: int
    path: str  # relative to the dataset root
    format: str
    mode: str
    width: int
    height: int
    bytes: int
    sha256: str
    error: str = ""

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


# ---------------------------------------------------------------------------------------------
# Fingerprints: each image's grey thumbnail and local features


@dataclass
class Thumbnails:
    """Grey thumbnails [N, THUMB_SIDE, THUMB_SIDE] uint8, each image's aspect kept and centred,
    and where each image lies on its square: boxes [N, 4] of (top, left, height, width); and
    what the candidates are drawn from, found on the scan's threads: each image's log-polar
    spectrum's FFT (`spectra`, `log_polar_fft`), its moment-frame views (`frames`,
    `moment_views`) and its ORB features."""

    pixels: np.ndarray
    boxes: np.ndarray
    features: list["LocalFeatures | None"]
    root: Path  # the dataset root the records' paths are relative to: pairs are confirmed from the files
    spectra: np.ndarray | None = None
    frames: np.ndarray | None = None

    @classmethod
    def empty(cls, n: int, root: Path) -> "Thumbnails":
        return cls(
            np.zeros((n, THUMB_SIDE, THUMB_SIDE), np.uint8),
            np.zeros((n, 4), np.int32),
            [None] * n,
            root,
            np.zeros((n, LOG_POLAR_SHAPE[0], LOG_POLAR_SHAPE[1] // 2 + 1), np.complex64),
            np.zeros((n, 4 * len(FRAME_ZOOMS), FRAME_SIDE * FRAME_SIDE), np.float32),
        )


@dataclass(frozen=True)
class LocalFeatures:
    """ORB keypoints [K, 2] (x, y), their orientations (degrees) and pyramid levels, and binary
    descriptors [K, 32] uint8 of an image and of its mirror image (ORB turns with the image, but
    does not mirror; a vertical flip is a mirror turned 180 degrees). Points are in pixels of the
    image they were found on, 0 at the first pixel's centre."""

    points: np.ndarray
    descriptors: np.ndarray
    mirror_points: np.ndarray
    mirror_descriptors: np.ndarray
    angles: np.ndarray
    levels: np.ndarray
    mirror_angles: np.ndarray
    mirror_levels: np.ndarray
    size: tuple[int, int] = (FEATURE_SIDE, FEATURE_SIDE)  # width, height of the image they were found on


def _grey(decoded: DecodedFile) -> Image.Image:
    """The file's grey image as the audit sees it: the data module's decode (8-bit, EXIF
    orientation applied), in grey."""
    return decoded.image if decoded.image.mode == "L" else decoded.image.convert("L")


def _resized(grey: Image.Image, side: int) -> Image.Image:
    """`grey` scaled (bilinear) so its longer side is `side` px."""
    scale = side / max(grey.size)
    return grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.Resampling.BILINEAR)


def local_features(grey: Image.Image) -> LocalFeatures:
    """ORB on the grey image scaled to FEATURE_SIDE and on its mirror image. ORB finds the mirror
    image's keypoints where the image's lie, mirrored (FAST and Harris are symmetric: all of
    26,631 on 100 images, and all but one descriptor bit for bit), so the mirror image's are
    only described there, which saves a second detection."""
    import cv2

    pixels = np.asarray(_resized(grey, FEATURE_SIDE))
    mirror = np.ascontiguousarray(pixels[:, ::-1])
    orb = cv2.ORB_create(nfeatures=ORB_FEATURES, scaleFactor=ORB_SCALE, nlevels=ORB_LEVELS, edgeThreshold=15, patchSize=15, fastThreshold=5)
    keypoints, descriptors = orb.detectAndCompute(pixels, None)
    plain = _keypoint_table(keypoints)
    mirrored, levels = plain.copy(), plain[:, 5].astype(np.int64)
    level_widths = np.round(pixels.shape[1] / ORB_SCALE ** np.arange(ORB_LEVELS))
    mirrored[:, 0] = (level_widths[levels] - 1) * ORB_SCALE**levels - plain[:, 0]
    mirrored[:, 3] = (180 - plain[:, 3]) % 360
    mirror_descriptors = None
    if len(mirrored):
        described, mirror_descriptors = orb.compute(mirror, [cv2.KeyPoint(*row[:5], int(row[5])) for row in mirrored.tolist()])
        if len(described) != len(mirrored):  # ORB drops those it cannot describe (none of the real-size set's)
            mirrored = _keypoint_table(described)
    found, poses = [], []
    for table, view_descriptors, shape in ((plain, descriptors, pixels.shape), (mirrored, mirror_descriptors, mirror.shape)):
        levels = table[:, 5].astype(np.int8)
        found += [
            _pixel_centred(table[:, :2].astype(np.float32), levels, shape),
            np.zeros((0, 32), np.uint8) if view_descriptors is None else view_descriptors,
        ]
        poses += [table[:, 3].astype(np.float32), levels]
    return LocalFeatures(*found, *poses, size=(pixels.shape[1], pixels.shape[0]))


def _keypoint_table(keypoints: Sequence) -> np.ndarray:
    """OpenCV's keypoints as rows (x, y, size, angle, response, pyramid level) [K, 6], in one pass."""
    return np.array([(*k.pt, k.size, k.angle, k.response, k.octave) for k in keypoints], np.float64).reshape(-1, 6)


def _pixel_centred(points: np.ndarray, levels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """ORB's keypoints of pyramid level l (found at pixel u of an image resized to
    round(side / ORB_SCALE**l)) are reported at u * ORB_SCALE**l, which is off by up to ~2 px
    at level 5 from where that pixel's centre lies in the image; the offset cancels between two
    images in the same pose but doubles under a half turn. Returns where they lie."""
    scale = (ORB_SCALE ** levels.astype(np.float64))[:, None]
    sides = np.array([shape[1], shape[0]], np.float64)
    return ((points / scale + 0.5) * sides / np.round(sides / scale) - 0.5).astype(np.float32)


def thumbnail(image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The grey image scaled so its longer side is THUMB_SIDE, centred on a black square."""
    pixels = np.asarray(_resized(image, THUMB_SIDE))
    height, width = pixels.shape
    top, left = (THUMB_SIDE - height) // 2, (THUMB_SIDE - width) // 2
    square = np.zeros((THUMB_SIDE, THUMB_SIDE), np.uint8)
    square[top : top + height, left : left + width] = pixels
    return square, (top, left, height, width)


def _inspect(root: Path, split: str, label: int, decoded: DecodedFile) -> tuple[ImageRecord, tuple | None]:
    """The record, thumbnail and local features of one file read by `read_image_file`."""
    relative = str(decoded.path.relative_to(root))
    if decoded.image is None:
        return ImageRecord(split, label, relative, "", "", 0, 0, decoded.num_bytes, decoded.sha256, decoded.reason), None
    grey = _grey(decoded)
    record = ImageRecord(
        split, label, relative, decoded.format, decoded.mode, decoded.width, decoded.height, decoded.num_bytes, decoded.sha256
    )
    pixels, box = thumbnail(grey)
    return record, (pixels, box, local_features(grey), log_polar_fft(pixels, box), moment_views(pixels, box))


def _files(root: Path) -> list[tuple[str, Path, int]]:
    return [(split, path, label) for split in SPLITS for path, label in list_split_files(root, split)]


@contextlib.contextmanager
def one_thread_per_task():
    """OpenCV's and BLAS's own threads held to one while the audit runs one task per thread:
    on top of its threads they cost the scan 15% and the descriptor products 1.8x."""
    import cv2
    from threadpoolctl import threadpool_limits

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        cv2.setNumThreads(before)


class Inspector:
    """Inspects the files another reader decodes anyway (`visit`, for the loader's decode threads),
    so that a first job decodes each file once; `scan` then decodes only the files it did not see."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._where = {path: (split, label) for split, path, label in _files(root)}
        self.inspected: dict[Path, tuple[ImageRecord, tuple | None]] = {}

    def visit(self, decoded: DecodedFile) -> None:
        if decoded.path in self._where:
            self.inspected[decoded.path] = _inspect(self.root, *self._where[decoded.path], decoded)


def scan(
    root: Path,
    *,
    num_workers: int | None = None,
    progress: bool = False,
    inspected: dict[Path, tuple] | None = None,
    processes: bool | None = None,
) -> tuple[list[ImageRecord], Thumbnails]:
    """One record per image file of every split, and their thumbnails (blank where a file does
    not decode), from a single decode of each file; `inspected`: files an `Inspector` already saw.
    `processes`: decode in forked worker processes (default: from PROCESSES_FROM_FILES files
    left to decode; 25-35% faster than threads on two cores)."""
    jobs = _files(root)
    inspected = inspected or {}
    workers = num_workers or min(8, os.cpu_count() or 1)
    thumbs = Thumbnails.empty(len(jobs), root)
    records = []
    remaining = [(root, *job) for job in jobs if job[1] not in inspected]
    processes = workers > 1 and len(remaining) >= PROCESSES_FROM_FILES if processes is None else processes
    with _workers(workers, processes) as pool:
        scanned = pool.map(_inspect_file, remaining, chunksize=32 if processes else 1)
        results: Iterable = (inspected[path] if path in inspected else next(scanned) for _, path, _ in jobs)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(jobs), desc="audit", unit="img", leave=False, disable=None)
        for i, (record, thumb) in enumerate(results):
            records.append(record)
            if thumb is not None:
                thumbs.pixels[i], thumbs.boxes[i], thumbs.features[i], thumbs.spectra[i], thumbs.frames[i] = thumb
    return records, thumbs


def _inspect_file(job: tuple[Path, str, Path, int]) -> tuple[ImageRecord, tuple | None]:
    root, split, path, label = job
    return _inspect(root, split, label, read_image_file(path, FEATURE_SIDE))


def _can_fork() -> bool:
    """Whether worker processes can be forked (Linux): they inherit the parent's memory, and
    start at once, without importing anything or running the caller's script again."""
    import multiprocessing

    return sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


@contextlib.contextmanager
def _workers(count: int, processes: bool, initializer=None, initargs: tuple = ()):
    """A pool of `count` threads, or of forked worker processes (each running one task at a time
    on one thread; threads where processes cannot be forked), with OpenCV and BLAS held to one
    thread each. A forked worker only runs numpy, OpenCV and PIL on what it inherited (never
    Ray, torch or MLflow), so the parent's other threads do not concern it."""
    if not (processes and _can_fork()):
        with one_thread_per_task(), ThreadPoolExecutor(max_workers=count) as pool:
            yield pool
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(count, mp_context=context, initializer=_start_worker, initargs=(initializer, initargs)) as pool:
        yield pool


def _start_worker(initializer, initargs: tuple) -> None:
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    threadpool_limits(1)
    if initializer is not None:
        initializer(*initargs)


# ---------------------------------------------------------------------------------------------
# Log-polar spectra: how well one thumbnail can be turned and scaled onto another, cheaply.


@functools.lru_cache(maxsize=1024)
def _window(box: tuple[int, ...], side: int = THUMB_SIDE) -> np.ndarray:
    """A Tukey window over the image's box on its square (zero outside): tapers the edges so
    the image border does not dominate the spectrum. Read-only: images of one shape share it."""
    from scipy.signal.windows import tukey

    top, left, height, width = box
    window = np.zeros((side, side), np.float32)
    window[top : top + height, left : left + width] = np.outer(tukey(height, 0.3), tukey(width, 0.3))
    window.flags.writeable = False
    return window


def _apodised(pixels: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The thumbnail at COARSE_SIDE (the mean of each 2 x 2 block), less its mean, times its window."""
    import cv2

    coarse = cv2.resize(pixels.astype(np.float32), (COARSE_SIDE, COARSE_SIDE), interpolation=cv2.INTER_AREA)
    window = _window(tuple(int(v) // 2 for v in box), COARSE_SIDE)
    mean = (coarse * window).sum() / max(window.sum(), 1e-6)
    return (coarse - mean) * window


def _log_polar_grid() -> np.ndarray:
    angles = np.arange(LOG_POLAR_SHAPE[0]) * np.pi / LOG_POLAR_SHAPE[0]
    radii = np.exp(np.linspace(*np.log(LOG_POLAR_RADII), LOG_POLAR_SHAPE[1]))
    centre = COARSE_SIDE / 2
    return np.array([centre + radii[None, :] * np.sin(angles)[:, None], centre + radii[None, :] * np.cos(angles)[:, None]])


_LOG_POLAR_GRID = _log_polar_grid()
_LOG_RADIUS_STEP = np.log(LOG_POLAR_RADII[1] / LOG_POLAR_RADII[0]) / (LOG_POLAR_SHAPE[1] - 1)
_FREQ_Y, _FREQ_X = np.meshgrid(np.fft.fftfreq(COARSE_SIDE), np.fft.fftfreq(COARSE_SIDE), indexing="ij")
_EMPHASIS = np.fft.fftshift(
    (1 - np.cos(np.pi * _FREQ_X) * np.cos(np.pi * _FREQ_Y)) * (2 - np.cos(np.pi * _FREQ_X) * np.cos(np.pi * _FREQ_Y))
)


def log_polar_spectrum(apodised: np.ndarray) -> np.ndarray:
    """Log-magnitude spectrum (high frequencies emphasised) on a log-polar grid [angle, log radius].
    A shift leaves it unchanged; a rotation or scaling shifts it along an axis; a mirror image
    reverses the angle axis."""
    from scipy.ndimage import map_coordinates

    magnitude = np.fft.fftshift(np.abs(np.fft.fft2(apodised))) * _EMPHASIS
    polar = map_coordinates(np.log1p(magnitude), _LOG_POLAR_GRID, order=1)
    polar -= polar.mean()
    return (polar / (np.linalg.norm(polar) + 1e-12)).astype(np.float32)


def _mirrored(polar_fft: np.ndarray) -> np.ndarray:
    """The log-polar spectrum's FFT for the mirror image: angle theta becomes pi - theta."""
    return polar_fft[..., (-np.arange(LOG_POLAR_SHAPE[0])) % LOG_POLAR_SHAPE[0], :]


def _scale_limit() -> int:
    return int(np.ceil(np.log(MAX_SCALE) / _LOG_RADIUS_STEP))


def _scale_lags_dft() -> np.ndarray:
    """[radii // 2 + 1, lags]: the inverse real DFT along the log-radius axis (a half spectrum,
    its inner bins counted twice), at the scale lags within MAX_SCALE only."""
    size = LOG_POLAR_SHAPE[1]
    bins, lags = np.arange(size // 2 + 1), np.r_[0 : _scale_limit() + 1, size - _scale_limit() : size]
    weights = np.where((bins == 0) | (bins == size // 2), 1.0, 2.0)
    return (weights[:, None] * np.exp(2j * np.pi * bins[:, None] * lags[None, :] / size) / size).astype(np.complex64)


_SCALE_LAGS_DFT = _scale_lags_dft()


def unit_spectra(polar_ffts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The log-polar spectra's FFTs at unit magnitude [N, angles, radii // 2 + 1], and the
    conjugates of theirs and their mirror images' [N, 2, ...]: phase correlation's normalised
    cross-power spectrum of a pair is the product of one and the other's conjugate. The DC
    term, 0 in a zero-mean spectrum, stays 0."""
    units = (polar_ffts / (np.abs(polar_ffts) + np.float32(1e-9))).astype(np.complex64)
    units[..., 0, 0] = 0
    conjugates = np.conj(units)
    return units, np.stack([conjugates, _mirrored(conjugates)], 1)


def rotation_scale_peaks(units: np.ndarray, conjugates: np.ndarray) -> np.ndarray:
    """Best log-polar phase correlation of each pair (rows of `units` and `conjugates`, from
    `unit_spectra`), over b and its mirror image and turns and scales within MAX_SCALE: a cheap
    score of how well b can be turned and scaled onto a. Only the scale lags wanted are
    inverted (`_SCALE_LAGS_DFT`, then an inverse FFT over the angles): 4 times as fast as
    the whole inverse."""
    import scipy.fft

    lags = (units[:, None] * conjugates) @ _SCALE_LAGS_DFT
    correlation = scipy.fft.ifft(lags, axis=-2, workers=1, overwrite_x=True).real
    return correlation.reshape(len(units), -1).max(1)


def _band(image: np.ndarray, sigmas: tuple[float, float]) -> np.ndarray:
    return _gaussian(image, sigmas[0]) - _gaussian(image, sigmas[1])


def _gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """scipy's `gaussian_filter` (reflected border, truncated at 4 sigmas) by OpenCV: 5-8 times
    as fast, the same to 5e-5 grey levels."""
    import cv2

    size = 2 * int(4.0 * sigma + 0.5) + 1
    return cv2.GaussianBlur(image, (size, size), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis."""
    a, b = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


@dataclass(frozen=True)
class Match:
    """How well b matches a once laid on it at native resolution: `detail`, the correlation of
    their fine detail over the overlap; `texture`, the lower quartile of that correlation over
    the overlap's 16 px patches; `peak`, how much better the finest band agrees where b is laid
    than PEAK_SHIFT px off it (`texture_peak`). Each is -1 when they barely overlap or a file no
    longer decodes."""

    detail: float
    texture: float
    peak: float
    inliers: int = 0  # ORB matches consistent with one copy's transform (`geometric_check`)

    def confirms(self, min_detail: float = DEFAULT_MIN_DETAIL_CORRELATION, min_texture: float = MIN_TEXTURE_CORRELATION) -> bool:
        return self.detail >= min_detail and self.texture >= min_texture and self.peak > MIN_TEXTURE_PEAK


def _patch_correlations(a: np.ndarray, b: np.ndarray, inside: np.ndarray, noise: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Correlation of a and b in each TEXTURE_PATCH square wholly inside the overlap where both
    have some texture (a copy's shadows clipped to black or flattened by JPEG have none),
    corrected for each one's `noise` (its variance in the band): a patch's correlation is
    divided by the square root of the share of each patch's variance that is not noise (at
    least MIN_TEXTURE_RELIABILITY), the correlation its signals would have without it. Noise
    added to a copy of a smooth image drowns its finest texture: measured at 0.03-0.15 on
    copies laid at detail 0.89-0.96 (sigma 3.6-6)."""
    p = TEXTURE_PATCH
    height, width = (a.shape[0] // p) * p, (a.shape[1] // p) * p

    def patches(x: np.ndarray) -> np.ndarray:
        return x[:height, :width].reshape(height // p, p, width // p, p).transpose(0, 2, 1, 3).reshape(-1, p * p)

    full = patches(inside).all(1)
    a, b = patches(a)[full], patches(b)[full]
    textured = (a.std(1) >= MIN_TEXTURE_STD) & (b.std(1) >= MIN_TEXTURE_STD)  # not clipped or flattened to nothing
    a, b = a[textured], b[textured]

    def reliability(x: np.ndarray, noise_variance: float) -> np.ndarray:
        return np.clip(1 - noise_variance / x.var(1), MIN_TEXTURE_RELIABILITY, 1)

    return np.clip(_correlation(a, b) / np.sqrt(reliability(a, noise[0]) * reliability(b, noise[1])), -1, 1)


def texture_peak(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> float:
    """The mean, over the TEXTURE_PATCH squares of the overlap where both have texture, of a's
    correlation with b where b is laid minus its highest with b shifted PEAK_SHIFT px in any of
    8 directions (a and b: the band-passed images; -1 with fewer than 4 squares). A copy's
    texture pins the registration in every direction: positive. Two radiographs of one pose
    agree in the fine band along their shared edges (bone, collimation, marker), which agree as
    well shifted along themselves (about 0: a median lands there), while their own texture
    agrees nowhere (the best of 8 chance correlations beats the laid one): negative. A gate
    where the texture passes, not a test on its own: at 100-150 px a bone's edges curve within
    PEAK_SHIFT and distinct pairs whose detail passes reach 0.18 (their texture fails).
    Measured on eight benchmark draws (benchmarks/README.md, version 14): each set's weakest
    confirmed copy 0.013-0.17; a look-alike pair whose detail and texture passed, -0.043."""
    import cv2

    p, s = TEXTURE_PATCH, PEAK_SHIFT
    rows, columns = (a.shape[0] - 2 * s) // p, (a.shape[1] - 2 * s) // p

    def patches(x: np.ndarray, dy: int = 0, dx: int = 0) -> np.ndarray:
        window = x[s + dy : s + dy + rows * p, s + dx : s + dx + columns * p]
        return window.reshape(rows, p, columns, p).transpose(0, 2, 1, 3).reshape(-1, p * p)

    around = cv2.erode(inside.astype(np.uint8), np.ones((2 * s + 1, 2 * s + 1), np.uint8)) > 0  # every shift stays inside
    full = patches(around).all(1)
    a_patches, b_patches = patches(a)[full], patches(b)[full]
    textured = (a_patches.std(1) >= MIN_TEXTURE_STD) & (b_patches.std(1) >= MIN_TEXTURE_STD)
    if textured.sum() < 4:
        return -1.0
    a_patches = a_patches[textured]
    laid = _correlation(a_patches, b_patches[textured])
    shifts = [(dy, dx) for dy in (-s, 0, s) for dx in (-s, 0, s) if dy or dx]
    off = np.max([_correlation(a_patches, patches(b, dy, dx)[full][textured]) for dy, dx in shifts], axis=0)
    return float(np.mean(laid - off))


def native_grey(path: Path, side: int) -> np.ndarray | None:
    """The file's grey image (as the scan decodes it) scaled so its longer side is `side`."""
    decoded = read_image_file(path, side)
    if decoded.image is None:  # changed or damaged since the scan: not confirmable
        return None
    return np.asarray(_resized(_grey(decoded), side))  # uint8: a job holds every file of the confirmed pairs at once


def compare_side(a: ImageRecord, b: ImageRecord) -> int:
    """Where two files are compared: the smaller one's native longer side, at most FEATURE_SIDE."""
    return min(FEATURE_SIDE, max(a.width, a.height), max(b.width, b.height))


def _native_transform(
    transform: np.ndarray, sizes: tuple[tuple[int, int], tuple[int, int]], a_shape: tuple[int, ...], b_shape: tuple[int, ...]
) -> np.ndarray:
    """The similarity from b's feature image to a's as an affine map between the compared images
    (each axis scaled by its own size, pixel centres kept): a pixel off is a copy's texture lost."""

    def to_native(size: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:  # feature px -> compared px
        scale = np.array([shape[1] / size[0], shape[0] / size[1]])
        return np.array([[scale[0], 0, 0.5 * scale[0] - 0.5], [0, scale[1], 0.5 * scale[1] - 0.5], [0, 0, 1]])

    full = to_native(sizes[0], a_shape) @ np.vstack([transform, [0, 0, 1]]) @ np.linalg.inv(to_native(sizes[1], b_shape))
    return full[:2].astype(np.float32)


def match(a: np.ndarray, b: np.ndarray, check: "GeometricCheck") -> Match:
    """Lay b (grey, its mirror image when `check.mirror`) on a with the geometric check's
    similarity, both at the same scale (`compare_side`), then compare their fine detail over the
    overlap and patch by patch. A copy matches everywhere, up to its re-encoding and noise;
    another radiograph of the same pose matches along its shared edges but not in its texture,
    and an unrelated one in neither. A pair laid well enough to be one (detail >=
    MIN_REFINE_DETAIL) but not confirmed is laid again after ECC corrects it (`_refined`): the
    ORB matches of a scaled, turned, re-encoded copy fix it only to a pixel or two, and a pixel
    off is its texture lost. When both views of b had >= MIN_INLIERS and the better one is not
    confirmed, the other is laid too: a nearly symmetric bone's mirror image can have more
    inliers than the copy's own view."""
    laid = _match_view(a, b, check)
    if check.other_view is None or laid.confirms():
        return laid
    other = _match_view(a, b, check.other_view)
    return replace(other if other.confirms() or other.detail > laid.detail else laid, inliers=check.inliers)


def _match_view(a: np.ndarray, b: np.ndarray, check: "GeometricCheck") -> Match:
    """`match` for the view of b that `check` found (its plain or mirror image)."""
    inliers = check.inliers
    if check.transform is None:
        return Match(-1.0, -1.0, -1.0, inliers)
    transform = _native_transform(check.transform, check.sizes, a.shape, b.shape)
    a, b = a.astype(np.float32), b.astype(np.float32)
    b_view = np.ascontiguousarray(b[:, ::-1]) if check.mirror else b
    scores = _laid(a, b_view, transform)
    if scores is not None and scores[0] >= MIN_REFINE_DETAIL and not Match(*scores).confirms():
        refined = _refined(a, b_view, transform)
        if refined is not None:
            scores = _laid(a, b_view, refined) or scores
    if scores is None:
        return Match(-1.0, -1.0, -1.0, inliers)
    return Match(*(round(score, 4) for score in scores), inliers)


def _laid(a: np.ndarray, b_view: np.ndarray, transform: np.ndarray) -> tuple[float, float, float] | None:
    """Detail and texture correlation and texture peak of b laid on a by `transform` (b's pixels
    to a's), or None when they overlap on less than MIN_OVERLAP of the smaller image."""

    size = (a.shape[1], a.shape[0])
    laid, inside = _laid_on(a, b_view, transform)
    if inside.sum() < MIN_OVERLAP * min(a.size, b_view.size):
        return None
    detail = float(_correlation(_band(a, DETAIL_BAND)[inside], _band(laid, DETAIL_BAND)[inside]))
    noise = (
        _band_noise_variance(a, np.eye(2, 3, dtype=np.float32), size, inside),
        _band_noise_variance(b_view, transform, size, inside),
    )
    a_texture, b_texture = _band(a, TEXTURE_BAND), _band(laid, TEXTURE_BAND)
    patches = _patch_correlations(a_texture, b_texture, inside, noise)
    texture = float(np.percentile(patches, 25)) if len(patches) >= 4 else -1.0
    return detail, texture, texture_peak(a_texture, b_texture, inside)


def _laid_on(a: np.ndarray, b_view: np.ndarray, transform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """b laid on a's pixel grid by `transform`, and where it lies (bool; its interpolated border out)."""
    import cv2

    size = (a.shape[1], a.shape[0])
    laid = cv2.warpAffine(b_view, transform, size, flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones_like(b_view, np.uint8), transform, size, flags=cv2.INTER_NEAREST)
    return laid, cv2.erode(inside, np.ones((5, 5), np.uint8)) > 0


def noise_sigma(image: np.ndarray) -> float:
    """The standard deviation of an image's white noise (Immerkaer 1996: the mean absolute
    response to a Laplacian difference that cancels smooth structure)."""
    import cv2

    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = cv2.filter2D(image.astype(np.float32), -1, kernel)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6)


@functools.lru_cache(maxsize=1)
def _noise_stream() -> np.ndarray:
    """White noise of variance 1, enough for any compared image (read-only)."""
    stream = np.random.default_rng(0).standard_normal(FEATURE_SIDE * FEATURE_SIDE).astype(np.float32)
    stream.flags.writeable = False
    return stream


def _unit_noise(shape: tuple[int, ...]) -> np.ndarray:
    """White noise of variance 1, the same for every image of a shape: the generator's first
    draws, in the image's shape (as if drawn in that shape, without drawing it anew)."""
    return _noise_stream()[: shape[0] * shape[1]].reshape(shape)


def _band_noise_variance(image: np.ndarray, transform: np.ndarray, size: tuple[int, int], inside: np.ndarray) -> float:
    """The variance the image's noise (`noise_sigma`) has in TEXTURE_BAND once laid by
    `transform`: white noise of that sigma, warped and band-passed as the image is."""
    import cv2

    laid = cv2.warpAffine(_unit_noise(image.shape), transform, size, flags=cv2.INTER_LINEAR)
    return noise_sigma(image) ** 2 * float(_band(laid, TEXTURE_BAND)[inside].var())


def _refined(a: np.ndarray, b_view: np.ndarray, transform: np.ndarray) -> np.ndarray | None:
    """`transform` corrected by ECC on b as laid (the similarity nearest to the affine map that
    maximises the two images' correlation, lightly smoothed), or None when ECC does not
    converge or moves any corner of b by more than MAX_REFINE_SHIFT px: a refinement, not a
    search. A similarity, not the affine map itself: refined affinely, same-pose look-alikes
    of the second benchmark generator reached detail 0.89 and texture 0.12 (thresholds 0.80
    and 0.15); as a similarity, detail 0.82 with texture 0.02, and a shift alone missed copies
    whose ORB scale was 1.5% off (benchmarks/README.md, version 11)."""
    import cv2

    laid, inside = _laid_on(a, b_view, transform)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, REFINE_ITERATIONS, 1e-5)
    try:  # the map from a's pixels to laid b's
        _, warp = cv2.findTransformECC(a, laid, np.eye(2, 3, dtype=np.float32), cv2.MOTION_AFFINE, criteria, inside.astype(np.uint8), 5)
    except cv2.error:  # did not converge
        return None
    cos, sin = (warp[0, 0] + warp[1, 1]) / 2, (warp[1, 0] - warp[0, 1]) / 2
    similarity = np.array([[cos, -sin, warp[0, 2]], [sin, cos, warp[1, 2]], [0, 0, 1]], np.float64)
    refined = (np.linalg.inv(similarity) @ np.vstack([transform, [0, 0, 1]]))[:2]
    height, width = b_view.shape
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], np.float64)
    if np.abs(corners @ (refined - transform).T).max() > MAX_REFINE_SHIFT:
        return None
    return refined.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Duplicates


def log_polar_fft(pixels: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The FFT of a thumbnail's log-polar spectrum (real input: the half spectrum of `rfft2`)."""
    return np.fft.rfft2(log_polar_spectrum(_apodised(pixels, box))).astype(np.complex64)


def _invariants(polar_ffts: np.ndarray) -> np.ndarray:
    """Magnitudes of the log-polar spectra's FFTs (symmetrised over the angle axis): unchanged by
    shift, rotation, scale and mirror. Rows unit-normalised, so a dot product is a cosine."""
    magnitude = np.abs(polar_ffts)
    magnitude = np.log1p(magnitude + _mirrored(magnitude))[:, :12, :9].reshape(len(polar_ffts), -1)
    magnitude -= magnitude.mean(1, keepdims=True)
    return magnitude / (np.linalg.norm(magnitude, axis=1, keepdims=True) + 1e-12)


def moment_views(pixels: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The thumbnail resampled in the frame its bright structure defines: centred on the
    centroid of the pixels above the median, turned to their principal axis and scaled by their
    spread. The frame moves with the image under a shift, turn, scale or crop that keeps the
    structure, so a copy is resampled alike where corners (ORB) or the spectrum's magnitudes
    fail: smooth images scaled and turned. The axis has two directions and the frame two
    hands, so four views, each zero-mean and unit-norm; a mirror is one of them. Each is taken
    at the spans FRAME_ZOOMS too: a copy zoomed in by 1.2 crops its structure, and its spread
    with it (copies zoomed 1.17-1.25 that no channel proposed ranked 5th-130th among their
    source's neighbours at one span, 0th-6th at three). Views [4 * len(FRAME_ZOOMS),
    FRAME_SIDE**2], the first at FRAME_SPAN."""
    import cv2

    top, left, height, width = box
    grey = cv2.GaussianBlur(pixels[top : top + height, left : left + width].astype(np.float32), (0, 0), FRAME_BLUR)
    background = float(np.median(grey))
    moments = cv2.moments(np.clip(grey - background, 0, None))
    total = moments["m00"]
    if total <= 0:
        return np.zeros((4 * len(FRAME_ZOOMS), FRAME_SIDE * FRAME_SIDE), np.float32)
    centre = np.array([moments["m10"], moments["m01"]]) / total
    covariance = np.array([[moments["mu20"], moments["mu11"]], [moments["mu11"], moments["mu02"]]])
    values, vectors = np.linalg.eigh(covariance / total)
    spread = np.sqrt(max(values.sum(), 1e-6))
    views = []
    for zoom in FRAME_ZOOMS:
        step = spread * FRAME_SPAN * zoom / (FRAME_SIDE / 2)  # thumbnail px per frame px
        to_image = np.zeros((2, 3), np.float32)  # frame px -> thumbnail px
        to_image[:, 0], to_image[:, 1] = vectors[:, 1] * step, np.array([-vectors[1, 1], vectors[0, 1]]) * step
        to_image[:, 2] = centre - to_image[:, :2] @ np.full(2, FRAME_SIDE / 2 - 0.5)
        view = cv2.warpAffine(
            grey, to_image, (FRAME_SIDE, FRAME_SIDE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=background
        )
        view -= view.mean()
        view /= np.linalg.norm(view) + 1e-6
        # the axis's other direction turns the view by 180 degrees; the other hand flips its rows
        views += [view, view[::-1], view[::-1, ::-1], view[:, ::-1]]
    return np.stack(views).reshape(len(views), -1)


def _flip_parities(views: np.ndarray) -> np.ndarray:
    """Views [N, FRAME_SIDE**2] split into their four parts even or odd under a flip of the
    rows and of the columns [N, 4 (ee, eo, oe, oo), FRAME_SIDE**2 / 4], each part kept as one
    quadrant (scaled so that dot products are the whole parts'): a flipped view's cosine with
    another is the sum of its parts' cosines, each signed by its parity."""
    side, half = FRAME_SIDE, FRAME_SIDE // 2
    v = views.reshape(len(views), side, side)
    q, r, c, rc = v[:, :half, :half], v[:, : half - 1 : -1, :half], v[:, :half, : half - 1 : -1], v[:, : half - 1 : -1, : half - 1 : -1]
    return np.stack([q + r + c + rc, q + r - c - rc, q - r + c - rc, q - r - c + rc], 1).reshape(len(views), 4, -1) / 2


def _frame_neighbours(views: np.ndarray, keep: int, chunk: int = 128) -> np.ndarray:
    """Each image's `keep` nearest images [N, keep] by the cosine of its first view with the best
    of the other's (four at each of FRAME_ZOOMS; positions in `views`). The four views of a
    span are one view's flips, so their cosines come from one product of the flip parities
    (`_flip_parities`): a quarter of the arithmetic, the same neighbours up to rounding."""
    parts = [_flip_parities(views[:, k]) for k in range(0, views.shape[1], 4)]
    first, others = parts[0], [[np.ascontiguousarray(part[:, p].T) for p in range(4)] for part in parts]
    nearest = []
    for start in range(0, len(views), chunk):
        rows = np.arange(start, min(start + chunk, len(views)))
        best = None
        for other in others:
            even, x, y, z = (first[rows, p] @ other[p] for p in range(4))
            # flips' signs on (eo, oe, oo): none +++, rows +--, both --+, columns -+-: the best
            # is even + max(x + |y + z|, |y - z| - x)
            plus = np.add(y, z)
            np.subtract(y, z, out=z)
            np.abs(plus, out=plus)
            np.abs(z, out=z)
            plus += x
            z -= x
            np.maximum(plus, z, out=plus)
            plus += even
            best = plus if best is None else np.maximum(best, plus, out=best)
        best[np.arange(len(rows)), rows] = -np.inf
        nearest.append(np.argpartition(-best, keep - 1, axis=1)[:, :keep])
    return np.concatenate(nearest)


def _spectrum_neighbours(polar_ffts: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Each image's CANDIDATES best [N, CANDIDATES] of its SHORTLIST nearest neighbours by the
    shift-, rotation-, scale- and mirror-free spectrum (`_invariants`), ranked by how well
    their log-polar spectra correlate (`rotation_scale_peaks`)."""
    invariants = _invariants(polar_ffts)
    units, conjugates = unit_spectra(polar_ffts)
    shortlist, keep = min(SHORTLIST, len(polar_ffts) - 1), min(CANDIDATES, len(polar_ffts) - 1)
    best = []
    for start in range(0, len(polar_ffts), chunk):
        rows = np.arange(start, min(start + chunk, len(polar_ffts)))
        similarity = invariants[rows] @ invariants.T
        similarity[np.arange(len(rows)), rows] = -np.inf
        nearest = np.argpartition(-similarity, shortlist - 1, axis=1)[:, :shortlist]
        peaks = np.concatenate(  # 16 rows at a time: the cross-power spectra stay in cache
            [
                rotation_scale_peaks(units[rows[k : k + 16]].repeat(shortlist, 0), conjugates[nearest[k : k + 16].ravel()])
                for k in range(0, len(rows), 16)
            ]
        ).reshape(len(rows), shortlist)
        best.append(np.take_along_axis(nearest, np.argsort(-peaks, axis=1)[:, :keep], 1))
    return np.concatenate(best)


def _candidates(records: Sequence[ImageRecord], thumbs: Thumbnails) -> tuple[set[tuple[int, int]], "DescriptorVotes | None"]:
    """Pairs (i < j) worth registering: each image's CANDIDATES best of its SHORTLIST nearest
    neighbours by the shift-, rotation-, scale- and mirror-free spectrum, ranked by how well
    their log-polar spectra correlate (turned, scaled, shifted, cropped copies); its
    FRAME_CANDIDATES nearest in its moment frame (`moment_views`: smooth images scaled and
    turned); and its VOTED_PER_IMAGE partners by ORB descriptor votes (`descriptor_votes`:
    textured copies among look-alikes). The three channels run side by side."""
    usable = np.array([i for i, r in enumerate(records) if not r.error], dtype=np.int64)
    if len(usable) < 2:
        return set(), None
    frame_keep = min(FRAME_CANDIDATES, len(usable) - 1)
    with one_thread_per_task(), ThreadPoolExecutor(max_workers=2) as pool:
        voting = pool.submit(descriptor_votes, thumbs, usable)
        framed = pool.submit(_frame_neighbours, thumbs.frames[usable], frame_keep)
        spectral = _spectrum_neighbours(thumbs.spectra[usable])
        votes, framed = voting.result(), framed.result()
    close = [np.stack([np.repeat(np.arange(len(usable)), neighbours.shape[1]), neighbours.ravel()], 1) for neighbours in (framed, spectral)]
    found = usable[np.concatenate(close)]
    found = np.unique(np.sort(found[found[:, 0] != found[:, 1]], axis=1), axis=0)
    return {(int(i), int(j)) for i, j in found} | votes.best_pairs(), votes


@dataclass(frozen=True)
class DescriptorVotes:
    """ORB descriptor votes of image pairs (`descriptor_votes`): `pairs` sorted keys a * n + b
    (a < b, positions in `usable`), votes of their own descriptors (`direct`) and of one's
    mirror image against the other (`mirror`), and `consistent`: the most votes of either kind
    that agree on one turn and scale."""

    usable: np.ndarray
    pairs: np.ndarray
    direct: np.ndarray
    mirror: np.ndarray
    consistent: np.ndarray

    def best_pairs(self) -> set[tuple[int, int]]:
        """Each image's VOTED_PER_IMAGE partners with the most consistent votes (of equals, those
        with the most votes in all: a copy's few votes tie with hundreds of look-alikes'; then
        the first pair)."""
        n, bits, levels = len(self.usable), 17, 64  # a pair's votes: < 300 * 2 * VOTE_TABLES * VOTE_BUCKET_CAP < 2**17
        if len(self.pairs) == 0:
            return set()
        ends = np.concatenate([self.pairs % n, self.pairs // n])  # an image's pairs in their order: those it ends first
        level = np.tile(np.minimum(self.consistent, levels - 1), 2)
        # a partner with fewer consistent votes than the image's VOTED_PER_IMAGE-th most is never
        # chosen: dropped first, so the sort below sees a fraction of the 29 million ends of a
        # real-size set (7.1 s -> 1.1 s)
        at_least = np.cumsum(np.bincount(ends * levels + level, minlength=n * levels).reshape(n, levels)[:, ::-1], 1)[:, ::-1]
        kept = np.flatnonzero(level >= (at_least >= VOTED_PER_IMAGE).sum(1)[ends] - 1)
        ends, index = ends[kept], kept % len(self.pairs)
        rank = ((1 << bits) - 1 - self.consistent) << bits | ((1 << bits) - 1 - self.direct - self.mirror)
        order = np.argsort(ends << (2 * bits) | rank[index], kind="stable")  # by image, most votes first
        ends = ends[order]
        place = np.arange(len(ends)) - np.searchsorted(ends, ends)  # among the image's partners
        chosen = self.pairs[np.unique(index[order][place < VOTED_PER_IMAGE])]
        return {(int(self.usable[k // n]), int(self.usable[k % n])) for k in chosen}

    def counts(self, files: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The plain and mirror votes of pairs of files [P, 2] ([P] each)."""
        if len(self.pairs) == 0:
            return np.zeros(len(files), np.int64), np.zeros(len(files), np.int64)
        ends = np.sort(np.searchsorted(self.usable, files), axis=1)
        keys = ends[:, 0] * len(self.usable) + ends[:, 1]
        k = np.minimum(np.searchsorted(self.pairs, keys), len(self.pairs) - 1)
        voted = self.pairs[k] == keys
        return np.where(voted, self.direct[k], 0), np.where(voted, self.mirror[k], 0)


def matched_views(direct: int, mirror: int) -> tuple[bool, ...]:
    """Which of b's views (plain, mirror image) the geometric check of a pair with these votes
    matches: only the one with the most votes when it has at least MIN_DECISIVE_VOTES and
    DECISIVE_VOTE_RATIO times the other's (all look-alike copies so), else both."""
    if max(direct, mirror) >= MIN_DECISIVE_VOTES and max(direct, mirror) >= DECISIVE_VOTE_RATIO * min(direct, mirror):
        return (mirror > direct,)
    return (False, True)


def descriptor_votes(thumbs: Thumbnails, usable: np.ndarray, seed: int = 0) -> DescriptorVotes:
    """How many ORB descriptors each pair of images shares (its own or its mirror image's),
    counted by locality-sensitive hashing: a descriptor votes for every image with a
    descriptor of the same key (VOTE_KEY_BYTES of its bytes) in each of VOTE_TABLES tables.
    A copy shares its texture's descriptors; a look-alike mostly its outline's. Each vote also
    says by how much the two keypoints turn (VOTE_ANGLE_BIN) and change pyramid level: a copy's
    votes agree on one turn and scale, a look-alike's scatter (weak geometric consistency)."""
    features = [thumbs.features[i] for i in usable]
    if sum(len(f.descriptors) for f in features) == 0:
        return DescriptorVotes(usable, *np.zeros((4, 0), np.int64))
    views = []
    for mirror in (False, True):
        found = [f.mirror_descriptors if mirror else f.descriptors for f in features]
        views.append(
            (
                np.repeat(np.arange(len(features)), [len(d) for d in found]),
                np.concatenate(found),
                np.concatenate([f.mirror_angles if mirror else f.angles for f in features]),
                np.concatenate([f.mirror_levels if mirror else f.levels for f in features]).astype(np.int64),
            )
        )
    rng = np.random.default_rng(seed)
    tables = [rng.choice(views[0][1].shape[1], VOTE_KEY_BYTES, replace=False) for _ in range(VOTE_TABLES)]
    with ThreadPoolExecutor(max_workers=2) as pool:  # numpy lets go of the GIL in the loops that count
        codes = np.concatenate(
            [c for half in pool.map(lambda half: _table_votes(views, half, len(features)), (tables[0::2], tables[1::2])) for c in half]
        )
        # halves split between pairs, each tallied on its own thread: the same as one tally
        split = 2 * _VOTE_CELLS * (int(np.median(codes[:: max(1, len(codes) // 10_000)])) // (2 * _VOTE_CELLS)) if len(codes) else 0
        tallies = list(pool.map(_tally_votes, (codes[codes < split], codes[codes >= split])))
    pairs, direct, mirror, consistent = (np.concatenate(column) for column in zip(*tallies))
    return DescriptorVotes(usable, pairs, direct, mirror, consistent)


_VOTE_TURNS = 360 // VOTE_ANGLE_BIN
_VOTE_CELLS = _VOTE_TURNS * 16  # a vote's turn and change of pyramid level (-8 to 7)


def _vote_keys(descriptors: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Each descriptor's hash key: its bytes at `columns`, as one integer."""
    key = descriptors[:, columns[0]].astype(np.int64)
    for k, column in enumerate(columns[1:], 1):
        key |= descriptors[:, column].astype(np.int64) << (8 * k)
    return key


def _table_votes(views: list[tuple[np.ndarray, ...]], tables: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Hash tables' votes (`descriptor_votes`) among n images, each table keyed on its bytes
    `columns`, of each view's descriptors against the plain ones: codes of (pair, view, turn,
    level change)."""
    owners, descriptors, angles, levels = views[0]
    # every key's bucket (start in the sorted keys, size), addressed by the key: filled and
    # emptied table by table (allocating and zeroing them per table cost as much as the votes)
    bucket_starts = np.zeros(1 << (8 * VOTE_KEY_BYTES), np.int64)
    bucket_sizes = np.zeros(1 << (8 * VOTE_KEY_BYTES), np.int64)
    codes = []
    for columns in tables:
        indexed = _vote_keys(descriptors, columns)
        order = np.argsort(indexed, kind="stable")
        ordered = indexed[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        keys = ordered[starts]
        bucket_starts[keys], bucket_sizes[keys] = starts, np.diff(np.r_[starts, len(ordered)])
        for kind, (query_owners, query, query_angles, query_levels) in enumerate(views):
            hashed = indexed if kind == 0 else _vote_keys(query, columns)
            low, size = bucket_starts[hashed], bucket_sizes[hashed]
            voting = (size > 0) & (size <= VOTE_BUCKET_CAP)
            size = size[voting]
            voter = np.repeat(np.nonzero(voting)[0], size)
            other = order[np.repeat(low[voting] - np.cumsum(size) + size, size) + np.arange(size.sum())]
            a, b = query_owners[voter], owners[other]
            keep = a != b
            voter, other, a, b = voter[keep], other[keep], a[keep], b[keep]
            # the turn and level change from the lower-numbered image (or its mirror image) to
            # the other. A mirror vote sees the same turn from either side (from the voter's
            # mirror image to the other: M R M is R turned back, for a mirror M) but the inverse
            # scale.
            sign = np.where(a < b, 1, -1)
            turn = np.floor(((1 if kind else sign) * (angles[other] - query_angles[voter]) % 360 + VOTE_ANGLE_BIN / 2) / VOTE_ANGLE_BIN)
            level = sign * (levels[other] - query_levels[voter]) + 8
            pair = np.minimum(a, b) * n + np.maximum(a, b)
            codes.append(((pair * 2 + kind) * _VOTE_TURNS + turn.astype(np.int64) % _VOTE_TURNS) * 16 + level)
        bucket_sizes[keys] = 0
    return codes


def _tally_votes(codes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Vote codes tallied per pair: the pairs (sorted), their plain and mirror votes, and the
    most votes of either kind in one cell (turn, level change)."""
    if len(codes) == 0:
        return (np.zeros(0, np.int64),) * 4
    code, count = np.unique(codes, return_counts=True)
    pair_kind = code // _VOTE_CELLS
    starts = np.flatnonzero(np.r_[True, pair_kind[1:] != pair_kind[:-1]])
    pair_kind, votes, agreeing = pair_kind[starts], np.add.reduceat(count, starts), np.maximum.reduceat(count, starts)
    pair = pair_kind // 2  # sorted: its runs are the pairs
    first = np.r_[True, pair[1:] != pair[:-1]]
    pairs, inverse = pair[first], np.cumsum(first) - 1
    by_kind = [
        np.bincount(inverse, weights=np.where(pair_kind % 2 == kind, w, 0), minlength=len(pairs)).astype(np.int64)
        for kind in (0, 1)
        for w in (votes, agreeing)
    ]
    return pairs, by_kind[0], by_kind[2], np.maximum(by_kind[1], by_kind[3])


@dataclass(frozen=True)
class GeometricCheck:
    """The best copy-like similarity of b's ORB matches onto a's: `inliers` it lays on each other,
    whether b's mirror image matched, and `transform` [2, 3] (x, y of b's, or its mirror image's,
    FEATURE_SIDE image to a's); no transform when none of a copy's range was found."""

    inliers: int
    mirror: bool = False
    transform: np.ndarray | None = None
    sizes: tuple[tuple[int, int], tuple[int, int]] = ((FEATURE_SIDE, FEATURE_SIDE),) * 2  # a's and b's feature images (width, height)
    other_view: "GeometricCheck | None" = None  # the other view's, when it too has >= MIN_INLIERS


def geometric_check(
    a: LocalFeatures, b: LocalFeatures, orientations: tuple[bool, ...] = (False, True), screen: bool = False
) -> GeometricCheck:
    """How many of b's ORB matches (b or its mirror image) a single similarity transform of a
    copy's range (turn within MAX_TURN_DEGREES of 0 or 180, scale in SCALE_RANGE) lays on a's,
    by RANSAC, and that transform; 0 inliers when the best transform is not a copy's. With
    `screen`, a view is first matched from every SCREEN_STRIDE-th descriptor of a's and dropped
    below SCREEN_MIN_INLIERS there (`_screened`)."""
    views = []
    for mirror in _screened(a, b, orientations) if screen else orientations:
        points, descriptors = (b.mirror_points, b.mirror_descriptors) if mirror else (b.points, b.descriptors)
        inliers, transform = _similarity_inliers(a.points, a.descriptors, points, descriptors)
        if inliers:
            views.append(GeometricCheck(inliers, mirror, transform, (a.size, b.size)))
    views.sort(key=lambda view: -view.inliers)
    if not views:
        return GeometricCheck(0)
    if len(views) > 1 and views[1].inliers >= MIN_INLIERS:  # a symmetric bone's mirror image can outscore the copy's own view
        return replace(views[0], other_view=views[1])
    return views[0]


def _screened(a: LocalFeatures, b: LocalFeatures, orientations: tuple[bool, ...]) -> list[bool]:
    """The views of b whose matches from every SCREEN_STRIDE-th descriptor of a's reach
    SCREEN_MIN_INLIERS (both views from one product)."""
    descriptors = [b.mirror_descriptors if mirror else b.descriptors for mirror in orientations]
    a_descriptors = a.descriptors[::SCREEN_STRIDE]
    if len(a_descriptors) < 4:
        return []
    agreement = _signs(a_descriptors) @ _signs(np.concatenate(descriptors)).T
    passed, offset = [], 0
    for mirror, own in zip(orientations, descriptors):
        view = agreement[:, offset : offset + len(own)]
        offset += len(own)
        if len(own) < 4:
            continue
        query, train = _cross_checked(view)
        points = b.mirror_points if mirror else b.points
        if _similarity_fit(points[train], a.points[::SCREEN_STRIDE][query], SCREEN_ITERATIONS)[0] >= SCREEN_MIN_INLIERS:
            passed.append(mirror)
    return passed


def _signs(descriptors: np.ndarray) -> np.ndarray:
    """Binary descriptors' bits as +-1 [K, 8 * bytes]."""
    return np.unpackbits(descriptors, axis=1).astype(np.float32) * 2 - 1


def _cross_checked(agreement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) that are each other's largest of `agreement` (bit count less twice the
    Hamming distance), within MAX_DESCRIPTOR_DISTANCE."""
    forward, backward = agreement.argmax(1), agreement.argmax(0)
    close = agreement[np.arange(len(agreement)), forward] >= DESCRIPTOR_BITS - 2 * MAX_DESCRIPTOR_DISTANCE
    query = np.nonzero((backward[forward] == np.arange(len(agreement))) & close)[0]
    return query, forward[query]


def cross_checked_matches(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into a, into b) of descriptor pairs that are each other's nearest by Hamming
    distance, within MAX_DESCRIPTOR_DISTANCE: OpenCV's cross-checked brute force (first of equals
    on a tie), from one matrix product of the descriptors' bits as +-1: their dot product is
    the bit count less twice the Hamming distance (twice as fast as OpenCV's)."""
    return _cross_checked(_signs(a) @ _signs(b).T)


def _similarity_inliers(
    a_points: np.ndarray, a_descriptors: np.ndarray, points: np.ndarray, descriptors: np.ndarray, iterations: int = RANSAC_ITERATIONS
) -> tuple[int, np.ndarray | None]:
    """RANSAC inliers and transform of the cross-checked matches, when the transform is a copy's."""
    if len(a_descriptors) < 4 or len(descriptors) < 4:
        return 0, None
    query, train = cross_checked_matches(a_descriptors, descriptors)
    return _similarity_fit(points[train], a_points[query], iterations)


def _similarity_fit(source: np.ndarray, target: np.ndarray, iterations: int) -> tuple[int, np.ndarray | None]:
    """RANSAC inliers and transform of matched points, when the transform is a copy's."""
    import cv2

    if len(source) < 4:
        return 0, None
    transform, inliers = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC, ransacReprojThreshold=3.0, maxIters=iterations)
    if transform is None:
        return 0, None
    (cos, _, _), (sin, _, _) = transform.tolist()
    turn, scale = abs(math.degrees(math.atan2(sin, cos))), math.hypot(cos, sin)
    if min(turn, 180 - turn) <= MAX_TURN_DEGREES and SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        return int(inliers.sum()), transform
    return 0, None


_HELD_FEATURES: list = []  # a worker process's copy of every image's local features


def _hold_features(features: list) -> None:
    _HELD_FEATURES[:] = features


def _check_batch(batch: list[tuple[int, int, tuple[bool, ...], bool]], features: list | None = None) -> list[GeometricCheck]:
    """`geometric_check` of pairs (i, j, views matched, screened) of `features` (a worker
    process's held ones when None)."""
    features = _HELD_FEATURES if features is None else features
    return [geometric_check(features[i], features[j], views, screen) for i, j, views, screen in batch]


def _best_per_image(inliers: dict[tuple[int, int], int]) -> set[tuple[int, int]]:
    """Pairs with at least MIN_INLIERS that are among the REGISTERED_PER_IMAGE best of one member."""
    ranked: dict[int, list[tuple[int, tuple[int, int]]]] = {}
    for pair, count in inliers.items():
        if count >= MIN_INLIERS:
            for i in pair:
                ranked.setdefault(i, []).append((count, pair))
    return {pair for entries in ranked.values() for _, pair in sorted(entries, reverse=True)[:REGISTERED_PER_IMAGE]}


def near_duplicate_scores(
    records: Sequence[ImageRecord], thumbs: Thumbnails, num_workers: int | None = None, processes: bool | None = None
) -> dict[tuple[int, int], Match]:
    """The `match` of the candidate pairs of distinct files that pass the geometric check, each
    file decoded once more at the pair's `compare_side` (only files in such pairs). `processes`:
    check in forked worker processes (default: from PROCESSES_FROM_PAIRS pairs; 15-20% faster)."""
    started = time.perf_counter()
    candidates, votes = _candidates(records, thumbs)
    proposed = time.perf_counter()
    pairs = [(i, j) for i, j in sorted(candidates) if records[i].sha256 != records[j].sha256]
    workers = num_workers or min(8, os.cpu_count() or 1)

    if votes is None:
        views, screened = [(False, True)] * len(pairs), [False] * len(pairs)
    else:
        direct, mirror = (c.tolist() for c in votes.counts(np.array(pairs).reshape(-1, 2)))
        views = [matched_views(d, m) for d, m in zip(direct, mirror)]
        screened = [d + m < SCREEN_BELOW_VOTES for d, m in zip(direct, mirror)]
    jobs = [(i, j, v, s) for (i, j), v, s in zip(pairs, views, screened)]
    batches = [jobs[k : k + 256] for k in range(0, len(jobs), 256)]  # a future a pair costs a tenth of its check
    processes = workers > 1 and len(pairs) >= PROCESSES_FROM_PAIRS if processes is None else processes
    task = _check_batch if processes else functools.partial(_check_batch, features=thumbs.features)  # processes hold their own
    with _workers(workers, processes, _hold_features, (thumbs.features,)) as pool:
        checks = dict(zip(pairs, (check for batch in pool.map(task, batches) for check in batch)))
    checked = time.perf_counter()
    chosen = sorted(_best_per_image({pair: check.inliers for pair, check in checks.items()}))
    sides = {pair: compare_side(records[pair[0]], records[pair[1]]) for pair in chosen}
    needed = sorted({(i, side) for pair, side in sides.items() for i in pair})
    with ThreadPoolExecutor(max_workers=workers) as pool:
        greys = dict(zip(needed, pool.map(lambda key: native_grey(thumbs.root / records[key[0]].path, key[1]), needed)))

    def confirm(pair: tuple[int, int]) -> Match:
        a, b = (greys[(k, sides[pair])] for k in pair)
        if a is None or b is None:
            return Match(-1.0, -1.0, -1.0, checks[pair].inliers)
        return match(a, b, checks[pair])

    with one_thread_per_task(), ThreadPoolExecutor(max_workers=workers) as pool:
        scores = dict(zip(chosen, pool.map(confirm, chosen)))
    logger.debug(
        "Near-duplicate search: %d candidates in %.1f s, checked in %.1f s, %d registered in %.1f s",
        len(pairs),
        proposed - started,
        checked - proposed,
        len(chosen),
        time.perf_counter() - checked,
    )
    return scores


def duplicate_groups(
    records: Sequence[ImageRecord], thumbs: Thumbnails, min_detail: float = DEFAULT_MIN_DETAIL_CORRELATION, scores: dict | None = None
) -> list[dict]:
    """Groups of exact and near-duplicate files, each with its members and whether it crosses
    splits. `scores`: `near_duplicate_scores` if already computed."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    by_hash: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if not r.error:
            by_hash.setdefault(r.sha256, []).append(i)
    exact = [(g[0], other) for g in by_hash.values() for other in g[1:]]
    scores = near_duplicate_scores(records, thumbs) if scores is None else scores
    near = {pair: m.detail for pair, m in scores.items() if m.confirms(min_detail)}
    edges = np.array([*exact, *near], dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(records), len(records)))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    groups = []
    for label in np.nonzero(sizes > 1)[0]:
        members = [int(i) for i in np.nonzero(component == label)[0]]
        inside = set(members)
        member_scores = [s for (i, _), s in near.items() if i in inside]
        splits = sorted({records[i].split for i in members}, key=SPLITS.index)
        groups.append(
            {
                "kind": "exact" if len({records[i].sha256 for i in members}) == 1 else "near",
                "cross_split": len(splits) > 1,
                "conflicting_labels": len({records[i].label for i in members}) > 1,
                "splits": splits,
                "min_detail_correlation": round(min(member_scores), 4) if member_scores else 1.0,
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
        recalls = [
            float((predicted[held_out & (labels == c)] == c).mean()) for c in range(len(CLASS_NAMES)) if (held_out & (labels == c)).any()
        ]
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


def audit_records(records: Sequence[ImageRecord], thumbs: Thumbnails, *, min_detail: float = DEFAULT_MIN_DETAIL_CORRELATION) -> dict:
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


def _cache_path(root: Path, min_detail: float, cache_dir: Path | None) -> Path:
    files = [(path, label) for _, path, label in _files(root)]
    key = hashlib.sha256(f"{AUDIT_VERSION}|{min_detail}|{stat_fingerprint(files, root)}".encode()).hexdigest()[:20]
    return (cache_dir or default_cache_dir()) / f"audit-{key}.json"


def _cached(cache_path: Path, root: Path) -> dict | None:
    if not cache_path.is_file():
        return None
    logger.info("Loaded the audit of %s from cache %s", root, cache_path)
    return json.loads(cache_path.read_text())


def audit_dataset(
    data_dir: str | os.PathLike,
    *,
    min_detail: float = DEFAULT_MIN_DETAIL_CORRELATION,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict:
    """Audit a dataset folder (any layout `resolve_dataset_root` accepts); cached by file stats."""
    root = resolve_dataset_root(data_dir)
    cache_path = _cache_path(root, min_detail, cache_dir)
    report = _cached(cache_path, root)
    if report is None:
        report = audit_records(*scan(root, progress=progress), min_detail=min_detail)
        write_json(cache_path, report)
    return {**report, "root": str(root)}


def audit_and_load(
    data_dir: str | os.PathLike,
    image_size: int,
    *,
    splits: Sequence[str] = SPLITS,
    cache_dir: Path | None = None,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    progress: bool = False,
    min_detail: float = DEFAULT_MIN_DETAIL_CORRELATION,
) -> tuple[dict, FractureDataset]:
    """`audit_dataset` and `load_dataset` with one decode per file: when the audit is not cached,
    it inspects the loader's decodes as they happen, and the splits left out of `splits` are
    decoded into the loader's cache too (for a later evaluation), so no file is decoded twice."""
    root = resolve_dataset_root(data_dir)
    cache_path = _cache_path(root, min_detail, cache_dir)
    report = _cached(cache_path, root)
    options = {"cache_dir": cache_dir, "max_bad_fraction": max_bad_fraction, "progress": progress}
    if report is not None:
        return {**report, "root": str(root)}, load_dataset(root, image_size, splits=splits, **options)
    inspector = Inspector(root)
    # Above DRAFT_MIN_SIDE the loader drafts JPEGs larger than the audit does: the audit decodes
    # its own, so its report never depends on which job's image size came first.
    visit = inspector.visit if image_size <= DRAFT_MIN_SIDE else None
    dataset = load_dataset(root, image_size, splits=splits, visit=visit, **options)
    for split in SPLITS:
        if split not in splits:
            load_split(root, split, image_size, visit=visit, **options)
    report = audit_records(*scan(root, progress=progress, inspected=inspector.inspected), min_detail=min_detail)
    write_json(cache_path, report)
    return {**report, "root": str(root)}, dataset


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
        lines.append(
            f"  {s['attribute']:>7}: balanced accuracy {s['held_out_balanced_accuracy']:.2f}, chi-square p {s['chi_square_p']:.2g}{flag}"
        )
        if s["flagged"]:
            lines.append("           " + ", ".join(f"{v} -> {c}" for v, c in s["rule"].items()))
    if not report["flagged_shortcuts"]:
        lines.append(f"  None flagged: no attribute reaches balanced accuracy {SHORTCUT_BALANCED_ACCURACY} with p < {SHORTCUT_P_VALUE:g}.")
    bad = report["bad_files"]
    lines += ["", f"Files that do not decode: {len(bad)}"]
    lines += [f"  {b['split']}/{b['class']}: {b['path']} ({b['reason']})" for b in bad[:max_groups]]
    return "\n".join(lines)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Audit a fracture dataset: duplicates across splits, shortcuts, bad files.", add_help=add_help
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="dataset folder (the Kaggle download or any folder with train/ val/ test/)"
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="audit the generated X-ray-like images the other commands' --synthetic uses"
    )
    parser.add_argument("--seed", type=int, default=0, help="with --synthetic: the generated set's seed (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="write audit.json, duplicates.csv and attributes.csv here")
    parser.add_argument(
        "--min-detail-correlation",
        type=float,
        default=DEFAULT_MIN_DETAIL_CORRELATION,
        help="near-duplicate threshold: correlation of two images' fine detail once laid on each other (flip, rotation, scale, "
        f"shift), at the smaller one's resolution; their texture must correlate at >= {MIN_TEXTURE_CORRELATION} in 3 of 4 "
        "patches too (default: %(default)s)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="cache folder (default: $FRACTURE_CACHE_DIR, else ~/.cache/fracture-tune)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    from fracture_models.cli import resolve_data_dir

    parser = get_args_parser()
    parser.prog = "python -m fracture_models.audit"
    args = parser.parse_args(argv)
    if (args.data_dir is None) == (not args.synthetic):
        parser.error("give one of --data-dir DIR and --synthetic")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    report = audit_dataset(resolve_data_dir(args), min_detail=args.min_detail_correlation, cache_dir=args.cache_dir, progress=True)
    print(format_audit(report))
    if args.out:
        files = write_audit(report, args.out)
        print(f"\nWrote {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    from fracture_models.cli import run_main

    sys.exit(run_main(main))
