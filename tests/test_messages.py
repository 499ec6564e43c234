"""Messages a user reads: whole words, the command they typed, a server that stops on SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fracture_models.errors import UserError
from tests.conftest import free_port
from tuning.tracking.connect import check_reachable


def test_an_unreachable_tracking_server_is_named_with_its_reason_in_whole_words():
    with pytest.raises(UserError) as raised:
        check_reachable(f"http://127.0.0.1:{free_port()}")
    message = str(raised.value)
    assert "(Connection refused)" in message and "python -m mlflow_server" in message


@pytest.mark.parametrize("module", ["tuning.run", "tuning.leaderboard", "fracture_models.train", "mlflow_server"])
def test_usage_names_the_command_a_user_types(module: str):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith(f"usage: python -m {module}")


def test_the_server_started_in_the_background_stops_on_sigint(tmp_path):
    # As a script's `python -m mlflow_server &` is started: with SIGINT ignored.
    port = free_port()
    log = open(tmp_path / "server.out", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow_server", "--store", str(tmp_path / "store"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 120
        while b"MLflow UI:" not in (tmp_path / "server.out").read_bytes():
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.out").read_text()
            time.sleep(0.3)
        os.kill(server.pid, signal.SIGINT)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
