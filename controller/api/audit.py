"""The audit log: every write through the API, who made it, and how it ended."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.workbench.db import connect

__all__ = ["AuditLog"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    role TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    summary TEXT NOT NULL
);
"""


class AuditLog:
    """Append-only; read back newest first."""

    def __init__(self, path: Path | str, now: Callable[[], dt.datetime]) -> None:
        self.now = now
        self._db = connect(path)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def write(
        self, *, who: str, role: str, method: str, path: str, status: int, summary: Any
    ) -> None:
        """Record one write request."""
        text = summary if isinstance(summary, str) else json.dumps(summary, default=str)
        with self._lock:
            self._db.execute(
                "INSERT INTO audit(at, who, role, method, path, status, summary)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.now().isoformat(), who, role, method, path, status, text[:4000]),
            )

    def entries(self, limit: int = 100, before_id: int | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, at, who, role, method, path, status, summary FROM audit"
                " WHERE id < ? ORDER BY id DESC LIMIT ?",
                (before_id or 2**62, limit),
            ).fetchall()
        keys = ("id", "at", "who", "role", "method", "path", "status", "summary")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def close(self) -> None:
        """Close the file."""
        self._db.close()
