"""Shared fixtures: generated datasets on real files, an isolated cache folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fracture_models.data import DATASET_FOLDER
from fracture_models.synthetic import SyntheticSpec, generate


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Decoded-image cache and generated data go to a temporary folder, never ~/.cache."""
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("FRACTURE_CACHE_DIR", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="session")
def small_download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated dataset in the Kaggle download layout (doubled top folder). Read-only."""
    out = tmp_path_factory.mktemp("small")
    generate(out, SyntheticSpec(train=24, val=8, test=8, image_size=48, seed=1))
    return out


@pytest.fixture
def small_copy(small_download: Path, tmp_path: Path) -> Path:
    """A private copy of the inner dataset folder (train/ val/ test/) that a test may damage."""
    inner = small_download / DATASET_FOLDER / DATASET_FOLDER
    copy = tmp_path / "data"
    shutil.copytree(inner, copy)
    return copy


@pytest.fixture(scope="session")
def learnable_download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough generated data for a short CPU training to beat chance clearly.

    Difficulty 0.75 (slightly wider breaks than the default) keeps that training to 8 epochs.
    """
    out = tmp_path_factory.mktemp("learnable")
    generate(out, SyntheticSpec(train=600, val=200, test=100, image_size=96, seed=0, difficulty=0.75))
    return out


@pytest.fixture(scope="session")
def tiny_download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smallest generated dataset a search can run on in seconds."""
    out = tmp_path_factory.mktemp("tiny")
    generate(out, SyntheticSpec(train=48, val=32, test=16, image_size=40, seed=2, difficulty=0.5))
    return out


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (starting Ray costs seconds)."""
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
