"""Which Ray a search runs on, beside a real `ray start` head that this machine started last.

Each search runs as its own process (`python -m tuning.run`): the tests' shared Ray would
otherwise be reused. Ray's temporary folder (sessions, and the address file ray_current_cluster
that `ray start` writes) is the test's own, through $RAY_TMPDIR, so other Ray users on this
machine are not touched; the head is on 127.0.0.2 and stopped by its process id.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import search_args, trial_results

HEAD_IP = "127.0.0.2"


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_env() -> dict:
    """The environment of the head and of the searches: a private Ray folder (short: Ray's socket
    paths must fit 107 bytes), one token for Ray's token authentication, no RAY_ADDRESS."""
    folder = tempfile.mkdtemp(prefix="rayiso-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=folder, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_USAGE_STATS_ENABLED="0")
    yield env
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def foreign_head(ray_env: dict) -> tuple[str, Path]:
    """A live `ray start --head` on 127.0.0.2, the last cluster this machine (this Ray folder) started:
    its address and its session folder."""
    address = f"{HEAD_IP}:{_free_port(HEAD_IP)}"
    ray_dir = Path(ray_env["RAY_TMPDIR"]) / "ray"
    log = open(Path(ray_env["RAY_TMPDIR"]) / "head.log", "wb")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--node-ip-address={HEAD_IP}", f"--port={address.split(':')[1]}"]
        + ["--num-cpus=1", "--include-dashboard=false", "--block"],
        env=ray_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the head and everything it starts
    )
    try:
        deadline = time.monotonic() + 120
        while b"Ray runtime started" not in (Path(ray_env["RAY_TMPDIR"]) / "head.log").read_bytes():
            assert head.poll() is None and time.monotonic() < deadline, (Path(ray_env["RAY_TMPDIR"]) / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        assert (ray_dir / "ray_current_cluster").read_text().strip() == address  # what Ray's default would join
        yield address, (ray_dir / "session_latest").resolve()
    finally:
        head.terminate()  # `ray start --block` stops what it started on SIGTERM
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of its group is left
        except ProcessLookupError:
            pass
        head.wait()
        log.close()


def _drivers(session: Path) -> list[Path]:
    """The drivers (jobs) a Ray cluster has seen: each leaves its core-driver log in the session."""
    return sorted((session / "logs").glob("python-core-driver-*"))


def _command(data: Path, storage: Path, name: str, *extra: str) -> list[str]:
    """`python -m tuning.run` for one trial of one epoch."""
    flags = search_args(data, storage, name, "--num-samples", "1", "--epochs", "1", "--scheduler", "none", "--confirm-top", "0")
    return [sys.executable, "-m", "tuning.run", *flags, *extra]


def _search(env: dict, data: Path, storage: Path, name: str, *extra: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(_command(data, storage, name, *extra), capture_output=True, text=True, timeout=timeout, env=env)


def test_without_address_a_search_runs_on_a_new_local_ray_on_loopback(foreign_head, ray_env, tiny_download: Path, tmp_path: Path):
    address, session = foreign_head
    done = _search(ray_env, tiny_download, tmp_path, "own")
    assert done.returncode == 0, done.stderr[-3000:]
    (trial,) = tmp_path.glob("own/trial_*")
    assert {row["node_ip"] for row in trial_results(trial)} == {"127.0.0.1"}  # not the host's network address
    assert _drivers(session) == []  # the head that ray_current_cluster names never saw the search


def test_with_address_a_search_runs_on_that_cluster(foreign_head, ray_env, tiny_download: Path, tmp_path: Path):
    address, session = foreign_head
    start = time.monotonic()
    done = _search(ray_env, tiny_download, tmp_path, "there", "--address", address)
    assert done.returncode == 0, done.stderr[-3000:]
    (trial,) = tmp_path.glob("there/trial_*")
    assert {row["node_ip"] for row in trial_results(trial)} == {HEAD_IP}
    assert len(_drivers(session)) == 1
    assert time.monotonic() - start < 300


@pytest.fixture
def silent_listener():
    """A port that accepts connections and never answers, as a wrong port or a stuck server does."""
    with socket.socket() as listener:
        listener.bind((HEAD_IP, 0))
        listener.listen(8)
        yield listener


def test_an_address_that_listens_but_is_not_ray_fails_in_bounded_time(silent_listener, ray_env, tiny_download: Path, tmp_path: Path):
    address = "%s:%d" % silent_listener.getsockname()
    start = time.monotonic()
    done = _search(ray_env, tiny_download, tmp_path, "silent", "--address", address, timeout=120)  # Ray's own client: minutes
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"Something listens at {address} but did not answer as a Ray head node within 15 s" in done.stderr
    assert time.monotonic() - start < 90  # the 15 s wait, and Python, torch and Ray starting on 2 busy cores
    assert not (tmp_path / "silent").exists()


def _start(env: dict, data: Path, storage: Path, name: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    """A search in the background; its stderr goes to a file (a full pipe would stall it)."""
    errors = storage / f"{name}.stderr"
    with open(errors, "wb") as err:
        process = subprocess.Popen(_command(data, storage, name, *extra), stdout=subprocess.DEVNULL, stderr=err, env=env)
    return process, errors


def _interrupt(process: subprocess.Popen, errors: Path, ready, limit_s: float = 120) -> float:
    """Ctrl-C (SIGINT) once `ready()`; the seconds the process took to end after it."""
    deadline = time.monotonic() + limit_s
    while not ready():
        assert process.poll() is None, errors.read_text()[-3000:]
        assert time.monotonic() < deadline, "the search never reached the stage to interrupt"
        time.sleep(0.05)
    pressed = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=45)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail("Ctrl-C did not stop the search within 45 s")  # it had hung
    return time.monotonic() - pressed


def test_ctrl_c_stops_a_search_while_it_connects(silent_listener, ray_env, tiny_download: Path, tmp_path: Path):
    address = "%s:%d" % silent_listener.getsockname()
    silent_listener.settimeout(0.05)
    search, errors = _start(ray_env, tiny_download, tmp_path, "connecting", "--address", address)
    connections = []

    def waiting_for_ray() -> bool:
        try:
            connections.append(silent_listener.accept()[0])
        except TimeoutError:
            return False
        time.sleep(1)  # well inside the wait for an answer
        return True

    try:
        took = _interrupt(search, errors, waiting_for_ray)
    finally:
        for connection in connections:
            connection.close()
    assert search.returncode == 130 and "interrupted" in errors.read_text()
    assert took < 5


def test_ctrl_c_stops_a_search_while_its_local_ray_starts(ray_env, tiny_download: Path, tmp_path: Path):
    env = {**ray_env, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rayint-", dir="/tmp")}  # to see this search's Ray session appear
    sessions = Path(env["RAY_TMPDIR"]) / "ray"
    try:
        search, errors = _start(env, tiny_download, tmp_path, "starting")
        took = _interrupt(search, errors, lambda: any(sessions.glob("session_2*")))
        assert search.returncode == 130 and "interrupted" in errors.read_text()
        assert took < 30  # Ray's start-up ends first (5-15 s here), then Ray stops with the process
        time.sleep(2)  # Ray's processes end with the process that started them
        left = subprocess.run(["pgrep", "-f", str(sessions)], capture_output=True, text=True).stdout.split()
        assert left == [], left
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def test_a_second_ctrl_c_while_local_ray_starts_exits_at_once(ray_env, tiny_download: Path, tmp_path: Path):
    env = {**ray_env, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rayint-", dir="/tmp")}
    sessions = Path(env["RAY_TMPDIR"]) / "ray"
    try:
        search, errors = _start(env, tiny_download, tmp_path, "twice")
        deadline = time.monotonic() + 120
        while not any(sessions.glob("session_2*")):  # Ray has begun starting its processes
            assert search.poll() is None and time.monotonic() < deadline, errors.read_text()[-3000:]
            time.sleep(0.05)
        search.send_signal(signal.SIGINT)
        time.sleep(0.3)
        pressed = time.monotonic()
        search.send_signal(signal.SIGINT)
        search.wait(timeout=45)
        assert search.returncode == 130 and time.monotonic() - pressed < 3, errors.read_text()[-2000:]
        assert "Stopped while Ray was starting" in errors.read_text()
    finally:
        subprocess.run(["pkill", "-f", str(sessions)], check=False)  # what an exit at once may leave
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
