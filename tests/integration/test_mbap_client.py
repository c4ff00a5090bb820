"""The lean Modbus TCP client (``devices/mbap.py``) over real sockets.

Against pymodbus' server (the simulated cabinet, an independent implementation of the
protocol) for what a cabinet link does, and against a scripted raw TCP server for what a
broken or hostile peer can send: every frame that is not a valid answer fails the request
with a :class:`ModbusError` and closes the connection; nothing hangs, nothing is taken for
another request's answer.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Awaitable, Callable

import pytest

from devices.cabinet import HR, IR, encode_outputs, parse_output_frame
from devices.mbap import MbapClient, ModbusError, ModbusExceptionResponse
from simulator.cabinet import CabinetSpec, GroupSpec, SimulatedCabinet

pytestmark = pytest.mark.integration

Reply = Callable[[bytes], Awaitable[bytes | None]]


def _spec() -> CabinetSpec:
    return CabinetSpec(
        groups=(GroupSpec("A"), GroupSpec("B")),
        conflicts={("A", "B")},
        n_channels=4,
        local_plan=(({0}, 10.0), ({1}, 10.0)),
    )


async def test_reads_and_writes_a_pymodbus_server() -> None:
    async with SimulatedCabinet(_spec(), "127.0.0.1", 0) as cab:
        client = await MbapClient.connect("127.0.0.1", cab.port, timeout_s=2.0)
        try:
            header = await client.read_input_registers(0, IR.DET_COUNT + 4, unit=cab.device_id)
            assert len(header) == IR.DET_COUNT + 4
            assert header[IR.N_GROUPS] == 2 and header[IR.N_CHANNELS] == 4
            frame = encode_outputs([1, 1], heartbeat=7, command=0)
            await client.write_registers(HR.HEARTBEAT, frame, unit=cab.device_id)
            held = await client.read_holding_registers(0, HR.OUTPUTS + 2, unit=cab.device_id)
            out = parse_output_frame(held, 2)
            assert (out.heartbeat, out.commit, out.outputs) == (7, 7, (1, 1))
            assert cab.core.holding_registers()[: HR.OUTPUTS + 2] == held
            # An address past the server's map: its exception response, named.
            with pytest.raises(ModbusExceptionResponse) as info:
                await client.read_input_registers(IR.END, 2, unit=cab.device_id)
            assert info.value.function == 4 and info.value.code == 2
            assert "illegal data address" in str(info.value)
            # A request after an exception response is fine: the frame was valid.
            assert len(await client.read_input_registers(0, 3, unit=cab.device_id)) == 3
            assert client.connected and client.outstanding == 0
        finally:
            client.close()
        assert not client.connected


async def test_refuses_requests_it_cannot_send() -> None:
    async with SimulatedCabinet(_spec(), "127.0.0.1", 0) as cab:
        client = await MbapClient.connect("127.0.0.1", cab.port, timeout_s=2.0)
        try:
            with pytest.raises(ValueError, match="count: 0"):
                await client.read_input_registers(0, 0, unit=1)
            with pytest.raises(ValueError, match="count: 126"):
                await client.read_holding_registers(0, 126, unit=1)
            with pytest.raises(ValueError, match="address: 65535 \\+ 2"):
                await client.read_input_registers(65535, 2, unit=1)
            with pytest.raises(ValueError, match=r"every register holds 0\.\.65535"):
                await client.write_registers(0, [1, 70000], unit=1)
            with pytest.raises(ValueError, match="values: 0 registers"):
                await client.write_registers(0, [], unit=1)
            assert client.connected  # nothing was sent
        finally:
            client.close()


async def test_cannot_connect_is_a_modbus_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ModbusError, match=f"cannot connect to 127.0.0.1:{port}"):
        await MbapClient.connect("127.0.0.1", port, timeout_s=1.0)


async def _scripted(reply: Reply) -> tuple[asyncio.Server, int]:
    """A raw TCP server that answers every request frame with ``reply(frame)``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(6)
                (length,) = struct.unpack(">H", head[4:6])
                frame = head + await reader.readexactly(length)
                answer = await reply(frame)
                if answer is None:
                    writer.close()
                    return
                for i in range(len(answer)):  # byte by byte: the client must reassemble
                    writer.write(answer[i : i + 1])
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _answer(frame: bytes, pdu: bytes, *, tid_offset: int = 0, proto: int = 0) -> bytes:
    tid = struct.unpack(">H", frame[:2])[0] + tid_offset
    return struct.pack(">HHHB", tid & 0xFFFF, proto, len(pdu) + 1, frame[6]) + pdu


def _registers(frame: bytes, values: list[int]) -> bytes:
    return _answer(
        frame, bytes([frame[7], 2 * len(values)]) + struct.pack(f">{len(values)}H", *values)
    )


async def _good(frame: bytes) -> bytes:
    (count,) = struct.unpack(">H", frame[10:12])
    return _registers(frame, list(range(count)))


async def _wrong_protocol(frame: bytes) -> bytes:
    return _answer(frame, b"\x04\x02\x00\x01", proto=1)


async def _wrong_tid(frame: bytes) -> bytes:
    return _answer(frame, b"\x04\x02\x00\x01", tid_offset=1)


async def _wrong_function(frame: bytes) -> bytes:
    return _answer(frame, b"\x03\x02\x00\x01")


async def _short(frame: bytes) -> bytes:
    return _answer(frame, b"\x04\x02\x00\x01")  # 1 register for a request of 3


async def _exception(frame: bytes) -> bytes:
    return _answer(frame, bytes([frame[7] | 0x80, 6]))


async def _hang_up(frame: bytes) -> None:
    return None


async def _silent(frame: bytes) -> bytes:
    await asyncio.sleep(30)
    return b""


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (_wrong_protocol, "not a Modbus TCP frame \\(protocol 1"),
        (_wrong_tid, "to no request"),
        (_wrong_function, "function 3 answers a request of 4"),
        (_short, "read answer with 2 data bytes, expected 6"),
        (_hang_up, "connection closed by the server"),
    ],
    ids=["protocol-id", "transaction-id", "function", "byte-count", "hang-up"],
)
async def test_a_frame_that_is_no_answer_fails_the_request_and_closes(
    reply: Reply, error: str
) -> None:
    server, port = await _scripted(reply)
    async with server:
        client = await MbapClient.connect("127.0.0.1", port, timeout_s=1.0)
        with pytest.raises(ModbusError, match=error):
            async with asyncio.timeout(2.0):
                await client.read_input_registers(0, 3, unit=1)
        assert not client.connected and client.outstanding == 0
        with pytest.raises(ModbusError):
            await client.read_input_registers(0, 3, unit=1)  # closed for good


async def test_an_exception_response_names_the_code_and_keeps_the_connection() -> None:
    server, port = await _scripted(_exception)
    async with server:
        client = await MbapClient.connect("127.0.0.1", port, timeout_s=1.0)
        with pytest.raises(ModbusExceptionResponse, match="6 \\(server device busy\\)"):
            await client.write_registers(0, [1, 2], unit=1)
        assert client.connected
        client.close()


async def test_answers_split_into_single_bytes_are_reassembled() -> None:
    server, port = await _scripted(_good)
    async with server:
        client = await MbapClient.connect("127.0.0.1", port, timeout_s=1.0)
        for count in (1, 7, 125):
            assert await client.read_holding_registers(10, count, unit=3) == list(range(count))
        client.close()


async def test_a_timed_out_request_is_the_callers_to_end() -> None:
    """Without ``timeout_s`` the caller's ``asyncio.timeout`` cancels; a late answer would then
    be an answer to no request, so the link closes the client after any failure."""
    server, port = await _scripted(_silent)
    async with server:
        client = await MbapClient.connect("127.0.0.1", port, timeout_s=1.0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.read_input_registers(0, 3, unit=1)
        assert client.outstanding == 0
        client.close()


async def _slow_then_good(frame: bytes) -> bytes:
    """Answers late while the request's address is 99, at once otherwise."""
    (address,) = struct.unpack(">H", frame[8:10])
    if address == 99:
        await asyncio.sleep(0.4)
    return await _good(frame)


async def test_a_request_times_out_on_its_own_and_a_late_answer_closes_the_connection() -> None:
    """``timeout_s``: the client's one timer fails the request on time, while answered requests
    before it never fire it; the answer that comes after is an answer to no request."""
    server, port = await _scripted(_slow_then_good)
    async with server:
        client = await MbapClient.connect("127.0.0.1", port, timeout_s=1.0)
        loop = asyncio.get_running_loop()
        for _ in range(20):  # answered at once: the armed timer finds nothing to fail
            assert await client.read_input_registers(0, 2, unit=1, timeout_s=0.15) == [0, 1]
        started = loop.time()
        with pytest.raises(TimeoutError, match="no answer to function 4"):
            await client.read_input_registers(99, 2, unit=1, timeout_s=0.15)
        took = loop.time() - started
        assert 0.15 <= took < 0.4, took  # its own deadline, not a re-armed one's
        assert client.outstanding == 0 and client.connected
        async with asyncio.timeout(2.0):
            while client.connected:  # the late answer arrives and matches no request
                await asyncio.sleep(0.02)
        with pytest.raises(ModbusError, match="to no request"):
            await client.read_input_registers(0, 2, unit=1, timeout_s=0.15)


async def test_timeout_must_be_positive() -> None:
    server, port = await _scripted(_good)
    async with server:
        client = await MbapClient.connect("127.0.0.1", port, timeout_s=1.0)
        for bad in (0.0, -1.0, math.nan):
            with pytest.raises(ValueError, match="timeout_s"):
                await client.read_input_registers(0, 2, unit=1, timeout_s=bad)
        assert client.outstanding == 0
        assert await client.read_input_registers(0, 2, unit=1, timeout_s=0.5) == [0, 1]
        client.close()
