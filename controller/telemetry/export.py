"""``cityctl telemetry export``: the outbox's points as line protocol or CSV.

Without a database the outbox *is* the store (kept ``max_age_h``); with one it still keeps
acknowledged points for ``keep_sent_h``. Export reads the file read-only, so it works while the
controller runs.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from controller.telemetry.lineproto import Point, parse
from controller.telemetry.outbox import iter_lines, open_readonly

__all__ = ["ExportError", "export", "parse_when"]

_REL = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86_400, "w": 604_800}


class ExportError(ValueError):
    """A bad argument of the export (names the option)."""


def parse_when(text: str, *, now: dt.datetime, tz: dt.tzinfo) -> int:
    """``--since``/``--until`` → ms since the epoch.

    Accepts a duration back from now (``90m``, ``6h``, ``7d``), ``now``, or an ISO 8601 date or
    time; one without an offset is local time of the site (``tz``).
    """
    t = text.strip()
    if t == "now":
        return int(now.timestamp() * 1000)
    m = _REL.match(t)
    if m:
        return int((now.timestamp() - float(m.group(1)) * _UNIT_S[m.group(2)]) * 1000)
    try:
        when = dt.datetime.fromisoformat(t)
    except ValueError:
        raise ExportError(
            f"{text!r} is neither a duration (90m, 6h, 7d) nor an ISO date/time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return int(when.timestamp() * 1000)


def _points(
    path: Path, since_ms: int, until_ms: int | None, measurements: set[str] | None
) -> Iterator[tuple[str, Point | None]]:
    db = open_readonly(path)
    try:
        for _, line in iter_lines(db, since_ms, until_ms):
            if measurements is None:
                yield line, None
                continue
            p = parse(line)
            if p.measurement in measurements:
                yield line, p
    finally:
        db.close()


def export(
    path: Path,
    out: TextIO,
    *,
    fmt: str,
    since_ms: int,
    until_ms: int | None = None,
    measurements: Iterable[str] | None = None,
) -> int:
    """Write the points of ``[since, until)`` to ``out``; returns how many.

    ``lp``: the lines as stored (ready for ``influx write`` or any v2 write endpoint).
    ``csv``: one row per point, columns ``time`` (UTC, ISO 8601, ms), ``measurement``, then every
    tag and field that occurs, sorted; a point leaves the columns it lacks empty.
    """
    wanted = set(measurements) if measurements else None
    if fmt == "lp":
        n = 0
        for line, _ in _points(path, since_ms, until_ms, wanted):
            out.write(line + "\n")
            n += 1
        return n
    if fmt != "csv":
        raise ExportError(f"--format: {fmt!r} is not lp or csv")
    # Two passes: the columns first (streaming, so a month of data does not sit in memory).
    tags: set[str] = set()
    fields: set[str] = set()
    for line, p in _points(path, since_ms, until_ms, wanted):
        p = p or parse(line)
        tags.update(k for k, _ in p.tags)
        fields.update(k for k, _ in p.fields)
    tag_cols, field_cols = sorted(tags), sorted(fields - tags)
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["time", "measurement", *tag_cols, *field_cols])
    n = 0
    for line, p in _points(path, since_ms, until_ms, wanted):
        p = p or parse(line)
        t = dict(p.tags)
        f = dict(p.fields)
        when = dt.datetime.fromtimestamp(p.ts_ms / 1000, dt.UTC)
        w.writerow(
            [
                when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                p.measurement,
                *(t.get(k, "") for k in tag_cols),
                *(_csv_value(f.get(k)) for k in field_cols),
            ]
        )
        n += 1
    return n


def _csv_value(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
