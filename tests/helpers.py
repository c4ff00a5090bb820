"""Test helpers shared by the whole suite: a real Mosquitto broker and an async ``wait_for``.

The fixtures built on these live in ``tests/conftest.py``; import the helpers directly::

    from tests.helpers import Mosquitto, wait_for

Everything here is parallel-safe (pytest-xdist): each broker gets its own free loopback port,
its own temporary directory and its own log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

# The broker launcher is product code now (``cityctl bench scale`` starts one too); the
# suite keeps importing it from here.
from controller.bench.mosquitto import (
    MOSQUITTO_CANDIDATES,
    BrokerError,
    Mosquitto,
    find_mosquitto,
    free_port,
)

__all__ = [
    "MOSQUITTO_CANDIDATES",
    "BrokerError",
    "Mosquitto",
    "find_mosquitto",
    "free_port",
    "wait_for",
]

T = TypeVar("T")


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    interval: float = ...,
    *,
    what: str | None = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    *,
    what: str | None = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    interval: float = 0.02,
    *,
    what: str | None = None,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and return that.

    On timeout raise :class:`TimeoutError` naming ``what`` (or the predicate) and the last
    value seen, so a failing test says what it was waiting for.
    """
    description = what or getattr(predicate, "__name__", None) or repr(predicate)
    if description == "<lambda>":
        with contextlib.suppress(OSError, TypeError):
            description = inspect.getsource(predicate).strip()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        last = value
        if loop.time() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:g} s waiting for {description} (last value: {last!r})"
            )
        await asyncio.sleep(interval)


# -- telemetry: the outbox against the database --------------------------------------------


@dataclass
class DbComparison:
    """Every point kept in an outbox file against what a VictoriaMetrics holds."""

    points: int
    samples_expected: int
    samples_stored: int
    missing: list[tuple[str, str, int]]
    duplicated: list[tuple[str, str, int]]
    extra: list[tuple[str, str, int]]
    wrong_values: list[tuple[str, str, int, float, float]]

    @property
    def exact(self) -> bool:
        """Every point there exactly once, with its values, and nothing else."""
        return not (self.missing or self.duplicated or self.extra or self.wrong_values)

    def summary(self) -> str:
        """One line for the test output."""
        return (
            f"{self.points} points = {self.samples_expected} samples expected,"
            f" {self.samples_stored} stored; missing {len(self.missing)},"
            f" duplicated {len(self.duplicated)}, extra {len(self.extra)},"
            f" wrong values {len(self.wrong_values)}"
        )


def compare_outbox_with_db(outbox: Path, vm: Any) -> DbComparison:
    """Read every line of ``outbox`` (sent or not) and every sample of ``vm``; compare."""
    from collections import Counter

    from controller.telemetry.lineproto import parse
    from controller.telemetry.outbox import iter_lines, open_readonly

    expected: dict[tuple[str, str, int], float] = {}
    points = 0
    db = open_readonly(outbox)
    try:
        for _, line in iter_lines(db):
            p = parse(line)
            points += 1
            labels = ",".join(f"{k}={v}" for k, v in sorted(p.tags))
            for name, value in p.fields:
                key = (f"{p.measurement}_{name}", labels, p.ts_ms)
                assert key not in expected, f"two points share series and time: {line}"
                expected[key] = float(value)
    finally:
        db.close()
    stored: Counter[tuple[str, str, int]] = Counter()
    values: dict[tuple[str, str, int], float] = {}
    for s in vm.series():
        m = dict(s["metric"])
        name = m.pop("__name__")
        labels = ",".join(f"{k}={v}" for k, v in sorted(m.items()))
        for ts, v in zip(s["timestamps"], s["values"], strict=True):
            key = (name, labels, int(ts))
            stored[key] += 1
            values[key] = float(v)
    missing = [k for k in expected if k not in stored]
    duplicated = [k for k, n in stored.items() if n > 1]
    extra = [k for k in stored if k not in expected]
    wrong = [
        (*k, expected[k], values[k])
        for k in expected
        if k in values and abs(values[k] - expected[k]) > 1e-9 * max(1.0, abs(expected[k]))
    ]
    return DbComparison(
        points=points,
        samples_expected=len(expected),
        samples_stored=sum(stored.values()),
        missing=missing[:20],
        duplicated=duplicated[:20],
        extra=extra[:20],
        wrong_values=wrong[:20],
    )
