"""A TCP proxy with a cable to cut: put it between a client and a server, then cut and restore.

Tests use it to cut a real TCP path the way the street does it, without touching either end::

    proxy = TcpProxy("127.0.0.1", cabinet_port)
    await proxy.start()                 # clients connect to proxy.port instead
    await proxy.cut("blackhole")        # or "reset"
    ...
    await proxy.restore()
    await proxy.close()

Two kinds of cut:

``reset``
    Every established connection is reset (RST to both ends, as a firewall or a rebooting switch
    does it) and the listener is closed, so new connections are refused (``ECONNREFUSED``).

``blackhole``
    A silent cable cut. Established connections stay open but nothing crosses: the bytes each
    end sends are held, as unacknowledged data sits in the sender's TCP stack. On
    :meth:`restore` they are delivered late, in order (TCP retransmission after a short outage;
    a sender that closed its socket meanwhile still has its orphaned data and FIN retransmitted
    by the kernel), so the far end may still get requests its client gave up on long ago. New
    connections hang: the listener is replaced by one whose accept queue is full (``listen(0)``
    plus one parked connection), so Linux drops further SYNs and ``connect()`` times out, as
    when nobody answers at all.

The proxy listens on the same port across cuts (the client keeps its configured address).
Everything runs on the caller's event loop; there are no threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal

from controller.bench.mosquitto import free_port

__all__ = ["CutMode", "ProxyStats", "TcpProxy"]

CutMode = Literal["reset", "blackhole"]
"""How :meth:`TcpProxy.cut` cuts the path (see the module docstring)."""

_UP, _DOWN = 0, 1  # client → server, server → client
_EOF = b""


@dataclass
class ProxyStats:
    """What crossed the proxy, and what the cuts did to it."""

    connections: int = 0  # accepted and bridged to the server
    upstream_failures: int = 0  # accepted, but the server could not be reached (closed again)
    bytes_up: int = 0  # client → server, forwarded (late deliveries included)
    bytes_down: int = 0  # server → client
    held_bytes: int = 0  # held during a blackhole
    late_bytes: int = 0  # held bytes delivered on restore
    dropped_bytes: int = 0  # held bytes whose receiver had gone by the restore
    resets: int = 0  # connections reset by a cut
    cuts: int = 0
    restores: int = 0


@dataclass(eq=False)
class _Bridge:
    """One client connection and its connection to the server."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    held: tuple[list[bytes], list[bytes]] = field(default_factory=lambda: ([], []))
    closed: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def writer(self, direction: int) -> asyncio.StreamWriter:
        return self.server if direction == _UP else self.client

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for w in (self.client, self.server):
                w.close()

    def reset(self) -> None:
        """Close both ends with an RST (SO_LINGER 0), not an orderly FIN."""
        if self.closed:
            return
        self.closed = True
        for w in (self.client, self.server):
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()


class TcpProxy:
    """Forwards every connection on ``host:port`` to ``upstream_host:upstream_port``.

    ``port`` 0 picks a free port below the kernel's ephemeral range (see :attr:`port`). :meth:`cut` and
    :meth:`restore` cut and mend the path; :attr:`stats` counts what crossed it.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        # Not the kernel's pick for port 0: a port from the ephemeral range can become some
        # outgoing connection's source port while the path is cut — a client reconnecting to
        # it can even connect to itself — and restore() could not listen on it again (seen
        # once in the suite: "address already in use" on restore).
        self.port = port or free_port(host)
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._mode: CutMode | None = None
        self._bridges: set[_Bridge] = set()
        self._parked: list[socket.socket] = []  # the full-queue listener and its parked client

    @property
    def cut_mode(self) -> CutMode | None:
        """The cut in force, or None while the path is whole."""
        return self._mode

    @property
    def open_connections(self) -> int:
        """Bridged connections currently open."""
        return sum(1 for b in self._bridges if not b.closed)

    async def start(self) -> None:
        """Listen on :attr:`port`."""
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )

    async def cut(self, mode: CutMode) -> None:
        """Cut the path (see the module docstring for what each ``mode`` looks like)."""
        if mode not in ("reset", "blackhole"):
            raise ValueError(f"cut mode {mode!r}: expected 'reset' or 'blackhole'")
        if self._mode is not None:
            raise RuntimeError(f"already cut ({self._mode})")
        self._mode = mode
        self.stats.cuts += 1
        self._stop_listening()
        if mode == "reset":
            for b in list(self._bridges):
                if not b.closed:
                    self.stats.resets += 1
                b.reset()
            self._bridges.clear()
        else:
            self._park_listener()

    async def restore(self) -> None:
        """Mend the path: deliver what a blackhole held, listen again on the same port."""
        if self._mode is None:
            return
        for sock in self._parked:
            sock.close()  # connections stuck in its queue get an RST, like a late SYN-ACK lost
        self._parked.clear()
        for b in list(self._bridges):
            for direction in (_UP, _DOWN):
                self._deliver_held(b, direction)
        self._mode = None
        self.stats.restores += 1
        await self.start()

    async def close(self) -> None:
        """Stop listening and close every connection."""
        self._stop_listening()
        for sock in self._parked:
            sock.close()
        self._parked.clear()
        tasks = [t for b in self._bridges for t in b.tasks]
        for b in list(self._bridges):
            b.close()
        self._bridges.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals ------------------------------------------------------------------------
    def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # closes the listening socket at once; connections stay

    def _park_listener(self) -> None:
        """A listener on our port whose accept queue is full: further SYNs are dropped."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(0)  # Linux queues one connection at backlog 0
        parked = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        parked.setblocking(False)
        parked.connect_ex((self.host, self.port))  # takes the one slot (or a client did)
        self._parked = [listener, parked]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self.stats.upstream_failures += 1
            writer.close()
            return
        bridge = _Bridge(writer, up_writer)
        if self._mode == "reset":  # accepted just before the cut: it goes with the rest
            self.stats.resets += 1
            bridge.reset()
            return
        self.stats.connections += 1
        self._bridges.add(bridge)
        loop = asyncio.get_running_loop()
        bridge.tasks = [
            loop.create_task(self._pump(bridge, reader, _UP)),
            loop.create_task(self._pump(bridge, up_reader, _DOWN)),
        ]

    async def _pump(self, b: _Bridge, reader: asyncio.StreamReader, direction: int) -> None:
        try:
            while not b.closed:
                data = await reader.read(65536)
                if self._mode == "blackhole":
                    # Held, not lost: TCP would retransmit it once the cable is back.
                    b.held[direction].append(data)
                    self.stats.held_bytes += len(data)
                    if data == _EOF:
                        return
                    continue
                if data == _EOF:
                    b.close()
                    return
                self._forward(b, direction, data)
        except (ConnectionError, OSError):
            b.reset()
        finally:
            if b.closed:
                self._bridges.discard(b)

    def _forward(self, b: _Bridge, direction: int, data: bytes) -> None:
        b.writer(direction).write(data)
        if direction == _UP:
            self.stats.bytes_up += len(data)
        else:
            self.stats.bytes_down += len(data)

    def _deliver_held(self, b: _Bridge, direction: int) -> None:
        held = b.held[direction]
        while held:
            data = held.pop(0)
            if b.closed:
                self.stats.dropped_bytes += len(data)
                continue
            if data == _EOF:
                b.close()
                self._bridges.discard(b)
                continue
            if b.writer(direction).is_closing():
                self.stats.dropped_bytes += len(data)
                continue
            self._forward(b, direction, data)
            self.stats.late_bytes += len(data)
