"""``run_on_loop``: worker threads (the API's handlers) change loop-owned state on the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from controller.aio import run_on_loop


async def test_a_worker_thread_runs_the_change_on_the_loop_thread_and_gets_its_result() -> None:
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def change() -> str:
        seen.append(threading.get_ident())
        return "applied"

    result = await asyncio.to_thread(run_on_loop, loop, change)
    assert result == "applied"
    assert seen == [loop_thread]


async def test_an_exception_reaches_the_worker_thread() -> None:
    loop = asyncio.get_running_loop()

    def refuse() -> None:
        raise ValueError("group ql1a: no such program")

    with pytest.raises(ValueError, match="no such program"):
        await asyncio.to_thread(run_on_loop, loop, refuse)


async def test_on_the_loop_itself_it_is_a_plain_call() -> None:
    loop = asyncio.get_running_loop()
    assert run_on_loop(loop, lambda: threading.get_ident()) == threading.get_ident()


def test_without_a_running_loop_it_is_a_plain_call() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert run_on_loop(loop, lambda: 42) == 42
        assert run_on_loop(None, lambda: 43) == 43
    finally:
        loop.close()
