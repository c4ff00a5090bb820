"""Small asyncio helpers for the controller's shells."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["cancel_and_wait", "run_on_loop"]

T = TypeVar("T")

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


def run_on_loop(loop: asyncio.AbstractEventLoop | None, fn: Callable[[], T]) -> T:
    """Call ``fn`` on ``loop``'s thread and return its result (or raise its exception).

    The controller's state (the lighting core, its wake-up event) belongs to its event loop;
    the HTTP API's plain handlers run in worker threads. A change they make goes through here
    so that it happens between two steps of the loop, never in the middle of one. Called on
    the loop itself, or when the loop is not running (tests, a stopped controller), ``fn`` is
    simply called. The caller must not hold anything the loop may wait for.
    """
    if loop is None or not loop.is_running() or _running_loop() is loop:
        return fn()
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def call() -> None:
        if not done.set_running_or_notify_cancel():
            return
        try:
            done.set_result(fn())
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            done.set_exception(exc)

    loop.call_soon_threadsafe(call)
    return done.result()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
