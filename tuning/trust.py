"""A resume runs only state that the user's own jobs wrote (issue 16, case 6).

`--resume` hands Ray Tune files of the experiment folder that it unpickles: tuner.pkl, the
experiment_state-*.json (trial states embedded as cloudpickle), the searcher, search-generator
and callback states (*.pkl, and *.json files that are pickles too), a failed trial's error.pkl.
Whoever can write the folder (a shared disk, a team bucket) could otherwise run code as the
next user to resume it.

Ray Tune reads and writes a job's folder through `state_filesystem`. Each of those files is
signed as it is written, with HMAC-SHA256 under the user's own key (`state_key`, kept in their
config folder, never in the experiment), into state.sig.json beside them; a read of one hands Ray
the bytes only when their signature holds. So nothing unsigned reaches an unpickler, even a file
swapped while a resume runs. `prepare_state` checks the whole folder before a resume starts, so
that it is refused in one line, before any work.

Not signed, because nothing in them is unpickled: job.json, summary.json and claim.json (read
as JSON), the Optuna storage, and the checkpoints (loaded with torch's weights_only).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import logging
import os
import posixpath
import secrets
import stat
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pyarrow
import pyarrow.fs

from fracture_models.errors import UserError

logger = logging.getLogger(__name__)

KEY_FILE_ENV = "FRACTURE_TUNE_STATE_KEY_FILE"
SIGNATURES_FILE = "state.sig.json"
TRUST_FLAG = "--trust-experiment-folder"
_KEY_ID_MESSAGE = b"fracture-tune state key id"
_FORMAT = 1
_KEPT = 2  # signatures kept per file: a crash between the signature and the write leaves the previous version valid
_lock = threading.Lock()  # one read-modify-write of state.sig.json at a time (Ray's sync threads write in parallel)


def key_file() -> Path:
    """Where the user's state key lives: $FRACTURE_TUNE_STATE_KEY_FILE (a key a team shares on
    purpose), else $XDG_CONFIG_HOME/fracture-tune/state.key, else ~/.config/fracture-tune/state.key."""
    if os.environ.get(KEY_FILE_ENV):
        return Path(os.environ[KEY_FILE_ENV]).expanduser()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "fracture-tune" / "state.key"


@dataclass(frozen=True)
class StateKey:
    """The secret that signs a user's resume state. Never logged, never pickled."""

    secret: bytes = field(repr=False)
    path: Path

    @property
    def key_id(self) -> str:
        """Names the key in state.sig.json (derived one way: it does not reveal the key)."""
        return hmac.new(self.secret, _KEY_ID_MESSAGE, hashlib.sha256).hexdigest()[:16]

    def sign(self, relpath: str, data: bytes) -> str:
        """The signature of a file's bytes under its path in the experiment folder."""
        return hmac.new(self.secret, relpath.encode() + b"\0" + data, hashlib.sha256).hexdigest()

    def __reduce__(self):
        raise TypeError("the state key is never pickled")  # not into Ray's state files, not to workers


def state_key() -> StateKey:
    """The user's key, created on first use (0600, in a 0700 folder)."""
    path = key_file()
    if not path.exists():
        _create_key(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise UserError(f"Cannot read the state key {path}: {exc.strerror}. Fix its permissions, or set {KEY_FILE_ENV}.") from exc
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UserError(f"The state key {path} is writable by other users, who could sign state as you: chmod 600 {path}.")
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise UserError(f"The state key {path} is not a key (64 hex digits expected). Remove it to have a new one made.")
    return StateKey(secret, path)


def _create_key(path: Path) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
            os.link(temporary, path)  # never replaces a key: two first uses at once agree on one
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    except OSError as exc:
        raise UserError(f"Cannot create the state key {path}: {exc.strerror}. Set {KEY_FILE_ENV} to a file you can write.") from exc
    logger.info("Created %s: the key that signs your experiments' resume state. Keep it private.", path)


@lru_cache(maxsize=1)
def _plain_json() -> frozenset[str]:
    from tuning.claim import CLAIM_FILE
    from tuning.job import JOB_FILE
    from tuning.summary import SUMMARY_FILE

    return frozenset({JOB_FILE, SUMMARY_FILE, CLAIM_FILE, SIGNATURES_FILE})


def signed(relpath: str) -> bool:
    """Whether Ray Tune may unpickle the file at `relpath` in a job's folder, so that it is
    signed: every *.pkl, and the *.json of a Tune experiment's own folder (the job's, and its
    confirmation's) that the project did not write as plain JSON."""
    from tuning.confirmation import CONFIRMATION_DIR

    folder, _, name = relpath.rpartition("/")
    if name.endswith(".pkl"):
        return True
    return name.endswith(".json") and folder in ("", CONFIRMATION_DIR) and name not in _plain_json()


def _locate(experiment: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem and path of an experiment folder, local or a URI (s3://...)."""
    if "://" in experiment:
        return pyarrow.fs.FileSystem.from_uri(experiment)
    return pyarrow.fs.LocalFileSystem(), posixpath.normpath(str(Path(experiment).expanduser().resolve()))


def fs_path(uri: str) -> str:
    """A local path or URI as a path on its filesystem (what Ray takes beside a filesystem)."""
    return _locate(uri)[1]


def base_filesystem(filesystem: pyarrow.fs.FileSystem) -> pyarrow.fs.FileSystem:
    """The filesystem under `state_filesystem`'s (or any other filesystem itself)."""
    return getattr(getattr(filesystem, "handler", None), "base", filesystem)


# ---------------------------------------------------------------------------------------------
# state.sig.json


class _Signatures:
    """The signatures of one job folder, read and written through its real filesystem."""

    def __init__(self, base: pyarrow.fs.FileSystem, root: str) -> None:
        self.base, self.root = base, root.rstrip("/")

    @property
    def path(self) -> str:
        return f"{self.root}/{SIGNATURES_FILE}"

    def read(self) -> dict | None:
        try:
            with self.base.open_input_stream(self.path) as stream:
                manifest = json.loads(stream.readall())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"files": {}}  # unreadable: nothing in it counts
        return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else {"files": {}}

    def write(self, manifest: dict) -> None:
        data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        _write(self.base, self.path, data)

    def add(self, key: StateKey, relpath: str, signature: str) -> None:
        with _lock:
            manifest = self.read() or {}
            if manifest.get("key_id") != key.key_id:  # a new job, or signatures under another key: none count
                manifest = {"format": _FORMAT, "key_id": key.key_id, "files": {}}
            kept = _kept(manifest, relpath)
            if kept[:1] == [signature]:
                return  # unchanged (Ray uploads every file of its staging folder at each snapshot)
            manifest["files"][relpath] = [signature, *kept][:_KEPT]
            self.write(manifest)

    @staticmethod
    def problem(key: StateKey, relpath: str, data: bytes, manifest: dict | None) -> str | None:
        """Why `data` may not be unpickled as `relpath`, given the folder's signatures (`read`);
        None when this user's key signed it."""
        if manifest is None:
            return (
                f"is not signed: the folder has no {SIGNATURES_FILE} (made before fracture-tune signed resume state, "
                "or the signatures were removed)"
            )
        if not manifest.get("key_id"):
            return f"is not signed: {SIGNATURES_FILE} cannot be read"
        if manifest.get("key_id") != key.key_id:
            return f"was signed with another key than yours ({key.path}): another user's, or your own on another machine"
        kept = _kept(manifest, relpath)
        if not kept:
            return "is not signed by any job of yours"
        if not any(hmac.compare_digest(s, key.sign(relpath, data)) for s in kept):
            return "changed after your job wrote it"
        return None


def _kept(manifest: dict, relpath: str) -> list[str]:
    kept = manifest["files"].get(relpath)
    return (
        [s for s in kept if isinstance(s, str) and s.isascii()] if isinstance(kept, list) else []
    )  # whoever can write the folder can write this file


def _write(base: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    """Whole or not at all: a local file is replaced by a rename, an object by one put."""
    if isinstance(base, pyarrow.fs.LocalFileSystem):
        temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with base.open_output_stream(temporary) as out:
                out.write(data)
            base.move(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                base.delete_file(temporary)  # a full disk keeps no half-written copy
            raise
        return
    with base.open_output_stream(path) as out:
        out.write(data)


# ---------------------------------------------------------------------------------------------
# The filesystem Ray Tune sees


class _PlainHandler(pyarrow.fs.FileSystemHandler):
    """Passes every call to the real filesystem. What `_SigningHandler` pickles as: Ray ships the
    filesystem to its trial workers and into its state files, never with the key; workers write
    checkpoints only, and a driver that restores a job gets a signing filesystem anew."""

    def __init__(self, base: pyarrow.fs.FileSystem) -> None:
        self.base = base

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self.base.equals(other.base)

    def __ne__(self, other) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return f"fracture-tune+{self.base.type_name}"

    def normalize_path(self, path):
        return self.base.normalize_path(path)

    def get_file_info(self, paths):
        return self.base.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.base.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.base.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.base.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.base.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.base.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self.base.delete_file(path)

    def move(self, src, dest):
        self.base.move(src, dest)  # Ray does not move state files; one moved in is unsigned, so refused

    def copy_file(self, src, dest):
        self.base.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.base.open_input_stream(path)

    def open_input_file(self, path):
        return self.base.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.base.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.base.open_append_stream(path, metadata=metadata)


class _SigningHandler(_PlainHandler):
    """Signs the state files it writes under `root` and hands out only signed ones."""

    def __init__(self, base: pyarrow.fs.FileSystem, root: str, key: StateKey) -> None:
        super().__init__(base)
        self.root, self.key = root.rstrip("/"), key
        self.signatures = _Signatures(base, self.root)

    def __reduce__(self):
        return _PlainHandler, (self.base,)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self.base.equals(other.base) and self.root == other.root

    def _relpath(self, path: str) -> str | None:
        path = posixpath.normpath(path)
        if not path.startswith(self.root + "/"):
            return None
        relpath = path[len(self.root) + 1 :]
        return relpath if signed(relpath) else None

    def _verified(self, path: str):
        relpath = self._relpath(path)
        if relpath is None:
            return None
        with self.base.open_input_stream(path) as stream:
            data = stream.readall()
        problem = self.signatures.problem(self.key, relpath, data, self.signatures.read())
        if problem is not None:
            raise UserError(refusal(self.root, relpath, problem))
        return pyarrow.BufferReader(data)  # the very bytes checked: a file swapped since is never read

    def open_input_stream(self, path):
        return self._verified(path) or self.base.open_input_stream(path)

    def open_input_file(self, path):
        return self._verified(path) or self.base.open_input_file(path)

    def open_output_stream(self, path, metadata):
        if posixpath.normpath(path) == self.signatures.path:
            return pyarrow.BufferOutputStream()  # Ray's copy of it, from its staging folder at the resume's start: stale
        relpath = self._relpath(path)
        if relpath is None:
            return self.base.open_output_stream(path, metadata=metadata)
        return pyarrow.PythonFile(_SignedWrite(self, path, relpath), mode="w")

    def commit(self, path: str, relpath: str, data: bytes) -> None:
        self.signatures.add(self.key, relpath, self.key.sign(relpath, data))  # first: a crash in between leaves the old file, still signed
        _write(self.base, path, data)


class _SignedWrite(io.BytesIO):
    """A state file being written: signed, then written whole, when closed."""

    def __init__(self, handler: _SigningHandler, path: str, relpath: str) -> None:
        super().__init__()
        self.handler, self.target, self.relpath = handler, path, relpath

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            super().close()
            self.handler.commit(self.target, self.relpath, data)


def state_filesystem(experiment: str) -> pyarrow.fs.FileSystem:
    """The job folder `experiment` (local or s3://...) as Ray Tune should see it: state files
    signed with the user's key as they are written, and read only when signed. Give Ray its
    paths with `fs_path`."""
    base, root = _locate(experiment)
    return pyarrow.fs.PyFileSystem(_SigningHandler(base, root, state_key()))


# ---------------------------------------------------------------------------------------------
# Before a resume


def refusal(experiment: str, relpath: str, problem: str, more: int = 0) -> str:
    others = f" (and {more} more file{'s' if more != 1 else ''})" if more else ""
    return (
        f"Refusing to resume {experiment}: {relpath} {problem}{others}. Ray Tune unpickles it on --resume, so whoever "
        f"wrote it could run code as you. If you trust everyone who can write that folder, resume with {TRUST_FLAG} "
        "(it lists what is unsigned, then signs the folder's state with your key); otherwise start a new job (another --name)."
    )


def unsigned_state(experiment: str, key: StateKey) -> list[tuple[str, str]]:
    """(file, why) for each state file of the job folder that this user's key did not sign."""
    base, root = _locate(experiment)
    signatures = _Signatures(base, root)
    manifest = signatures.read()
    problems = []
    selector = pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)
    for info in sorted(base.get_file_info(selector), key=lambda i: (not i.path.endswith("/tuner.pkl"), i.path)):  # what Ray reads first
        relpath = posixpath.normpath(info.path)[len(root.rstrip("/")) + 1 :]
        if info.type != pyarrow.fs.FileType.File or not signed(relpath):
            continue
        with base.open_input_stream(info.path) as stream:
            problem = signatures.problem(key, relpath, stream.readall(), manifest)
        if problem is not None:
            problems.append((relpath, problem))
    return problems


def sign_folder(experiment: str, key: StateKey) -> None:
    """Sign every state file of the job folder as it is now, with `key`, in place of any signatures."""
    base, root = _locate(experiment)
    files = {}
    selector = pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)
    for info in base.get_file_info(selector):
        relpath = posixpath.normpath(info.path)[len(root.rstrip("/")) + 1 :]
        if info.type == pyarrow.fs.FileType.File and signed(relpath):
            with base.open_input_stream(info.path) as stream:
                files[relpath] = [key.sign(relpath, stream.readall())]
    with _lock:
        _Signatures(base, root).write({"format": _FORMAT, "key_id": key.key_id, "files": files})


def prepare_state(experiment: str, *, resume: bool, trust_folder: bool) -> None:
    """The user's key (made on first use, so a new job fails now, not after decoding, where it
    cannot be made), and on --resume the job folder's state: refused with one line when this
    user's key did not sign all of it, unless they vouch for the folder with --trust-experiment-folder."""
    if trust_folder and not resume:
        raise UserError(f"{TRUST_FLAG} only applies with --resume.")
    key = state_key()
    if not resume:
        return
    problems = unsigned_state(experiment, key)
    if not problems:
        return
    if not trust_folder:
        relpath, problem = problems[0]
        raise UserError(refusal(experiment, relpath, problem, len(problems) - 1))
    for relpath, problem in problems:
        logger.warning("%s: %s %s; trusted as you asked.", experiment, relpath, problem)
    sign_folder(experiment, key)
    logger.warning("%s: its state is signed with your key (%s) from now on.", experiment, key.path)
