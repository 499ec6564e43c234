"""Shared fixtures: generated datasets on real files, an isolated cache folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
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
    # The default MLflow store too: searches that name no tracking URI log here, not in ./runs.
    mp.setenv("FRACTURE_MLFLOW_DIR", str(tmp_path_factory.mktemp("mlflow-default")))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    # And the key that signs resume state (tuning.trust): never the user's own, in ~/.config.
    mp.setenv("FRACTURE_TUNE_STATE_KEY_FILE", str(tmp_path_factory.mktemp("config") / "state.key"))
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

    ray.init(
        address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False
    )  # never a cluster this machine ran before
    yield ray
    ray.shutdown()


# --- MLflow servers: real `python -m mlflow_server` processes on loopback ----------------------


# Loopback requests go direct: urllib's global opener keeps the proxies of the first call
# (a test of offline weights sets a dead one).
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def search_args(data: Path, storage: Path, name: str, *extra: str) -> list[str]:
    """`python -m tuning.run` flags for a tiny CNN search on the CPU: one place for the tests."""
    return ["--arch", "cnn", "--data-dir", str(data), "--image-size", "32", "--batch-size", "16"] + [
        "--storage-path", str(storage), "--name", name, "--cpus-per-trial", "1", *extra
    ]  # fmt: skip


def trial_results(trial_dir: Path) -> list[dict]:
    """A Tune trial's reported rows (its result.json), oldest first; none before its first report."""
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """One `python -m mlflow_server` process; `stop()` presses Ctrl-C as a user would."""

    def __init__(self, store: Path, *extra: str, port: int | None = None, env: dict | None = None) -> None:
        self.store, self.extra, self.port = store, extra, port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120) -> "MlflowServer":
        self.output = self.store.parent / f"{self.store.name}-{self.port}.out"
        seen = self.output.stat().st_size if self.output.exists() else 0  # a restart appends: wait for its own line
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow_server", "--store", str(self.store), "--port", str(self.port), *self.extra],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow_server exited {self.process.returncode}: {self.output.read_text()[-2000:]}")
            if "MLflow UI:" in self.output.read_text()[seen:]:
                return self
            time.sleep(0.3)
        raise RuntimeError(f"mlflow_server did not come up: {self.output.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=60)

    def healthy(self) -> bool:
        try:
            with DIRECT.open(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False


POSTGRES = dict(host="127.0.0.1", port=5432, user="postgres")


def _postgres_available() -> bool:
    try:
        import psycopg

        psycopg.connect(dbname="test", connect_timeout=3, **POSTGRES).close()
        return True
    except Exception:  # noqa: BLE001 - no driver, no server
        return False


@pytest.fixture(scope="session")
def postgres_database():
    """A fresh PostgreSQL database on the local server (dropped afterwards), as a URL factory."""
    if not _postgres_available():
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
    import psycopg

    created = []

    def create(purpose: str) -> str:
        name = f"fracture_{purpose}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(dbname="test", autocommit=True, **POSTGRES) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"postgresql://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}/{name}"

    yield create
    with psycopg.connect(dbname="test", autocommit=True, **POSTGRES) as connection:
        for name in created:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory, postgres_database):
    """The team's tracking server: PostgreSQL backend, proxied artifacts, on a free loopback port."""
    server = MlflowServer(tmp_path_factory.mktemp("team-mlflow"), "--backend-store-uri", postgres_database("mlflow"))
    server.start()
    yield server
    server.stop()
