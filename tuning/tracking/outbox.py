"""Ordered MLflow writes that survive a tracking-server outage."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

from tuning.tracking.connect import is_outage

logger = logging.getLogger("tuning.tracking")

OUTBOX_FILE = "mlflow_outbox.jsonl"
RETRY_AFTER_S = 5.0


class Outbox:
    """Ordered MLflow writes; what cannot be sent now is kept (on disk when a path is given) and sent later."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.pending: list[dict] = []
        if path is not None and path.exists():
            self.pending = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        self._retry_at = 0.0

    def _save(self) -> None:
        if self.path is None:
            return
        if not self.pending:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(op) + "\n" for op in self.pending))
        os.replace(tmp, self.path)

    def submit(self, op: dict, send: Callable[[dict], None]) -> None:
        self.pending.append(op)
        self.flush(send)

    def flush(self, send: Callable[[dict], None], *, force: bool = False) -> bool:
        """Send pending writes in order until one fails for an outage; True when none is left."""
        if not self.pending:
            return True
        if not force and time.monotonic() < self._retry_at:
            self._save()
            return False
        while self.pending:
            op = self.pending[0]
            try:
                send(op)
            except Exception as exc:  # noqa: BLE001 - sorted below
                if is_outage(exc):
                    if self._retry_at == 0.0 or force:
                        logger.warning(
                            "MLflow unreachable (%s); %d writes kept in %s and retried",
                            type(exc).__name__,
                            len(self.pending),
                            self.path or "memory",
                        )
                    self._retry_at = time.monotonic() + RETRY_AFTER_S
                    self._save()
                    return False
                logger.warning("MLflow refused %s (%s); skipped", op.get("op"), exc)
            self.pending.pop(0)
        if self._retry_at:
            logger.info("MLflow reachable again; pending writes sent")
        self._retry_at = 0.0
        self._save()
        return True
