from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fracture_models.data import (
    DATASET_FOLDER,
    MAX_FILE_BYTES,
    decode_image,
    decode_split,
    list_split_files,
    load_dataset,
    load_split,
    resolve_dataset_root,
    stat_fingerprint,
    to_8bit,
)
from fracture_models.errors import DatasetError
from fracture_models.labels import CLASS_NAMES, POSITIVE_CLASS, POSITIVE_LABEL, SPLITS


def test_accepts_download_root_inner_folder_and_plain_folder(small_download: Path, small_copy: Path):
    inner = small_download / DATASET_FOLDER / DATASET_FOLDER
    assert resolve_dataset_root(small_download) == inner
    assert resolve_dataset_root(small_download / DATASET_FOLDER) == inner
    assert resolve_dataset_root(inner) == inner
    assert resolve_dataset_root(small_copy) == small_copy
    a = load_dataset(small_download, 32)
    b = load_dataset(small_copy, 32)
    assert a.fingerprint == b.fingerprint  # content, not location
    assert torch.equal(a.train.images, b.train.images)
    assert {s: len(a.splits[s]) for s in SPLITS} == {"train": 24, "val": 8, "test": 8}


def test_positive_class_is_fractured_by_name_not_folder_order(small_copy: Path):
    # Alphabetical order would make "fractured" index 0; the label is chosen by name.
    assert sorted(CLASS_NAMES).index(POSITIVE_CLASS) == 0
    assert POSITIVE_LABEL == 1 and CLASS_NAMES[POSITIVE_LABEL] == "fractured"
    # Recreate the class folders in the opposite order: labels must not change.
    train = small_copy / "train"
    for name in ("not fractured", "fractured"):
        shutil.move(train / name, train / f"tmp-{name}")
        shutil.move(train / f"tmp-{name}", train / name)
    split = load_split(small_copy, "train", 32)
    for path, label in zip(split.paths, split.labels.tolist()):
        assert label == (POSITIVE_LABEL if path.startswith("train/fractured/") else 1 - POSITIVE_LABEL)
    assert split.class_counts() == {"not fractured": 12, "fractured": 12}


def _first(folder: Path, suffixes: tuple[str, ...]) -> Path:
    return next(p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes)


def test_bad_files_are_excluded_named_and_listed(small_copy: Path, caplog: pytest.LogCaptureFixture):
    folder = small_copy / "train" / "fractured"
    jpeg = _first(folder, (".jpg", ".jpeg")).read_bytes()
    png = np.zeros((40, 40), np.uint8)
    png[:, 20:] = 200
    Image.fromarray(png).save(small_copy / "whole.png")
    png_bytes = (small_copy / "whole.png").read_bytes()
    planted = {
        folder / "9001.jpg": jpeg[: len(jpeg) // 2],  # truncated JPEG
        folder / "9002.png": b"",  # zero bytes
        small_copy / "train" / "not fractured" / "9003.png": b"this is a text file, not a PNG\n",
        small_copy / "train" / "not fractured" / "9004.png": png_bytes[: len(png_bytes) * 2 // 3],  # truncated PNG
    }
    for path, data in planted.items():
        path.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="fracture_models.data"):
        split = load_split(small_copy, "train", 32, max_bad_fraction=0.2)
    assert {Path(bad.path) for bad in split.excluded} == set(planted)
    assert len(split) == 24
    for path in planted:
        assert any(str(path) in record.getMessage() for record in caplog.records), path
    reasons = {Path(bad.path).name: bad.reason for bad in split.excluded}
    assert "0 bytes" in reasons["9002.png"]
    # The cached copy remembers the exclusions.
    again = load_split(small_copy, "train", 32, max_bad_fraction=0.2)
    assert again.excluded == split.excluded


def test_too_many_bad_files_stop_the_run_naming_the_split(small_copy: Path):
    folder = small_copy / "val" / "fractured"
    for i in range(3):
        (folder / f"{900 + i}.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=str(small_copy / "val")):
        load_dataset(small_copy, 32, max_bad_fraction=0.05)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: shutil.rmtree(root / "val"), "val"),
        (lambda root: shutil.rmtree(root / "test" / "not fractured"), "not fractured"),
        (lambda root: [p.unlink() for p in (root / "train" / "fractured").iterdir()], "no images"),
    ],
    ids=["missing split", "missing class folder", "empty class folder"],
)
def test_layout_errors_name_the_path(small_copy: Path, damage, message: str):
    damage(small_copy)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(small_copy, 32)
    assert str(small_copy) in str(info.value)


def test_missing_folder_says_where_to_get_the_data(tmp_path: Path):
    with pytest.raises(DatasetError, match="kaggle.com.*--synthetic"):
        load_dataset(tmp_path / "nowhere", 32)


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


def test_16_bit_png_keeps_its_contrast():
    # A detector image using values 30000..34000 of 65535: convert("L") would clip it all to white.
    ramp = np.tile(np.linspace(30000, 34000, 64), (64, 1)).astype(np.uint16)
    data = _png_bytes(Image.fromarray(ramp))
    assert Image.open(__import__("io").BytesIO(data)).mode.startswith("I;16")
    pixels = decode_image(data, 64)
    assert pixels.dtype == np.uint8 and pixels.shape == (64, 64)
    assert pixels.min() == 0 and pixels.max() == 255
    assert np.all(np.diff(pixels[0].astype(int)) >= 0)  # still a ramp


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK", "LA", "1", "RGB"])
def test_decodes_every_mode_to_8_bit(mode: str):
    base = Image.fromarray(np.tile(np.linspace(0, 255, 32), (32, 1)).astype(np.uint8)).convert("RGB")
    image = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    pixels = decode_image(_png_bytes(image, format=fmt), 16)
    assert pixels.dtype == np.uint8
    assert pixels.shape == (16, 16)  # grey content comes back as one channel
    assert pixels[:, -1].mean() > pixels[:, 0].mean() + 100


def test_exif_orientation_is_applied():
    # Stored 40 wide x 20 high, left half bright; orientation 6 displays it rotated 90 deg clockwise,
    # so the bright half is on top.
    stored = np.zeros((20, 40), np.uint8)
    stored[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = decode_image(_png_bytes(Image.fromarray(stored), format="JPEG", exif=exif, quality=95), 32)
    assert pixels[:12].mean() > 200 and pixels[-12:].mean() < 50


def test_colour_images_keep_three_channels(small_copy: Path):
    colour = np.zeros((40, 40, 3), np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).save(small_copy / "test" / "fractured" / "777.png")
    split = load_split(small_copy, "test", 32)
    assert split.images.shape == (9, 3, 32, 32) and split.images.dtype == torch.uint8
    grey = load_split(small_copy, "val", 32)
    assert grey.images.shape == (8, 1, 32, 32)


def test_decoded_split_is_cached_and_invalidated_by_changes(small_copy: Path, isolated_cache: Path, caplog):
    first = load_split(small_copy, "val", 24)
    with caplog.at_level(logging.INFO, logger="fracture_models.data"):
        second = load_split(small_copy, "val", 24)
    assert any("from cache" in r.getMessage() for r in caplog.records)
    assert torch.equal(first.images, second.images) and first.paths == second.paths
    # Another size is another cache entry; a changed file invalidates the entry.
    assert load_split(small_copy, "val", 16).images.shape[-1] == 16
    victim = small_copy / "val" / "fractured" / sorted(p.name for p in (small_copy / "val" / "fractured").iterdir())[0]
    Image.fromarray(np.full((30, 30), 255, np.uint8)).save(victim)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fracture_models.data"):
        third = load_split(small_copy, "val", 24)
    assert not any("from cache" in r.getMessage() for r in caplog.records)
    assert third.fingerprint != first.fingerprint


def _png_claiming(width: int, height: int) -> bytes:
    """A small 16-bit PNG whose header claims width x height (a decompression bomb's shape)."""
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("I;16", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def test_files_too_large_or_badly_named_are_excluded_and_named_not_decoded(small_copy: Path, tmp_path: Path, caplog):
    train = small_copy / "train" / "fractured"
    (train / "bomb.png").write_bytes(_png_claiming(13_000, 13_000))  # 5.2 GB once decoded at float64
    with open(train / "sparse.jpg", "wb") as sparse:
        sparse.truncate(MAX_FILE_BYTES + 1)  # a sparse file: nothing on disk, huge if read
    (small_copy / "train" / "not fractured" / os.fsdecode(b"bad\xffname.png")).write_bytes(_png_claiming(8, 8))

    split = decode_split(small_copy, "train", 32, max_bad_fraction=0.5)
    reasons = {Path(e.path).name: e.reason for e in split.excluded}
    assert "more than the 64,000,000 pixels" in reasons["bomb.png"] and "13000 x 13000" in reasons["bomb.png"]
    assert "bytes, more than the" in reasons["sparse.jpg"]
    assert "not valid UTF-8" in caplog.text and "bad\\udcffname.png" in caplog.text
    assert len(split) == 24  # every good file is kept
    assert stat_fingerprint(list_split_files(small_copy, "train"), small_copy)  # no UnicodeEncodeError
    # The audit reads files through the same caps: named as bad files, never read whole or decoded.
    from fracture_models.audit import audit_dataset

    bad = {Path(b["path"]).name: b["reason"] for b in audit_dataset(small_copy, cache_dir=tmp_path / "cache")["bad_files"]}
    assert "more than the 64,000,000 pixels" in bad["bomb.png"] and "bytes, more than the" in bad["sparse.jpg"]


def test_sixteen_bit_images_are_windowed_to_their_value_range():
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000) + 5000
    image = to_8bit(Image.fromarray(values))
    out = np.asarray(image)
    assert image.mode == "L" and out.min() == 0 and out.max() == 255  # the value range, windowed
