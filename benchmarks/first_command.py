"""The README's first command, timed as a newcomer runs it, by stage; optionally side by side with
another checkout of the project.

    python benchmarks/first_command.py [--rounds 2] [--against /tmp/older-checkout] [--out FILE]

Reads the `tuning.run` part of the command under `<!-- first-run-command -->` in README.md and
runs it in a fresh folder with a fresh cache (`FRACTURE_CACHE_DIR`), so every run is a first run:
it generates the data set, decodes and audits it and creates the MLflow database. `--against DIR`
runs the same command with DIR first on PYTHONPATH (a `git worktree` of an older commit; Ray's
workers inherit it), alternating with this checkout round by round, as the machine is noisy.

Stages come from the command's own log lines: `start` until the validation split is loaded,
`search` until the confirmation starts, `confirmation` until the test split is loaded, `finish`
to the end. Epoch counts differ between runs (early stopping follows each run's scores, and any
change in float rounding changes those), so the search is also given per trained epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^(?:\d{4}/\d\d/\d\d )?(\d\d:\d\d:\d\d) INFO (\S+): (.*)$")
SPLIT_READY = re.compile(r"(?:Decoded|Loaded) (train|val|test)\b")


def first_command() -> list[str]:
    """`python -m tuning.run ...` from the README's first-run command."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- first-run-command -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    command = block.strip().split("&&")[-1].strip()
    words = shlex.split(command)
    if words[:3] != ["python", "-m", "tuning.run"]:
        raise SystemExit(f"The README's first command does not end with python -m tuning.run: {command}")
    return [sys.executable, *words[1:]]


def stages(log: str, total_s: float, started: datetime) -> dict:
    """Seconds per stage, from the log's timestamps (whole seconds), and the search's epochs."""
    marks = {}
    for line in log.splitlines():
        match = STAMP.match(line)
        if not match:
            continue
        clock, source, message = match.groups()
        at = datetime.combine(started.date(), datetime.strptime(clock, "%H:%M:%S").time())
        split = SPLIT_READY.match(message) if source == "fracture_models.data" else None
        if split and split.group(1) == "val":
            marks.setdefault("val", at)
        elif split and split.group(1) == "test":
            marks["test"] = at  # the last: a first run also decodes test at the start, to audit it
        elif source == "tuning.run" and message.startswith("Confirmation:"):
            marks.setdefault("confirmation", at)
    epochs = re.search(r"; (\d+) of \d+ epochs trained", log)
    start = started.replace(microsecond=0)
    seconds = lambda a, b: (marks[b] - (marks[a] if a else start)).total_seconds()  # noqa: E731
    row = {
        "total_s": round(total_s, 1),
        "start_s": seconds(None, "val"),
        "search_s": seconds("val", "confirmation"),
        "confirmation_s": seconds("confirmation", "test"),
        "finish_s": round(total_s - seconds(None, "test"), 1),
        "search_epochs": int(epochs.group(1)) if epochs else None,
    }
    row["search_s_per_epoch"] = round(row["search_s"] / row["search_epochs"], 2) if row["search_epochs"] else None
    return row


def run_once(command: list[str], pythonpath: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="first-command-") as folder:
        env = {**os.environ, "FRACTURE_CACHE_DIR": str(Path(folder) / "cache")}
        if pythonpath is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))
        started, clock = datetime.now(), time.perf_counter()
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        total = time.perf_counter() - clock
    if done.returncode != 0:
        raise SystemExit(f"exit {done.returncode}:\n{done.stderr[-3000:]}")
    return stages(done.stdout + done.stderr, total, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--against", type=Path, help="another checkout of the project, run side by side")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    command = first_command()
    print("command:", shlex.join(["python", *command[1:]]), flush=True)
    sides = {"this": None, **({f"against {args.against}": args.against.resolve()} if args.against else {})}
    runs = []
    for round_ in range(1, args.rounds + 1):
        for side, path in sides.items():
            row = {"round": round_, "side": side, **run_once(command, path)}
            runs.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"command": command[1:], "cpus": os.cpu_count(), "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
