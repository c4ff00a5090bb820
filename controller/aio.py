"""Small asyncio helpers for the controller's shells."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]

log = logging.getLogger("cityctl")


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], *, grace_s: float = 0.5, limit_s: float = 10.0
) -> list[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait until they are done; returns those still running after
    ``limit_s`` (logged).

    One ``cancel()`` is not always enough: on Python 3.11, ``asyncio.wait_for`` (which
    pymodbus awaits every response with) swallows a cancellation that arrives in the same loop
    turn as the awaited result, and the task simply goes on. So tasks that are still running
    after ``grace_s`` are cancelled again, until they end or ``limit_s`` has passed.
    """
    loop = asyncio.get_running_loop()
    pending = {t for t in tasks if not t.done()}
    finished: set[asyncio.Task[Any]] = set()
    deadline = loop.time() + limit_s
    rounds = 0
    while pending and loop.time() < deadline:
        if rounds:
            log.debug("cancelling %d task(s) again (a cancellation was swallowed)", len(pending))
        rounds += 1
        for t in pending:
            t.cancel()
        done, pending = await asyncio.wait(pending, timeout=grace_s)
        finished |= done
    for t in finished:
        if not t.cancelled() and t.exception() is not None:
            log.debug("task %s ended with %r", t.get_name(), t.exception())
    for t in pending:
        log.error("task %s did not stop within %.0f s", t.get_name(), limit_s)
    return list(pending)
