"""Send the MLflow writes that an outage left pending in a search's folder.

python -m tuning.tracking runs/tune/<name> [TRACKING_URI]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fracture_models.errors import UserError
from fracture_models.records import REDACTED
from tuning.job import JOB_FILE, JobSpec
from tuning.tracking.connect import check_reachable
from tuning.tracking.outbox import OUTBOX_FILE
from tuning.tracking.tracker import SearchTracker


def replay(experiment: Path, tracking_uri: str | None = None) -> int:
    """Send the writes an outage left in <experiment>/mlflow_outbox.jsonl."""
    job = JobSpec.from_json(json.loads((experiment / JOB_FILE).read_text()))
    if not (experiment / OUTBOX_FILE).exists():
        print(f"Nothing pending in {experiment}.")
        return 0
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or job.tracking_uri
    if f":{REDACTED}@" in uri:
        raise UserError(f"job.json keeps {uri} without its password: pass the tracking URI as the second argument.")
    tracker = SearchTracker(uri, job, experiment)
    check_reachable(tracker.uri)
    tracker.start(resume=True)
    left = len(tracker.outbox.pending)
    if tracker.flush(force=True):
        print(f"Sent {left} pending MLflow writes of {job.name}.")
        return 0
    print(f"{len(tracker.outbox.pending)} writes still pending in {experiment / OUTBOX_FILE}: is the server up?", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    import argparse

    from fracture_models.cli import configure_logging

    parser = argparse.ArgumentParser(
        prog="python -m tuning.tracking", description="Send the MLflow writes that an outage left pending in a search's folder."
    )
    parser.add_argument("experiment", type=Path, help="the search's folder, e.g. runs/tune/cnn-20261126-101500")
    parser.add_argument("tracking_uri", nargs="?", default=None, help="default: $MLFLOW_TRACKING_URI, else the one in job.json")
    args = parser.parse_args(argv)
    configure_logging()
    return replay(args.experiment, args.tracking_uri)


if __name__ == "__main__":
    from fracture_models.cli import run_main

    sys.exit(run_main(main))
