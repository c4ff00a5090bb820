"""Overrides made by people (API, page): stored so they survive restarts, cleared on request.

An override is a temporary level for some groups from ``start`` until ``until`` (or until
cleared), with a reason; see :class:`schedules.model.Override`. The config's own overrides stay
in the config; these are the ones engineers add while the controller runs. Clearing one keeps
its record (who, when) and removes it from what the schedule evaluates, so the groups resume
their program at once.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.workbench.db import connect
from schedules.model import Override

__all__ = ["OverrideRecord", "OverrideStore", "UnknownOverride"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS overrides (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    body TEXT NOT NULL,          -- the Override as JSON
    cleared_at TEXT,
    cleared_by TEXT
);
"""


class UnknownOverride(KeyError):
    """No active override with that id."""


@dataclass(frozen=True)
class OverrideRecord:
    """An override and who made (and cleared) it."""

    override: Override
    created_at: dt.datetime
    created_by: str
    cleared_at: dt.datetime | None = None
    cleared_by: str | None = None


class OverrideStore:
    """The API's overrides in the workbench file."""

    def __init__(self, path: Path | str, now: Callable[[], dt.datetime]) -> None:
        self.now = now
        self._db = connect(path)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def add(
        self,
        *,
        groups: list[str],
        level: float,
        start: dt.datetime | None,
        until: dt.datetime | None,
        reason: str,
        author: str,
    ) -> OverrideRecord:
        """Store a new override (validated by :class:`Override`: raises ``ValueError``)."""
        now = self.now()
        ov = Override(
            id=f"api-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}",
            groups=groups,
            level=level,
            start=start or now,
            until=until,
            created=now,
            reason=reason,
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO overrides(id, created_at, created_by, body) VALUES (?, ?, ?, ?)",
                (ov.id, now.isoformat(), author, ov.model_dump_json()),
            )
        return OverrideRecord(ov, now, author)

    def clear(self, override_id: str, author: str) -> OverrideRecord:
        """Clear an active override; the groups resume their schedule."""
        now = self.now()
        with self._lock:
            cur = self._db.execute(
                "UPDATE overrides SET cleared_at = ?, cleared_by = ? WHERE id = ? AND cleared_at IS NULL",
                (now.isoformat(), author, override_id),
            )
            if cur.rowcount == 0:
                raise UnknownOverride(override_id)
        rec = self.get(override_id)
        assert rec is not None
        return rec

    def get(self, override_id: str) -> OverrideRecord | None:
        """One override, active or cleared."""
        with self._lock:
            row = self._db.execute(
                "SELECT body, created_at, created_by, cleared_at, cleared_by FROM overrides"
                " WHERE id = ?",
                (override_id,),
            ).fetchone()
        return _record(row) if row else None

    def active(self, at: dt.datetime | None = None) -> list[OverrideRecord]:
        """Not cleared and not yet expired at ``at`` (default now), oldest first."""
        at = at or self.now()
        with self._lock:
            rows = self._db.execute(
                "SELECT body, created_at, created_by, cleared_at, cleared_by FROM overrides"
                " WHERE cleared_at IS NULL ORDER BY created_at"
            ).fetchall()
        recs = [_record(r) for r in rows]
        return [r for r in recs if r.override.until is None or r.override.until > at]

    def close(self) -> None:
        """Close the file."""
        self._db.close()


def _record(row: tuple[str, str, str, str | None, str | None]) -> OverrideRecord:
    body, created_at, created_by, cleared_at, cleared_by = row
    return OverrideRecord(
        Override.model_validate(json.loads(body)),
        dt.datetime.fromisoformat(created_at),
        created_by,
        dt.datetime.fromisoformat(cleared_at) if cleared_at else None,
        cleared_by,
    )
