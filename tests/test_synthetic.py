from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from fracture_models.data import DATASET_FOLDER
from fracture_models.synthetic import SyntheticSpec, generate


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_by_seed(tmp_path: Path):
    spec = SyntheticSpec(train=8, val=4, test=4, image_size=40, seed=3)
    generate(tmp_path / "a", spec)
    generate(tmp_path / "b", spec)
    generate(tmp_path / "c", SyntheticSpec(train=8, val=4, test=4, image_size=40, seed=4))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_cli_writes_the_kaggle_layout_with_mixed_formats(tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fracture_models.synthetic",
            str(tmp_path),
            "--train",
            "30",
            "--val",
            "4",
            "--test",
            "4",
            "--image-size",
            "40",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    inner = tmp_path / DATASET_FOLDER / DATASET_FOLDER
    assert str(inner) in result.stdout
    for split, n in (("train", 30), ("val", 4), ("test", 4)):
        files = [p for c in ("fractured", "not fractured") for p in (inner / split / c).iterdir()]
        assert len(files) == n
        assert all(p.stem.isdigit() for p in files)
    suffixes = {p.suffix for p in inner.rglob("*") if p.is_file()}
    assert ".png" in suffixes and suffixes & {".jpg", ".jpeg"}
