"""InfluxDB line protocol: the one text format the outbox stores and the database receives.

Points are kept as line-protocol *strings* from the moment they are recorded: the outbox stores
them, the sender joins them, the database parses them. Building ``Point`` objects of the client
library on the hot path costs about three times as much (``docs/benchmarks.md``).

Timestamps are integer **milliseconds** since the epoch (write precision ``ms``): fine enough for
high-resolution signal event logs (the Indiana hi-res format logs at 100 ms), and the finest
resolution VictoriaMetrics keeps, so a point means the same in every supported database.

Fields are numbers and booleans only. InfluxDB would take strings too, but VictoriaMetrics stores
a string field as 0, and text in a time series (a fault message, a reason) belongs in a tag with
few values or in the log — see ``docs/telemetry.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "FieldValue",
    "LineError",
    "Point",
    "encode",
    "parse",
    "series_key",
]

FieldValue = float | int | bool
"""What a field may hold: integers are written with the ``i`` suffix, booleans as ``true``/``false``."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")
# Tag values: anything printable except the characters line protocol cannot carry at all.
_BAD_VALUE = re.compile(r"[\n\r\t\\\"]")
_MAX_INT = 2**63 - 1


class LineError(ValueError):
    """A point that cannot be written: names the part (``measurement``, ``tag x``, ``field y``)."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Point:
    """One point: measurement, sorted tags, fields and a timestamp in ms since the epoch."""

    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, FieldValue], ...]
    ts_ms: int

    @property
    def series(self) -> str:
        """Measurement and tags: with the timestamp, what makes a point unique in the database."""
        return series_key(self.measurement, self.tags)

    def line(self) -> str:
        """This point as one line of line protocol."""
        return encode(self.measurement, dict(self.tags), dict(self.fields), self.ts_ms)


def _check_name(part: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise LineError(part, f"{name!r} is not a name (letters, digits, _ . : -; not first digit)")


def _escape_tag_value(part: str, value: str) -> str:
    if not isinstance(value, str):
        raise LineError(part, f"tag values are text, got {type(value).__name__}")
    if not value:
        raise LineError(part, "empty tag value (leave the tag out instead)")
    if _BAD_VALUE.search(value):
        raise LineError(part, "tag value contains a newline, tab, backslash or quote")
    return value.replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _field_text(part: str, value: object) -> str:
    # bool first: it is a subclass of int.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not -_MAX_INT - 1 <= value <= _MAX_INT:
            raise LineError(part, f"integer {value} does not fit in 64 bits")
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineError(part, f"{value} is not a finite number")
        return repr(value)
    raise LineError(part, f"fields are numbers or booleans, got {type(value).__name__}")


def series_key(measurement: str, tags: tuple[tuple[str, str], ...] | Mapping[str, str]) -> str:
    """``measurement,tag=value,…`` with tags sorted: the series a point belongs to."""
    items = sorted(tags.items() if isinstance(tags, Mapping) else tags)
    head = measurement
    for k, v in items:
        head += f",{k}={_escape_tag_value(f'tag {k}', v)}"
    return head


def encode(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue],
    ts_ms: int,
) -> str:
    """One line of line protocol; raises :class:`LineError` naming the bad part.

    Tags are sorted (the order InfluxDB prefers and the one that makes equal points equal
    strings); fields keep their order. At least one field is required.
    """
    _check_name("measurement", measurement)
    if not fields:
        raise LineError("fields", "a point needs at least one field")
    if isinstance(ts_ms, bool) or not isinstance(ts_ms, int) or ts_ms < 0:
        raise LineError("timestamp", f"{ts_ms!r} is not a non-negative integer of milliseconds")
    for k in tags:
        _check_name(f"tag {k}", k)
    head = series_key(measurement, tags)
    parts = []
    for k, v in fields.items():
        _check_name(f"field {k}", k)
        parts.append(f"{k}={_field_text(f'field {k}', v)}")
    return f"{head} {','.join(parts)} {ts_ms}"


def _split_unescaped(text: str, sep: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if c == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _parse_field(part: str, text: str) -> FieldValue:
    if text in ("true", "t", "T", "True", "TRUE"):
        return True
    if text in ("false", "f", "F", "False", "FALSE"):
        return False
    try:
        if text.endswith("i"):
            return int(text[:-1])
        return float(text)
    except ValueError:
        raise LineError(part, f"{text!r} is not a number or boolean") from None


def parse(line: str) -> Point:
    """Read one line written by :func:`encode` back into a :class:`Point` (export, tests)."""
    pieces = _split_unescaped(line.rstrip("\n"), " ")
    if len(pieces) != 3:
        raise LineError("line", "expected 'series fields timestamp'")
    head, fields_text, ts_text = pieces
    head_parts = _split_unescaped(head, ",")
    measurement = _unescape(head_parts[0])
    tags: list[tuple[str, str]] = []
    for t in head_parts[1:]:
        k, sep, v = t.partition("=")
        if not sep:
            raise LineError("tags", f"{t!r} has no '='")
        tags.append((_unescape(k), _unescape(v)))
    fields: list[tuple[str, FieldValue]] = []
    for f in _split_unescaped(fields_text, ","):
        k, sep, v = f.partition("=")
        if not sep:
            raise LineError("fields", f"{f!r} has no '='")
        fields.append((k, _parse_field(f"field {k}", v)))
    try:
        ts = int(ts_text)
    except ValueError:
        raise LineError("timestamp", f"{ts_text!r} is not an integer") from None
    return Point(measurement, tuple(sorted(tags)), tuple(fields), ts)
