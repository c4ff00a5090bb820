"""Incidents in ``<state_dir>/workbench.sqlite`` (tables ``incidents`` and ``incident_events``).

The engine hands every change of one call (a sync, an acknowledgement, a report…) to
:meth:`IncidentStore.save`, which writes it in one transaction, so a SIGKILL loses nothing that
was answered with success and never leaves half a change. :meth:`IncidentStore.load` gives back
every incident and event; :func:`open_incidents` builds the engine from them. The file is shared
with the other workbench stores (schedules, overrides, audit), each with its own tables.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from controller.incidents.engine import (
    Directory,
    EventKind,
    Incident,
    IncidentEngine,
    IncidentError,
    IncidentEvent,
    IncidentSettings,
    Severity,
    State,
)
from controller.workbench.db import connect

__all__ = ["FILE_NAME", "IncidentStore", "StoreError", "open_incidents"]

FILE_NAME = "workbench.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    origin TEXT NOT NULL,            -- fault | reported
    device_kind TEXT,                -- node | group | intersection | controller; NULL: unmatched
    device_id TEXT,
    fault_kind TEXT,                 -- NULL: a report no fault explains (yet)
    hint TEXT,                       -- report kind of the first report
    severity TEXT NOT NULL,          -- critical | major | minor
    state TEXT NOT NULL,             -- open | acknowledged | cleared | resolved
    detail TEXT NOT NULL,
    opened_at TEXT NOT NULL,         -- ISO 8601, UTC
    lat REAL,
    lon REAL,
    acked_at TEXT,
    acked_by TEXT,
    closed_at TEXT,
    closed_by TEXT,
    resolution TEXT,
    fault_active INTEGER NOT NULL,   -- the device reports the fault now
    fault_cleared_at TEXT,
    reopened INTEGER NOT NULL,
    reports INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_state ON incidents(state);
CREATE INDEX IF NOT EXISTS incidents_device ON incidents(device_kind, device_id);
CREATE TABLE IF NOT EXISTS incident_events (
    seq INTEGER PRIMARY KEY,
    incident_id TEXT NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,              -- opened | reported | linked | acked | cleared | resolved
                                     -- | reopened | fault_cleared
    who TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_events_incident ON incident_events(incident_id, seq);
"""

_COLUMNS = (
    "id",
    "origin",
    "device_kind",
    "device_id",
    "fault_kind",
    "hint",
    "severity",
    "state",
    "detail",
    "opened_at",
    "lat",
    "lon",
    "acked_at",
    "acked_by",
    "closed_at",
    "closed_by",
    "resolution",
    "fault_active",
    "fault_cleared_at",
    "reopened",
    "reports",
)

_UPSERT = (
    f"INSERT INTO incidents({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
    " ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "id")
)


class StoreError(IncidentError):
    """The incidents could not be written (disk full, file locked…); nothing was changed."""


def _ts(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.UTC).isoformat()


def _dt(s: str | None) -> dt.datetime | None:
    return None if s is None else dt.datetime.fromisoformat(s)


def _row(inc: Incident) -> tuple[Any, ...]:
    lat, lon = inc.location if inc.location else (None, None)
    return (
        inc.id,
        inc.origin,
        inc.device_kind,
        inc.device_id,
        inc.fault_kind,
        inc.hint,
        inc.severity.value,
        inc.state.value,
        inc.detail,
        _ts(inc.opened_at),
        lat,
        lon,
        _ts(inc.acked_at),
        inc.acked_by,
        _ts(inc.closed_at),
        inc.closed_by,
        inc.resolution,
        int(inc.fault_active),
        _ts(inc.fault_cleared_at),
        inc.reopened,
        inc.reports,
    )


def _incident(r: sqlite3.Row | tuple[Any, ...]) -> Incident:
    v = dict(zip(_COLUMNS, r, strict=True))
    opened = _dt(v["opened_at"])
    assert opened is not None
    return Incident(
        id=v["id"],
        origin=v["origin"],
        device_kind=v["device_kind"],
        device_id=v["device_id"],
        fault_kind=v["fault_kind"],
        hint=v["hint"],
        severity=Severity(v["severity"]),
        state=State(v["state"]),
        detail=v["detail"],
        opened_at=opened,
        location=(v["lat"], v["lon"]) if v["lat"] is not None and v["lon"] is not None else None,
        acked_at=_dt(v["acked_at"]),
        acked_by=v["acked_by"],
        closed_at=_dt(v["closed_at"]),
        closed_by=v["closed_by"],
        resolution=v["resolution"],
        fault_active=bool(v["fault_active"]),
        fault_cleared_at=_dt(v["fault_cleared_at"]),
        reopened=v["reopened"],
        reports=v["reports"],
    )


class IncidentStore:
    """The incidents' tables in the workbench file (a path, or ``":memory:"`` in tests)."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._db = connect(path)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def save(self, incidents: Sequence[Incident], events: Sequence[IncidentEvent]) -> None:
        """Upsert the incidents and append the events, in one transaction."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(_UPSERT, [_row(i) for i in incidents])
                    self._db.executemany(
                        "INSERT INTO incident_events(seq, incident_id, at, kind, who, note)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (e.seq, e.incident_id, _ts(e.at), e.kind.value, e.who, e.note)
                            for e in events
                        ],
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"incidents not saved to {self.path}: {exc}") from exc

    def load(self) -> tuple[list[Incident], list[IncidentEvent]]:
        """Every incident and every event."""
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM incidents").fetchall()
            evs = self._db.execute(
                "SELECT seq, incident_id, at, kind, who, note FROM incident_events ORDER BY seq"
            ).fetchall()
        events = []
        for seq, iid, at, kind, who, note in evs:
            when = _dt(at)
            assert when is not None
            events.append(IncidentEvent(seq, iid, when, EventKind(kind), who, note))
        return [_incident(r) for r in rows], events

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()


def open_incidents(
    state_dir: Path,
    directory: Directory,
    *,
    now: Callable[[], dt.datetime],
    settings: IncidentSettings | None = None,
) -> tuple[IncidentEngine, IncidentStore]:
    """The engine with every incident of ``<state_dir>/workbench.sqlite``, writing back to it.

    Call :meth:`IncidentEngine.sync` with the current alarms from then on: faults that were
    active before the restart are reconciled with what the devices say now.
    """
    store = IncidentStore(Path(state_dir) / FILE_NAME)
    incidents, events = store.load()
    engine = IncidentEngine(
        directory,
        now=now,
        journal=store,
        settings=settings,
        incidents=incidents,
        events=events,
    )
    return engine, store
