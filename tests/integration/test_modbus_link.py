"""The controller's Modbus link to a cabinet: timeouts, DOWN after repeated failures, backoff
without network traffic, UP (and resynchronisation) on the first success, bad registers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from devices.cabinet import IR, RegisterError
from devices.modbus import CabinetError, CabinetLink
from simulator.cabinet import CabinetSpec, GroupSpec, SimulatedCabinet
from tests.helpers import free_port, wait_for

SPEC = CabinetSpec(
    groups=[GroupSpec("A"), GroupSpec("B")],
    conflicts=[("A", "B")],
    n_channels=4,
    channels=[0, 1],
    local_plan=[({0}, 10.0), ({1}, 10.0)],
)


async def test_down_after_repeated_failures_backs_off_and_comes_back_up() -> None:
    port = free_port()
    events: list[str] = []
    link = CabinetLink(
        "127.0.0.1",
        port,
        1,
        n_groups=2,
        n_channels=4,
        timeout_s=0.3,
        backoff_min_s=0.2,
        backoff_max_s=1.0,
        down_after=3,
        on_up=lambda: events.append("up"),
        on_down=lambda: events.append("down"),
    )
    try:
        # nobody listens: three refused connects make it DOWN ...
        for _ in range(3):
            with pytest.raises(CabinetError):
                await link.read_status()
        assert not link.up and link.backing_off and link.stats.failures == 3
        # ... and then calls fail at once, without traffic, until the backoff has run out
        started = time.monotonic()
        with pytest.raises(CabinetError, match="down, next retry in"):
            await link.read_status()
        assert time.monotonic() - started < 0.05 and link.stats.skipped == 1
        # the cabinet comes: the first success after the backoff marks it UP and fires on_up
        cab = SimulatedCabinet(SPEC, "127.0.0.1", port)
        await cab.start()
        try:
            status = await wait_for(_read_when_allowed(link), 5)
            assert status.n_groups == 2 and status.n_channels == 4
            assert link.up and link.consecutive_failures == 0
            await wait_for(lambda: events == ["up"], 2)
            # it stops answering (a cut cable): timeouts, DOWN, on_down
            cab.inject_link_down(5.0, mode="silent")
            for _ in range(3):
                with pytest.raises(CabinetError):
                    await link.read_status()
            assert not link.up
            await wait_for(lambda: events == ["up", "down"], 2)
            # and back
            cab.restore_link()
            await wait_for(_read_when_allowed(link), 5)
            await wait_for(lambda: events == ["up", "down", "up"], 2)
            assert link.stats.ups == 2 and link.stats.downs == 1
        finally:
            await cab.stop()
    finally:
        await link.close()
    with pytest.raises(CabinetError, match="closed"):
        await link.read_status()


def _read_when_allowed(link: CabinetLink) -> Callable[[], Awaitable[object]]:
    async def attempt() -> object:
        if link.next_retry_in > 0:
            return None
        try:
            return await link.read_status()
        except CabinetError:
            return None

    return attempt


async def test_a_bad_register_is_a_decode_error_not_a_link_failure() -> None:
    cab = SimulatedCabinet(SPEC, "127.0.0.1", 0)
    await cab.start()
    link = CabinetLink("127.0.0.1", cab.port, 1, n_groups=2, n_channels=4, down_after=2)
    try:
        await link.read_status()
        cab.inject_garbage(IR.STATUS, 99)
        for _ in range(4):
            with pytest.raises(
                RegisterError, match=r"IR 3 \(status\) = 99: unknown cabinet status"
            ):
                await link.read_status()
        assert link.up and link.stats.decode_errors == 4 and link.stats.failures == 0
        cab.clear_injections()
        assert (await link.read_status()).n_groups == 2
        # a cabinet with other groups than the config is refused with the reason
        other = CabinetLink("127.0.0.1", cab.port, 1, n_groups=3, n_channels=4)
        with pytest.raises(RegisterError, match="cabinet has 2 groups, expected 3"):
            await other.read_status()
        await other.close()
        # writes are checked before anything is sent
        with pytest.raises(RegisterError, match="unknown signal code"):
            await link.write_outputs([1, 9], 5)
        with pytest.raises(RegisterError, match="2 outputs expected, got 3"):
            await link.write_outputs([1, 1, 1], 5)
        await asyncio.sleep(0)
    finally:
        await link.close()
        await cab.stop()


async def test_occupancy_is_read_with_every_nth_poll_and_nothing_is_lost() -> None:
    """One request per poll, two with every ``occupancy_every``-th: the occupancy registers
    are cumulative, so what a skipped poll did not read the next full one has."""
    async with SimulatedCabinet(SPEC, "127.0.0.1", 0) as cab:
        cab.inject_stuck_detector(0)  # presence on: occupancy grows 1 s per second
        link = CabinetLink("127.0.0.1", cab.port, 1, n_groups=2, n_channels=4, occupancy_every=3)
        try:
            reads_before = cab.stats.reads
            seen: list[int | None] = []
            for _ in range(7):
                status = await link.read_status()
                seen.append(status.detectors[0].occupancy)
                await asyncio.sleep(0.1)
            assert [v is not None for v in seen] == [True, False, False, True, False, False, True]
            assert cab.stats.reads - reads_before == 7 + 3  # one request each, a second for 3
            first, last = seen[0], seen[6]
            assert first is not None and last is not None
            assert 0.4 <= (last - first) / 10 <= 1.5  # ~0.6 s of presence, all of it counted
            with pytest.raises(ValueError, match="occupancy_every must be at least 1"):
                CabinetLink("127.0.0.1", cab.port, 1, n_groups=2, occupancy_every=0)
        finally:
            await link.close()


def test_the_link_and_the_simulated_cabinet_on_uvloop() -> None:
    """``cityctl run`` and ``cityctl sim cabinets`` run on uvloop by default (controller/cli.py):
    the link's own Modbus client and pymodbus' server, reads and writes, on that loop."""
    import uvloop

    async def scenario() -> tuple[str, int, int, int]:
        async with SimulatedCabinet(SPEC, "127.0.0.1", 0) as cab:
            link = CabinetLink("127.0.0.1", cab.port, 1, n_groups=2, n_channels=4)
            try:
                status = await link.read_status()
                await link.write_outputs(tuple(int(c) for c in status.displayed), 1)
                await link.read_status()
                return (
                    type(asyncio.get_running_loop()).__module__,
                    cab.stats.reads,
                    cab.stats.commits,
                    link.stats.reads,
                )
            finally:
                await link.close()

    loop_module, cabinet_reads, commits, link_reads = uvloop.run(scenario())
    assert loop_module.startswith("uvloop")
    assert link_reads == 2 and cabinet_reads >= 2 and commits == 1
