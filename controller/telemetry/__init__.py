"""Telemetry: line protocol recorded by the loops, kept in an on-disk outbox, sent to InfluxDB.

See ``docs/telemetry.md`` for what is recorded and ``docs/operations.md`` for the outbox.
"""

from controller.telemetry.lineproto import FieldValue, LineError, Point, encode, parse, series_key
from controller.telemetry.recorder import MemoryRecorder, Recorder, RecorderStats, Telemetry

__all__ = [
    "FieldValue",
    "LineError",
    "MemoryRecorder",
    "Point",
    "Recorder",
    "RecorderStats",
    "Telemetry",
    "encode",
    "parse",
    "series_key",
]
