"""The Modbus TCP link to one signal cabinet.

Everything outside ``devices/`` talks to a cabinet through :class:`CabinetLink` only; the
Modbus client stays behind it. That client is :class:`devices.mbap.MbapClient`, a lean
Modbus TCP client of our own: at a hundred intersections polled ten times a second, pymodbus'
client layer cost more CPU than everything else of a signal step (``docs/benchmarks.md``,
*Scale*). pymodbus remains the server of the simulated cabinets, so every integration test
runs our client against it. The register map and its codec are in :mod:`devices.cabinet`.

The link owns the connection state, the way a coordinator does: every client failure
(refused, timed out, closed, an exception response) becomes one :class:`CabinetError`, and
consecutive failures are counted. After ``down_after`` of them the cabinet is DOWN: ``on_down``
fires and further calls fail at once, without network traffic, until the next retry is due;
retries back off exponentially from ``backoff_min_s`` to ``backoff_max_s``. The first success
marks it UP again and fires ``on_up``, where the owner resynchronises (re-reads everything and
restarts its engine from all red: recompute, don't replay). A link starts DOWN, so ``on_up``
also fires on the first contact.

A value the register map does not allow is a :class:`~devices.cabinet.RegisterError` from
:meth:`CabinetLink.read_status`; that is bad data from a cabinet that answers, so it is counted
(``stats.decode_errors``) but is not a link failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from devices.cabinet import (
    HR,
    IR,
    CabinetStatus,
    OutputFrame,
    RegisterError,
    decode_status,
    encode_outputs,
    parse_output_frame,
    status_spans,
)
from devices.mbap import MbapClient, ModbusError

__all__ = [
    "CabinetError",
    "CabinetLink",
    "CabinetLinkStats",
    "LinkCallback",
    "StatusHandler",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

LinkCallback = Callable[[], Awaitable[None] | None]
"""``on_up()`` / ``on_down()``; may be a coroutine function (run as a task)."""

StatusHandler = Callable[[CabinetStatus], Awaitable[None] | None]
"""``handler(status)`` for :meth:`CabinetLink.run`; may be a coroutine function."""


class CabinetError(ConnectionError):
    """The cabinet could not be reached or refused the request (any transport failure)."""


@dataclass
class CabinetLinkStats:
    """Counters for operations; nothing dropped goes uncounted."""

    reads: int = 0
    writes: int = 0
    failures: int = 0  # requests that failed (each is a CabinetError)
    skipped: int = 0  # calls refused without traffic while DOWN and waiting for the backoff
    connects: int = 0
    ups: int = 0
    downs: int = 0
    decode_errors: int = 0
    handler_errors: int = 0


class CabinetLink:
    """Polls and commands one cabinet; survives cut cables and cabinet restarts.

    Use::

        link = CabinetLink("10.0.3.21", 502, 1, n_groups=8, n_channels=16, on_up=resync)
        status = await link.read_status()
        await link.write_outputs(codes, heartbeat)
        ...
        await link.close()
    """

    def __init__(
        self,
        host: str,
        port: int = 502,
        device_id: int = 1,
        n_groups: int = 0,
        n_channels: int = 0,
        *,
        timeout_s: float = 0.5,
        poll_s: float = 0.1,
        backoff_min_s: float = 0.2,
        backoff_max_s: float = 5.0,
        down_after: int = 3,
        occupancy_every: int = 10,
        on_up: LinkCallback | None = None,
        on_down: LinkCallback | None = None,
        name: str = "",
    ) -> None:
        if not 1 <= n_groups <= HR.END - HR.OUTPUTS:
            raise ValueError(f"n_groups {n_groups} must be 1..{HR.END - HR.OUTPUTS}")
        if not 0 <= n_channels <= IR.END - IR.DET_OCCUPANCY:
            raise ValueError(f"n_channels {n_channels} must be 0..{IR.END - IR.DET_OCCUPANCY}")
        if timeout_s <= 0 or poll_s <= 0 or backoff_min_s <= 0 or backoff_max_s < backoff_min_s:
            raise ValueError("timeouts, poll and backoff must be positive (min ≤ max)")
        if down_after < 1:
            raise ValueError("down_after must be at least 1")
        if occupancy_every < 1:
            raise ValueError("occupancy_every must be at least 1")
        self.host = host
        self.port = port
        self.device_id = device_id
        self.n_groups = n_groups
        self.n_channels = n_channels
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.down_after = down_after
        #: Read the (cumulative) occupancy registers with every this-many-th status read.
        self.occupancy_every = occupancy_every
        self.on_up = on_up
        self.on_down = on_down
        self.name = name or f"cabinet {host}:{port}/{device_id}"
        self.stats = CabinetLinkStats()
        self._client: MbapClient | None = None
        self._lock = asyncio.Lock()
        self._up = False
        self._up_event = asyncio.Event()
        self._failures = 0
        self._delay = backoff_min_s
        self._next_try = 0.0
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._logged_registers: set[tuple[str, int]] = set()

    # -- state ----------------------------------------------------------------------------
    @property
    def up(self) -> bool:
        """True from the first successful request until ``down_after`` failures in a row."""
        return self._up

    @property
    def consecutive_failures(self) -> int:
        """Failed requests since the last success."""
        return self._failures

    @property
    def backing_off(self) -> bool:
        """True while DOWN: calls fail at once until :attr:`next_retry_in` runs out."""
        return self._failures >= self.down_after

    @property
    def next_retry_in(self) -> float:
        """Seconds until the next attempt is allowed (0 when it may go now)."""
        if not self.backing_off:
            return 0.0
        return max(0.0, self._next_try - asyncio.get_running_loop().time())

    async def wait_up(self, timeout: float | None = None) -> bool:
        """Wait until the link is UP; False on timeout."""
        try:
            await asyncio.wait_for(self._up_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- requests -------------------------------------------------------------------------
    async def read_status(self) -> CabinetStatus:
        """Read and validate the cabinet's status (one request, or two).

        The occupancy registers come with every :attr:`occupancy_every`-th read only (the
        first included); in between every reading's ``occupancy`` is None. They are
        cumulative, so nothing is lost, and a poll costs one request instead of two.

        Raises :class:`CabinetError` on a transport failure, :class:`RegisterError` when a
        register holds a value the map does not allow.
        """
        occupancy = self.stats.reads % self.occupancy_every == 0
        spans = status_spans(self.n_channels, occupancy=occupancy)

        async def read(client: MbapClient) -> list[int]:
            image = [0] * IR.END
            for address, count in spans:
                image[address : address + count] = await client.read_input_registers(
                    address, count, unit=self.device_id, timeout_s=self.timeout_s
                )
            return image

        image = await self._transact(read)
        self.stats.reads += 1
        try:
            # Unpacked from the frames as 16-bit values (struct), so not checked again.
            return decode_status(
                image, self.n_groups, self.n_channels, occupancy=occupancy, unpacked=True
            )
        except RegisterError as exc:
            self.stats.decode_errors += 1
            key = (exc.table, exc.register)
            if key not in self._logged_registers:
                self._logged_registers.add(key)
                log.warning("%s: bad register: %s", self.name, exc)
            else:
                log.debug("%s: bad register: %s", self.name, exc)
            raise

    async def write_outputs(self, signals: Sequence[int], heartbeat: int, command: int = 0) -> None:
        """Write one complete set of outputs with its heartbeat, command and commit.

        A single write of HR 0 .. HR 16+n-1, so the cabinet applies it atomically. Bad codes,
        heartbeat or command raise :class:`RegisterError` before anything is sent.
        """
        if len(signals) != self.n_groups:
            raise RegisterError(
                HR.OUTPUTS,
                len(signals),
                f"{self.n_groups} outputs expected, got {len(signals)}",
                table="HR",
            )
        values = encode_outputs(signals, heartbeat, command)

        async def write(client: MbapClient) -> None:
            await client.write_registers(
                HR.HEARTBEAT, values, unit=self.device_id, timeout_s=self.timeout_s
            )

        await self._transact(write)
        self.stats.writes += 1

    async def read_outputs(self) -> OutputFrame:
        """Read back the holding registers (what the cabinet holds as commanded)."""

        async def read(client: MbapClient) -> list[int]:
            count = HR.OUTPUTS + self.n_groups
            return await client.read_holding_registers(
                0, count, unit=self.device_id, timeout_s=self.timeout_s
            )

        holding = await self._transact(read)
        return parse_output_frame(holding, self.n_groups)

    async def run(self, on_status: StatusHandler) -> None:
        """Poll every ``poll_s`` and hand each good status to ``on_status`` until closed.

        Failures are counted and the loop goes on; while DOWN it waits for the backoff.
        """
        loop = asyncio.get_running_loop()
        while not self._closed:
            started = loop.time()
            try:
                status = await self.read_status()
            except (CabinetError, RegisterError):
                pass  # counted (and logged) where it happened
            else:
                try:
                    result = on_status(status)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self.stats.handler_errors += 1
                    log.exception("%s: status handler failed", self.name)
            delay = max(0.0, self.poll_s - (loop.time() - started))
            delay = max(delay, self.next_retry_in)
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Close the connection for good; later calls raise :class:`CabinetError`."""
        self._closed = True
        async with self._lock:
            self._drop_client()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> CabinetLink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals ------------------------------------------------------------------------
    async def _transact(self, operation: Callable[[MbapClient], Awaitable[T]]) -> T:
        async with self._lock:
            if self._closed:
                raise CabinetError(f"{self.name}: link closed")
            loop = asyncio.get_running_loop()
            if self.backing_off and loop.time() < self._next_try:
                self.stats.skipped += 1
                raise CabinetError(
                    f"{self.name}: down, next retry in {self._next_try - loop.time():.1f} s"
                )
            try:
                client = await self._connected_client()
                result = await operation(client)
            except CabinetError as exc:
                self._failed(exc)
                raise
            except (ModbusError, OSError, TimeoutError) as exc:  # every socket / protocol failure
                error = CabinetError(f"{self.name}: {type(exc).__name__}: {exc}")
                self._failed(error)
                raise error from exc
            self._succeeded()
            return result

    async def _connected_client(self) -> MbapClient:
        client = self._client
        if client is not None and client.connected:
            return client
        self._drop_client()
        # No retries and no reconnecting inside the client: the link decides both.
        client = await MbapClient.connect(self.host, self.port, timeout_s=self.timeout_s)
        self._client = client
        self.stats.connects += 1
        return client

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _succeeded(self) -> None:
        self._failures = 0
        self._delay = self.backoff_min_s
        if not self._up:
            self._up = True
            self._up_event.set()
            self.stats.ups += 1
            log.info("%s: up", self.name)
            self._fire(self.on_up, "on_up")

    def _failed(self, exc: CabinetError) -> None:
        # A fresh connection after any failure: a late answer to a timed-out request must not
        # be taken for the answer to the next one.
        self._drop_client()
        self._failures += 1
        self.stats.failures += 1
        if self._failures < self.down_after:
            log.debug("%s: failure %d: %s", self.name, self._failures, exc)
            return
        now = asyncio.get_running_loop().time()
        self._next_try = now + self._delay
        self._delay = min(self._delay * 2, self.backoff_max_s)
        if self._up:
            self._up = False
            self._up_event.clear()
            self.stats.downs += 1
            log.warning("%s: down after %d failures: %s", self.name, self._failures, exc)
            self._fire(self.on_down, "on_down")

    def _fire(self, callback: LinkCallback | None, what: str) -> None:
        if callback is None:
            return

        async def call() -> None:
            try:
                result: Any = callback()
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.handler_errors += 1
                log.exception("%s: %s failed", self.name, what)

        task = asyncio.get_running_loop().create_task(call(), name=f"{self.name} {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
