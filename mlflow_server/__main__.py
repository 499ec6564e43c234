"""Start the team's MLflow tracking server: UI, REST API, artifact proxy, optional basic-auth.

    python -m mlflow_server                         # browse the local store on http://127.0.0.1:5000
    python -m mlflow_server --backend-store-uri postgresql://mlflow@db/mlflow \
        --artifacts-destination s3://bucket/mlflow --host 0.0.0.0 --auth

It binds 127.0.0.1 unless told otherwise, refuses a non-loopback address without --auth (or an
explicit --insecure), waits until the server answers /health before printing its address and the
runs table of each project experiment, and stops the whole server on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from fracture_models.cli import configure_logging, run_main
from fracture_models.errors import UserError
from fracture_models.records import redact_url
from mlflow_server.app import AUTH_ENV, DEFAULT_MAX_REQUEST_MB, MAX_REQUEST_ENV
from tuning.tracking.names import EXPERIMENT_PREFIX
from tuning.tracking.store import artifacts_dir, backend_uri, store_dir
from tuning.tracking.ui import runs_table_url

logger = logging.getLogger("mlflow_server")

ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
START_TIMEOUT_S = 180
APP_NAME = "fracture-tune"
DEFAULT_PERMISSIONS = ("READ", "NO_PERMISSIONS")  # writes always need a grant


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlflow_server", description="Start the MLflow tracking server of fracture-tune.", add_help=add_help
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; another needs --auth or --insecure)")
    parser.add_argument("--port", type=int, default=5000, help="port (default: %(default)s)")
    parser.add_argument("--store", default=None, help="folder of the default stores (default: $FRACTURE_MLFLOW_DIR, else ./runs/mlflow)")
    parser.add_argument(
        "--backend-store-uri",
        default=None,
        help="runs and registry: a SQLAlchemy URL such as postgresql://user@host/db (default: sqlite <store>/mlflow.db)",
    )
    parser.add_argument(
        "--artifacts-destination",
        default=None,
        help="where proxied artifacts go: a folder or s3://bucket/prefix (default: <store>/artifacts)",
    )
    parser.add_argument("--auth", action="store_true", help=f"basic-auth; the admin password comes from ${ADMIN_PASSWORD_ENV} (user admin)")
    parser.add_argument(
        "--default-permission",
        choices=DEFAULT_PERMISSIONS,
        default="READ",
        help="--auth: what a user may do in an experiment nobody granted them anything on; READ lets teammates read each "
        "other's runs (leaderboards), NO_PERMISSIONS shows each user only the experiments they create or are granted "
        "(default: %(default)s)",
    )
    parser.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without --auth")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default: %(default)s)")
    parser.add_argument(
        "--allowed-hosts",
        default=None,
        help="Host headers the server answers, comma-separated, wildcards allowed (e.g. 'mlflow.internal,mlflow.internal:*'); "
        "MLflow's default is localhost and private IP addresses, so a DNS name teammates use must be listed",
    )
    parser.add_argument(
        "--max-request-mb",
        type=float,
        default=DEFAULT_MAX_REQUEST_MB,
        help="largest API request body in MB; larger ones get 413 (artifact uploads are not capped: a proxy in front sets "
        "their limit) (default: %(default)s)",
    )
    return parser


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: only a listener blocks
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"Cannot listen on {host}:{port} ({exc.strerror}): another server is there? Pass --port.") from exc


def _check_backend(uri: str) -> None:
    import importlib.util

    if uri.startswith("postgresql") and importlib.util.find_spec("psycopg") is None:  # SQLAlchemy's default driver
        raise UserError("A PostgreSQL backend needs its driver: pip install 'fracture-tune[postgres]'.")


def _set_admin_password(users: Path, password: str) -> None:
    """$MLFLOW_AUTH_ADMIN_PASSWORD is authoritative on every start: MLflow itself only uses it when it
    creates the users database, so without this a rotated password would be ignored."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    accounts = SqlAlchemyStore()
    accounts.init_db(f"sqlite:///{users}")
    if accounts.has_user("admin"):
        accounts.update_user("admin", password=password)


def _auth_settings(store: Path, env: dict, default_permission: str) -> dict:
    """The basic-auth config file and secret key under <store>/auth; never a default password."""
    if not env.get(ADMIN_PASSWORD_ENV):
        raise UserError(
            f"--auth needs the admin password in ${ADMIN_PASSWORD_ENV} (user 'admin'); there is no default. "
            f'Example: export {ADMIN_PASSWORD_ENV}="$(openssl rand -base64 18)"'
        )
    folder = store / "auth"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)  # a folder made earlier, by hand or by an older version, is tightened too
    users = folder / "users.db"
    if users.exists():
        users.chmod(0o600)
        _set_admin_password(users, env[ADMIN_PASSWORD_ENV])
    config = folder / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = sqlite:///{folder / 'users.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    settings = {"MLFLOW_AUTH_CONFIG_PATH": str(config)}
    if not env.get(SECRET_KEY_ENV):
        key_file = folder / "secret_key"
        if not key_file.exists():
            key_file.touch(mode=0o600)
            key_file.write_text(secrets.token_hex(32))
        settings[SECRET_KEY_ENV] = key_file.read_text().strip()
    return settings


LOOPBACK_HOSTS = "localhost,localhost:*,127.0.0.1,127.0.0.1:*"


def server_command(args: argparse.Namespace, backend: str, artifacts: str) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--workers",
        str(args.workers),
    ]
    if args.allowed_hosts:  # loopback stays allowed: this launcher's health check and local users
        command += ["--allowed-hosts", f"{args.allowed_hosts},{LOOPBACK_HOSTS}"]
    return command + ["--app-name", APP_NAME]  # MLflow's app + /leaderboard (mlflow_server.app), auth inside


def wait_until_healthy(url: str, process: subprocess.Popen, timeout_s: float = START_TIMEOUT_S) -> None:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # our own server: never via a proxy
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            with direct.open(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no answer from {url}/health within {timeout_s:.0f} s")


def runs_links(url: str, admin_password: str | None) -> list[str]:
    """'Runs of fracture-cnn: <its runs table>' for each project experiment on the server; none
    when it cannot list them (its page still opens experiments on their runs tables)."""
    body = json.dumps({"max_results": 1000, "filter": f"name LIKE '{EXPERIMENT_PREFIX}%'", "order_by": ["name ASC"]}).encode()
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/experiments/search", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    if admin_password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{admin_password}".encode()).decode())
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(request, timeout=15) as response:
            experiments = json.loads(response.read()).get("experiments", [])
    except (OSError, ValueError) as exc:  # URLError is an OSError
        logger.warning("Could not list the experiments for their links (%s)", exc)
        return []
    return [f"Runs of {e['name']}: {runs_table_url(url, e['experiment_id'])}" for e in experiments]


def stop(process: subprocess.Popen) -> None:
    """Stop the server and its workers (one process group)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _stop_like_ctrl_c(signum, frame) -> None:
    raise KeyboardInterrupt  # `kill` and Ctrl-C both stop the server and its workers


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    if not is_loopback(args.host) and not (args.auth or args.insecure):
        raise UserError(
            f"--host {args.host} would expose the server beyond this machine without a password. "
            "Add --auth (recommended) or, on a network you trust, --insecure."
        )
    store = store_dir(args.store)
    store.mkdir(parents=True, exist_ok=True)
    backend = args.backend_store_uri or backend_uri(store)
    if backend.startswith("sqlite:///") and Path(backend.removeprefix("sqlite:///")).exists():
        Path(backend.removeprefix("sqlite:///")).chmod(0o600)  # runs, params and users' names: not for other local users
    artifacts = args.artifacts_destination or str(artifacts_dir(store))
    _check_backend(backend)
    _check_port_free(args.host, args.port)

    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner: 2 processes instead of 15
    # MLflow's GenAI assistant: never offered to browsers on other machines. MLflow has no setting
    # that hides it from a browser on this one (localhost); the page's presets keep it closed there.
    env["MLFLOW_ENABLE_REMOTE_ASSISTANT"] = "false"
    if args.auth:
        env.update(_auth_settings(store, env, args.default_permission))
        env[AUTH_ENV] = "1"
    else:
        env.pop(AUTH_ENV, None)
    env[MAX_REQUEST_ENV] = str(int(args.max_request_mb * 2**20))
    log_file = store / "logs" / f"server-{args.port}.log"
    log_file.parent.mkdir(exist_ok=True)
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"

    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            server_command(args, backend, artifacts),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=store,
            umask=0o077,  # what the server creates (mlflow.db, users.db, artifacts) is its owner's alone
        )
    # SIGINT too: a shell starts a background job with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler of its own, so `kill -INT` or Ctrl-C would not stop the server.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_like_ctrl_c)
    try:
        logger.info("Starting MLflow (backend %s, artifacts %s); log in %s", redact_url(backend), artifacts, log_file)
        try:
            wait_until_healthy(url, process)
        except RuntimeError as exc:
            raise UserError(f"The MLflow server did not start: {exc}. Last lines of {log_file}:\n{_tail(log_file)}") from exc
        auth_note = " (basic-auth: user admin)" if args.auth else ""
        links = "".join(f"{line}\n" for line in runs_links(url, env.get(ADMIN_PASSWORD_ENV) if args.auth else None))
        print(f"MLflow UI: {url}{auth_note}\n{links}Tracking URI for searches: --tracking-uri {url}\nCtrl-C stops the server.", flush=True)
        code = process.wait()
        raise UserError(f"The MLflow server stopped (exit code {code}). Last lines of {log_file}:\n{_tail(log_file)}")
    except KeyboardInterrupt:
        print("Stopping the MLflow server...", file=sys.stderr, flush=True)
        return 0
    finally:
        stop(process)


if __name__ == "__main__":
    sys.exit(run_main(main))
