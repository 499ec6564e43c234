"""The Ray a search runs on: a new local Ray on loopback, or the running cluster --address names.

Ray's own defaults do neither. `ray.init()` without an address joins the cluster this machine last
started (the address `ray start` wrote to /tmp/ray/ray_current_cluster), or hangs when it is gone;
a new local Ray advertises, and listens on, the host's network address. Connecting to an address
runs in Ray's C++ client, which retries a silent address for minutes and runs no Python signal
handler meanwhile (Ctrl-C waits), so the address is first checked from Python, within
CONNECT_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading

from fracture_models.errors import UserError

LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT_S = 15.0
# The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS) answers with its
# own SETTINGS frame, frame type 4 in byte 3 of the 9-byte frame header.
HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4


def init_ray(address: str | None) -> None:
    """--address, else $RAY_ADDRESS, else a new local Ray on 127.0.0.1: never the cluster this
    machine last started. Nothing to do when this process holds a Ray already (tests, notebooks)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        _start_local_ray()
        return
    if address != "auto" and "://" not in address:  # "auto" and ray:// (Ray Client) are Ray's to resolve
        check_gcs_answers(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise UserError(
            f"Could not connect to the Ray cluster at {address}: {exc}. Start it with `ray start --head` or drop --address."
        ) from exc


def _start_local_ray() -> None:
    """A new Ray on this machine whose processes listen on 127.0.0.1 only, and whose trials report it
    as their node. Ray replaces a loopback node address by the host's network address, except when
    cluster support is off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read once when Ray is imported,
    usually before this runs); it is off only while this process starts its own Ray, since joining a
    cluster later needs the real address."""
    import ray
    from ray._private import ray_constants

    clusters = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with _ctrl_c_once_started():
            ray.init(
                address="local", _node_ip_address=LOOPBACK, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
            )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters


@contextlib.contextmanager
def _ctrl_c_once_started():
    """Ctrl-C while Ray starts its processes stops the search once they are up (seconds), not at
    once: Ray forks them, and a KeyboardInterrupt raised in the handlers Python runs around a fork
    is swallowed there and leaves the logging lock held, so the search hung instead of stopping.
    A second Ctrl-C exits at once (130)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # someone else handles Ctrl-C here (or ignores it, as a background job does)
        return
    pressed = []

    def on_ctrl_c(signum, frame) -> None:
        if pressed:  # a second Ctrl-C: the user will not wait for a Ray that may be stuck starting
            os.write(2, b"\nStopped while Ray was starting; if `ray status` still shows its processes, `ray stop` ends them.\n")
            os._exit(130)
        pressed.append(signum)

    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed:
        raise KeyboardInterrupt


def check_gcs_answers(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a UserError unless a gRPC server (Ray's GCS) answers at HOST:PORT within `timeout_s`
    per step; in Python, so Ctrl-C stops it at once. Under RAY_USE_TLS only the port is checked."""
    host, _, port = address.rpartition(":")
    what = "fix --address (or $RAY_ADDRESS), or drop it to run on a new local Ray."
    try:
        gcs = socket.create_connection((host.strip("[]") or LOOPBACK, int(port)), timeout=timeout_s)
    except (OSError, ValueError) as exc:
        raise UserError(f"Could not connect to the Ray cluster at {address} ({exc}). Start it with `ray start --head`, {what}") from exc
    with gcs:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return
        try:
            gcs.sendall(HTTP2_HELLO)
            header = gcs.makefile("rb").read(9)
        except OSError as exc:  # a timeout too
            raise UserError(
                f"Something listens at {address} but did not answer as a Ray head node within {timeout_s:.0f} s ({exc}): "
                f"check the port, or {what}"
            ) from exc
    if len(header) < 4 or header[3] != HTTP2_SETTINGS:
        raise UserError(f"What listens at {address} is not a Ray head node (it does not speak gRPC): check the port, or {what}")
