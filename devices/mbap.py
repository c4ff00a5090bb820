"""A lean Modbus TCP client: the three function codes a cabinet link needs, over asyncio.

:class:`~devices.modbus.CabinetLink` polls every cabinet ten times a second, and at a hundred
intersections the client's own cost per request decides whether one core is enough. pymodbus'
client builds request and response objects, a framer and a transaction manager per request;
this one packs and unpacks the MBAP frame with
:mod:`struct` straight from an :class:`asyncio.Protocol` (see ``docs/benchmarks.md``, *Scale*).
It speaks standard Modbus TCP (MODBUS Application Protocol Specification V1.1b3 and the
Messaging on TCP/IP Implementation Guide V1.0b): read holding registers (3), read input
registers (4), write multiple registers (16). pymodbus stays the server of the simulated
cabinets, and the integration tests run this client against it.

The link sends one request at a time per connection (many field devices, and pymodbus'
server, do not take pipelined requests: pymodbus closes the connection). Each answer is still
matched to its request by the transaction id. A frame that is not Modbus TCP (wrong protocol
id, a length out of range, an answer to no request, a function code or byte count that does
not match the request) is a :class:`ModbusError`, and the connection is closed: after that
nothing it sends can be trusted to belong to a request.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Sequence

__all__ = ["MbapClient", "ModbusError", "ModbusExceptionResponse"]

_HEADER = struct.Struct(">HHHB")  # transaction id, protocol id (0), length, unit id
_READ = struct.Struct(">HHHBBHH")  # MBAP + function code, address, count
_WRITE_HEAD = struct.Struct(">HHHBBHHB")  # MBAP + function code, address, count, byte count
_MAX_READ = 125  # registers per read (the spec's limit)
_MAX_WRITE = 123  # registers per write
_MAX_ADU = 260

_EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusError(ConnectionError):
    """The connection failed, closed, or carried something that is not a valid answer."""


class ModbusExceptionResponse(ModbusError):
    """The server answered with a Modbus exception (function code + 0x80)."""

    def __init__(self, function: int, code: int) -> None:
        self.function = function
        self.code = code
        reason = _EXCEPTIONS.get(code, "unknown exception")
        super().__init__(f"exception response to function {function}: {code} ({reason})")


class _Pending:
    __slots__ = ("count", "deadline", "function", "future")

    def __init__(
        self,
        function: int,
        count: int,
        future: asyncio.Future[list[int] | None],
        deadline: float,
    ) -> None:
        self.function = function
        self.count = count
        self.future = future
        self.deadline = deadline  # loop time; inf: the caller times it


class _Protocol(asyncio.Protocol):
    def __init__(self, client: MbapClient) -> None:
        self.client = client
        self.buffer = bytearray()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(exc)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 7:
            tid, proto, length, _unit = _HEADER.unpack_from(buf)
            if proto != 0 or not 2 <= length <= _MAX_ADU - 6:
                self.client._abort(
                    ModbusError(f"not a Modbus TCP frame (protocol {proto}, length {length})")
                )
                return
            end = 6 + length
            if len(buf) < end:
                return
            pdu = bytes(buf[7:end])
            del buf[:end]
            self.client._answer(tid, pdu)


class MbapClient:
    """One Modbus TCP connection; see the module docstring.

    Use::

        client = await MbapClient.connect("10.0.3.21", 502, timeout_s=0.5)
        regs = await client.read_input_registers(0, 64, unit=1)
        await client.write_registers(0, [1, 2, 3], unit=1)
        client.close()

    A request given ``timeout_s`` raises :class:`TimeoutError` when no answer came within
    it; without, the caller times it (``asyncio.timeout``). Either way a late answer is then
    an answer to no request and closes the connection, so it is never taken for the next
    request's. The client times its requests with one timer per connection, armed when a
    request goes out and none is armed, re-armed for the oldest request still waiting when it
    fires: a timer per request (``asyncio.timeout``) cost a fifth of the client's CPU per
    request, and most answers come within a millisecond.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, _Pending] = {}
        self._tid = 0
        self._error: ModbusError | None = None
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout_s: float) -> MbapClient:
        """Open a connection (``ModbusError`` when it cannot be made within ``timeout_s``)."""
        client = cls()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                transport, _ = await loop.create_connection(lambda: _Protocol(client), host, port)
        except (OSError, TimeoutError) as exc:
            raise ModbusError(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from exc
        # No isinstance check: uvloop's stream transport is not an asyncio.Transport subclass,
        # though it has the same methods.
        client._transport = transport
        return client

    @property
    def connected(self) -> bool:
        """True until the connection closed or failed."""
        return self._transport is not None and self._error is None

    @property
    def outstanding(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    def close(self) -> None:
        """Close the connection; outstanding requests fail with :class:`ModbusError`."""
        self._abort(ModbusError("connection closed"))

    async def read_input_registers(
        self, address: int, count: int, *, unit: int, timeout_s: float | None = None
    ) -> list[int]:
        """Function 4: ``count`` input registers from ``address``."""
        return await self._read(4, address, count, unit, timeout_s)

    async def read_holding_registers(
        self, address: int, count: int, *, unit: int, timeout_s: float | None = None
    ) -> list[int]:
        """Function 3: ``count`` holding registers from ``address``."""
        return await self._read(3, address, count, unit, timeout_s)

    async def write_registers(
        self, address: int, values: Sequence[int], *, unit: int, timeout_s: float | None = None
    ) -> None:
        """Function 16: write ``values`` (each 0..65535) from ``address`` in one request."""
        n = len(values)
        if not 1 <= n <= _MAX_WRITE:
            raise ValueError(f"values: {n} registers; one write takes 1..{_MAX_WRITE}")
        _check_address(address, n)
        tid = self._next_tid()
        head = _WRITE_HEAD.pack(tid, 0, 7 + 2 * n, unit, 16, address, n, 2 * n)
        try:
            body = struct.pack(f">{n}H", *values)
        except struct.error:
            raise ValueError("values: every register holds 0..65535") from None
        await self._send(tid, 16, n, head + body, timeout_s)

    # -- internals --------------------------------------------------------------------------
    async def _read(
        self, function: int, address: int, count: int, unit: int, timeout_s: float | None
    ) -> list[int]:
        if not 1 <= count <= _MAX_READ:
            raise ValueError(f"count: {count}; one read takes 1..{_MAX_READ} registers")
        _check_address(address, count)
        tid = self._next_tid()
        result = await self._send(
            tid, function, count, _READ.pack(tid, 0, 6, unit, function, address, count), timeout_s
        )
        assert result is not None
        return result

    def _next_tid(self) -> int:
        self._tid = (self._tid + 1) & 0xFFFF
        return self._tid

    async def _send(
        self, tid: int, function: int, count: int, frame: bytes, timeout_s: float | None
    ) -> list[int] | None:
        transport = self._transport
        if transport is None or self._error is not None:
            raise self._error or ModbusError("not connected")
        if tid in self._pending:
            raise ModbusError("65,536 requests outstanding")  # never in practice
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s: {timeout_s!r}; must be a positive number of seconds")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int] | None] = loop.create_future()
        deadline = math.inf if timeout_s is None else loop.time() + timeout_s
        self._pending[tid] = _Pending(function, count, future, deadline)
        if self._timer is None and timeout_s is not None:
            self._timer = loop.call_at(deadline, self._expire)
        transport.write(frame)
        try:
            return await future
        finally:
            self._pending.pop(tid, None)

    def _expire(self) -> None:
        """The connection's timer: fail what waited past its deadline; re-arm for the rest."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        nearest = math.inf
        for tid, p in list(self._pending.items()):
            if p.deadline <= now:
                del self._pending[tid]
                if not p.future.done():
                    p.future.set_exception(TimeoutError(f"no answer to function {p.function}"))
            elif p.deadline < nearest:
                nearest = p.deadline
        if nearest < math.inf:
            self._timer = loop.call_at(nearest, self._expire)

    def _answer(self, tid: int, pdu: bytes) -> None:
        pending = self._pending.pop(tid, None)
        if pending is None:
            self._abort(ModbusError(f"an answer (transaction {tid}) to no request"))
            return
        fut = pending.future
        if fut.done():  # cancelled (its caller timed out); the answer is dropped with it
            return
        try:
            fut.set_result(self._parse(pending, pdu))
        except ModbusExceptionResponse as exc:
            fut.set_exception(exc)  # a valid frame: the connection stays
        except ModbusError as exc:
            fut.set_exception(exc)
            self._abort(exc)

    @staticmethod
    def _parse(pending: _Pending, pdu: bytes) -> list[int] | None:
        """The answer's registers (None for a write); raises when it does not answer."""
        function = pdu[0]
        if function == pending.function | 0x80 and len(pdu) == 2:
            raise ModbusExceptionResponse(pending.function, pdu[1])
        if function != pending.function:
            raise ModbusError(f"function {function} answers a request of {pending.function}")
        if function == 16:
            if len(pdu) != 5:
                raise ModbusError(f"write answer of {len(pdu)} bytes, expected 5")
            return None
        n = pending.count
        if len(pdu) != 2 + 2 * n or pdu[1] != 2 * n:
            raise ModbusError(f"read answer with {len(pdu) - 2} data bytes, expected {2 * n}")
        return list(struct.unpack_from(f">{n}H", pdu, 2))

    def _abort(self, exc: ModbusError) -> None:
        if self._error is None:
            self._error = exc
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(self._error)
        self._pending.clear()

    def _lost(self, exc: Exception | None) -> None:
        self._abort(
            ModbusError(f"connection lost: {exc}" if exc else "connection closed by the server")
        )


def _check_address(address: int, count: int) -> None:
    if not 0 <= address <= 0xFFFF or address + count > 0x10000:
        raise ValueError(f"address: {address} + {count} registers is outside 0..65535")
