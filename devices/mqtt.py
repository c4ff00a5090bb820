"""The MQTT link: one broker connection that survives broker restarts and cut cables.

Everything outside ``devices/`` talks MQTT through :class:`MqttLink` only; aiomqtt and paho
stay behind it, so the client library can be swapped (see the dependency notes in
``docs/architecture.md``) without touching the controller or the simulator.

The link keeps no queue of outgoing messages while the broker is away. That is deliberate
(recompute, don't replay): on every (re)connect it re-subscribes and calls ``on_connect``,
where the owner publishes what is true *now* instead of what was true when the cable was cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import random
import socket
import ssl
import sys
import termios
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.matcher import MQTTMatcher

__all__ = [
    "LinkDown",
    "LinkStats",
    "MessageHandler",
    "MqttLink",
    "MqttSettings",
    "TlsSettings",
    "Will",
    "topic_matches",
]

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], Awaitable[None] | None]
"""``handler(topic, payload, retained)``; may be a coroutine function."""


class LinkDown(ConnectionError):
    """Raised by :meth:`MqttLink.publish` while the broker is not reachable."""


@dataclass(frozen=True)
class TlsSettings:
    """TLS towards the broker. Paths are PEM files; ``insecure`` skips host-name checks."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    def context(self) -> ssl.SSLContext:
        """An SSL context for these settings."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True)
class Will:
    """Last will: published by the broker when this client vanishes without saying goodbye."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to connect."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "cityctl"
    username: str | None = None
    password: str | None = None
    tls: TlsSettings | None = None
    keepalive_s: int = 30
    will: Will | None = None
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 10.0
    #: Upper bound on messages buffered between paho's socket reader and our dispatcher.
    max_queued_incoming: int = 100_000
    #: QoS 1 publishes in flight at once (None: paho's 20). A gateway publishing the states of
    #: a hundred nodes at once wants more, or the last ones wait for the first ones' PUBACKs.
    max_inflight: int | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> MqttSettings:
        """Settings from ``mqtt://host:port`` or ``mqtts://host:port`` plus keyword fields."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"MQTT url {url!r} must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"MQTT url {url!r} has no host")
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        if parts.scheme == "mqtts" and "tls" not in kwargs:
            kwargs["tls"] = TlsSettings()
        if parts.username and "username" not in kwargs:
            kwargs["username"] = parts.username
        return cls(host=parts.hostname, port=port, **kwargs)


@dataclass
class LinkStats:
    """Counters for operations; nothing dropped goes uncounted."""

    connects: int = 0
    disconnects: int = 0
    published: int = 0
    publish_failed: int = 0
    received: int = 0
    handler_errors: int = 0


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT wildcard match: ``+`` one level, ``#`` the rest."""
    pp = pattern.split("/")
    tp = topic.split("/")
    for i, part in enumerate(pp):
        if part == "#":
            return True
        if i >= len(tp):
            return False
        if part != "+" and part != tp[i]:
            return False
    return len(pp) == len(tp)


@dataclass
class _Subscription:
    pattern: str
    handler: MessageHandler
    qos: int


@dataclass(eq=False)  # a connection: equal only to itself (and hashable)
class MqttLink:
    """A self-healing MQTT connection with topic handlers.

    Use::

        link = MqttLink(settings, on_connect=announce)
        link.subscribe("cityctl/v1/lights/node/+/state", on_state)
        task = asyncio.create_task(link.run())
        ...
        await link.close()
    """

    settings: MqttSettings
    on_connect: Callable[[], Awaitable[None]] | None = None
    name: str = ""
    stats: LinkStats = field(default_factory=LinkStats)
    _subs: list[_Subscription] = field(default_factory=list)
    _client: aiomqtt.Client | None = None
    _connected: asyncio.Event = field(default_factory=asyncio.Event)
    _closing: bool = False
    _on_connect_task: asyncio.Task[None] | None = None
    _run_task: asyncio.Task[None] | None = None
    _online: asyncio.Event = field(default_factory=asyncio.Event)
    _batches: set[_Confirmations] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._online.set()
        self._client_log = _ClientLog(self)

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        return self._connected.is_set()

    def inbox_empty(self) -> bool:
        """Whether every message that has reached this end of the connection has been handed
        to the handlers: none queued in aiomqtt, no unread bytes in the socket (or in the TLS
        layer). True when not connected.

        A loop that decides "the node did not answer in time" asks this first: under load the
        answer may be sitting unread in this inbox (paho reads one packet per event-loop turn).
        Costs a queue length and one ``ioctl``.
        """
        client = self._client
        if client is None:
            return True
        if len(client.messages):
            return False
        sock = client._client.socket()  # paho's socket
        pending = getattr(sock, "pending", None)  # TLS: decrypted bytes not yet read
        if pending is not None and pending():
            return False
        fileno = getattr(sock, "fileno", None)  # absent on paho's websocket wrapper
        if fileno is None:
            return True
        try:
            buf = fcntl.ioctl(fileno(), termios.FIONREAD, b"\0\0\0\0")
        except (OSError, ValueError):  # closed meanwhile: nothing more will be read from it
            return True
        return int.from_bytes(buf, sys.byteorder) == 0

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected; False on timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def subscribe(self, pattern: str, handler: MessageHandler, qos: int = 1) -> None:
        """Register a handler; the subscription is (re)made on every connect."""
        self._subs.append(_Subscription(pattern, handler, qos))
        client = self._client
        if client is not None and self.connected:
            # Already connected: subscribe now too, best effort (next connect retries anyway).
            async def _now() -> None:
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.subscribe(pattern, qos=qos)

            asyncio.get_running_loop().create_task(_now())

    async def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 0, retain: bool = False
    ) -> None:
        """Publish; raises :class:`LinkDown` when not connected or the broker went away."""
        client = self._client
        if client is None or not self.connected:
            self.stats.publish_failed += 1
            raise LinkDown(f"{self.name or self.settings.client_id}: not connected")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as exc:
            self.stats.publish_failed += 1
            raise LinkDown(str(exc)) from exc
        self.stats.published += 1

    def send_many(
        self,
        messages: Iterable[tuple[str, bytes]],
        *,
        qos: int = 0,
        retain: bool = False,
        timeout: float = 5.0,
    ) -> asyncio.Future[int]:
        """Hand several messages to the connection *now*; the future gives how many of them
        the broker confirmed (QoS 1: its PUBACK came; QoS 0: written to the socket).

        For bursts — a simulated gateway answering a group command for a hundred nodes.
        :meth:`publish` costs a task, an event and a ``wait_for`` per message in aiomqtt (and
        aiomqtt counts every pending publish again for each new one); here the messages are
        queued in paho in one go (paho writes them out at the next writable turn) and one
        future waits for all the confirmations. Raises :class:`LinkDown` when not
        connected. The count is short, never an exception, when the connection drops midway
        or ``timeout`` seconds pass first; the caller counts the rest as failed (the link
        keeps nothing to resend — see the module docstring).
        """
        client = self._client
        if client is None or not self.connected:
            self.stats.publish_failed += 1
            raise LinkDown(f"{self.name or self.settings.client_id}: not connected")
        loop = asyncio.get_running_loop()
        batch = _Confirmations(loop.create_future())
        # mid → object whose set() aiomqtt calls on the PUBACK (its own entries are Events)
        pending: dict[int, Any] = client._pending_publishes
        paho = client._client
        sent = 0
        for topic, payload in messages:
            info = paho.publish(topic, payload, qos, retain)
            if info.rc != 0:  # MQTT_ERR_NO_CONN…: the connection is going; the rest would too
                break
            sent += 1
            if info.is_published():  # paho may confirm inside publish() (QoS 0, idle socket)
                batch.confirmed += 1
            else:
                pending[info.mid] = batch
                batch.mids.append(info.mid)
        self.stats.published += sent
        batch.arm(loop, timeout, pending, self._batches)
        return batch.future

    async def run(self) -> None:
        """Connect, dispatch, and reconnect with capped exponential backoff until closed."""
        self._run_task = asyncio.current_task()
        delay = self.settings.reconnect_min_s
        s = self.settings
        while not self._closing:
            await self._online.wait()  # suspended by abort() until resume()
            will = None
            if s.will is not None:
                will = aiomqtt.Will(
                    s.will.topic, s.will.payload, qos=s.will.qos, retain=s.will.retain
                )
            client = aiomqtt.Client(
                s.host,
                s.port,
                logger=cast(logging.Logger, self._client_log),
                identifier=s.client_id,
                username=s.username,
                password=s.password,
                will=will,
                keepalive=s.keepalive_s,
                tls_context=s.tls.context() if s.tls else None,
                tls_insecure=s.tls.insecure if s.tls else None,
                clean_session=True,
                max_queued_incoming_messages=s.max_queued_incoming,
                max_inflight_messages=s.max_inflight,
                timeout=5.0,
            )
            # Bulk publishers (the controller's fan-out, a simulated gateway) keep hundreds of
            # QoS 1 publishes in flight on purpose: aiomqtt's "pending calls" warning is noise.
            client.pending_calls_threshold = 100_000
            _no_match_cycles(client)
            try:
                async with client:
                    self._client = client
                    _no_delay(client)
                    _buffer_reads(client)
                    if not self._online.is_set():
                        # abort() came while the connection was being made: cut it now.
                        _cut(client)
                    for sub in self._subs:
                        await client.subscribe(sub.pattern, qos=sub.qos)
                    self._connected.set()
                    self.stats.connects += 1
                    delay = s.reconnect_min_s
                    log.debug("%s connected to %s:%s", s.client_id, s.host, s.port)
                    if self.on_connect is not None:
                        self._on_connect_task = asyncio.create_task(self._announce())
                    await self._pump(client)
            except aiomqtt.MqttError as exc:
                if not self._closing:
                    log.debug("%s: broker link lost: %s", s.client_id, exc)
            finally:
                was_up = self._connected.is_set()
                self._connected.clear()
                self._client = None
                for batch in list(self._batches):
                    batch.finish()  # what was not confirmed on this connection never will be
                if self._on_connect_task is not None:
                    self._on_connect_task.cancel()
                    self._on_connect_task = None
                if was_up:
                    self.stats.disconnects += 1
            if self._closing:
                break
            if not self._online.is_set():
                continue
            # Jittered ("equal jitter": half fixed, half random) so that thousands of nodes
            # that lost the same broker do not all knock at the same instant when it returns.
            await asyncio.sleep(delay * (0.5 + 0.5 * random.random()))
            delay = min(delay * 2, s.reconnect_max_s)

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Hand every incoming message to the handlers until the connection ends.

        aiomqtt's iterator costs a task and an ``asyncio.wait`` per message, so a burst of a
        hundred acknowledgements took some three hundred event-loop turns, each behind
        whatever else was ready (the signal steps): fan-outs waited for their own answers.
        Here only an empty inbox is waited for that way; what is already queued is taken
        directly, up to :data:`_BURST` messages per turn, so that a start-up flood of
        thousands of states still lets the signal loops run between bursts. Nothing is handed
        over before the ``on_connect`` announcement of this connection has finished.
        """
        announcing = self._on_connect_task
        if announcing is not None:
            # What arrives is handled once the announcement is out, whatever the scheduling: a
            # node reports its state before it answers a retained command, and the controller
            # has re-sent its commands before it judges what the nodes report.
            await asyncio.wait({announcing})
        messages = client.messages
        queue = getattr(client, "_queue", None)  # aiomqtt's inbox (private; see docstring)
        if not isinstance(queue, asyncio.Queue):
            async for message in messages:  # an aiomqtt that changed: the public way
                await self._dispatch(message)
            return
        while True:
            if queue.empty():
                await self._dispatch(await anext(messages))
            for _ in range(_BURST):
                if queue.empty():
                    break
                await self._dispatch(queue.get_nowait())
            else:
                # More is queued: one turn for the others (the signal loops), then on. Going
                # back through the iterator instead would cost a task and a wait, i.e. two
                # or three turns, each behind everything else that is ready.
                await asyncio.sleep(0)

    async def _announce(self) -> None:
        assert self.on_connect is not None
        try:
            await self.on_connect()
        except LinkDown:
            pass  # the link dropped again; the next connect announces anew
        except Exception:
            log.exception("%s: on_connect failed", self.settings.client_id)

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        self.stats.received += 1
        topic = message.topic.value
        payload = message.payload
        if isinstance(payload, str):
            data = payload.encode()
        elif isinstance(payload, bytes | bytearray):
            data = bytes(payload)
        else:
            data = b"" if payload is None else str(payload).encode()
        for sub in self._subs:
            if not topic_matches(sub.pattern, topic):
                continue
            try:
                result = sub.handler(topic, data, bool(message.retain))
                if result is not None:
                    await result
            except Exception:
                # A handler bug must not kill the link: count it, log it, go on.
                self.stats.handler_errors += 1
                log.exception("%s: handler for %s failed", self.settings.client_id, topic)

    async def close(self, *, goodbye: tuple[str, bytes] | None = None) -> None:
        """Stop for good: optionally publish a retained goodbye, then disconnect cleanly."""
        self._closing = True
        client = self._client
        if client is not None and self.connected and goodbye is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(goodbye[0], goodbye[1], qos=1, retain=True)
        task = self._run_task
        self._online.set()
        if task is not None and task is not asyncio.current_task():
            # Cancel until it ends: Python 3.11's asyncio.wait_for (inside aiomqtt) can swallow
            # a cancellation that arrives together with the result it waits for.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
            if not task.cancelled():
                with contextlib.suppress(Exception):
                    task.result()
        self._connected.clear()

    @property
    def aborted(self) -> bool:
        """True between :meth:`abort` and :meth:`resume`."""
        return not self._online.is_set()

    def abort(self) -> None:
        """Drop the connection without a DISCONNECT (a cut cable): the broker fires the will.

        The link stays down until :meth:`resume`.
        """
        self._online.clear()
        if self._client is not None:
            _cut(self._client)

    def resume(self) -> None:
        """Reconnect after :meth:`abort`."""
        self._online.set()


class _Confirmations:
    """One batch of :meth:`MqttLink.send_many`: counts the confirmations aiomqtt hands over
    (its ``on_publish`` calls ``set()`` on what it finds under the message id) and completes
    the future with the count when all came or time ran out."""

    __slots__ = ("_live", "_pending", "_timer", "confirmed", "future", "left", "mids")

    def __init__(self, future: asyncio.Future[int]) -> None:
        self.future = future
        self.confirmed = 0
        self.left = 0
        self.mids: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._pending: dict[int, Any] | None = None
        self._live: set[_Confirmations] | None = None

    def arm(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        pending: dict[int, Any],
        live: set[_Confirmations],
    ) -> None:
        """Start waiting for the ``mids`` registered in ``pending``; be in ``live`` (the
        link's batches, finished when the connection ends) meanwhile."""
        self.left = len(self.mids)
        if self.left == 0:
            self.future.set_result(self.confirmed)
            return
        self._pending = pending
        self._live = live
        live.add(self)
        self._timer = loop.call_later(timeout, self.finish)

    def set(self) -> None:
        """One PUBACK (or, at QoS 0, one write) came."""
        self.confirmed += 1
        self.left -= 1
        if self.left <= 0:
            self.finish()

    def finish(self) -> None:
        """Stop waiting: the future gets the count confirmed so far."""
        if self._live is not None:
            self._live.discard(self)
            self._live = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending = self._pending
        if pending is not None and self.left > 0:
            # Time ran out (or the connection went): forget the unconfirmed ids, or a late
            # PUBACK of a reused id would be counted here.
            for mid in self.mids:
                if pending.get(mid) is self:
                    del pending[mid]
        self._pending = None
        if not self.future.done():
            self.future.set_result(self.confirmed)


class _ClientLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """paho's and aiomqtt's log, with the errors of a connection we cut on purpose
    (:meth:`MqttLink.abort`: a simulated cut cable) told as what they are: expected."""

    def __init__(self, link: MqttLink) -> None:
        super().__init__(logging.getLogger("mqtt"), {})
        self._link = link

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR and self._link.aborted:
            level = logging.INFO
        super().log(level, msg, *args, **kwargs)


def _no_delay(client: aiomqtt.Client) -> None:
    """Switch Nagle's algorithm off on the connection (paho leaves it on).

    With it on, a small publish that follows another before the broker's ACK is held back until
    that ACK comes, and a delayed ACK takes 40 ms on Linux: a command's state reports reached
    the controller 40-50 ms late even on loopback (measured by ``cityctl bench scale``).
    """
    sock = client._client.socket()  # paho's socket
    setsockopt = getattr(sock, "setsockopt", None)  # absent on paho's websocket wrapper
    if setsockopt is not None:
        with contextlib.suppress(OSError):
            setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_READ_CHUNK = 8192

#: Messages handed to the handlers in one event-loop turn at most (:meth:`MqttLink._pump`).
_BURST = 64


class _BufferedReads:
    """paho's socket, read in large chunks.

    paho reads a packet in three or four ``recv`` calls of one or two bytes (type, length,
    body), and aiomqtt lets it read one packet per readable event: every message cost a turn
    of the event loop and four system calls. This wrapper reads whatever the kernel holds (up
    to 8 KiB) in one call and serves paho's small reads from it; ``pending()`` (which aiomqtt
    already asks for TLS sockets) makes aiomqtt's reader keep paho reading until the buffer is
    empty, so a burst of messages is taken in one turn. Everything else goes to the socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes: from the buffer, or one large read when it is empty."""
        if not self._buf:
            # 8 KiB (about a hundred states) per event-loop turn at most: 64 KiB made one turn
            # of paho's handling block the loop for a third of a second under load, and the
            # signal steps waited behind it.
            data = self._sock.recv(_READ_CHUNK)  # BlockingIOError and EOF (b"") go to paho as is
            if len(data) <= bufsize:
                return data
            self._buf += data
        out = bytes(self._buf[:bufsize])
        del self._buf[:bufsize]
        return out

    def pending(self) -> int:
        """Bytes read from the connection but not yet handed to paho (TLS layer included)."""
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _buffer_reads(client: aiomqtt.Client) -> None:
    """Give paho a :class:`_BufferedReads` over its socket (plain TCP or TLS only; paho's
    websocket wrapper buffers on its own)."""
    paho = client._client
    sock = paho._sock
    if isinstance(sock, socket.socket):
        paho._sock = _BufferedReads(sock)


class _Matcher(MQTTMatcher):
    """paho's matcher of topic-filtered callbacks, without a garbage cycle per message.

    paho asks this matcher for the callbacks of *every* incoming message, and its
    ``iter_match`` builds a recursive closure each time (the function holds a cell that holds
    the function): six cyclic objects per message that only the garbage collector frees. At
    400 messages a second that was the controller's whole cyclic garbage (measured with
    ``gc.DEBUG_SAVEALL``: 4,520 such closures in 10 s, nothing else of note), and each young
    collection that freed it took 20-40 ms, the longest pauses of the event loop. We register
    no filtered callbacks (aiomqtt dispatches itself), so with none registered nothing can
    match and no generator is built; with some, paho's own search runs as before.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # paho's matcher is unannotated

    def iter_match(self, topic: str) -> Iterator[Any]:
        """The values of the filters matching ``topic`` (none when nothing is registered)."""
        if not self._root._children:
            return iter(())
        return cast(Iterator[Any], super().iter_match(topic))  # type: ignore[no-untyped-call]


def _no_match_cycles(client: aiomqtt.Client) -> None:
    """Give paho a :class:`_Matcher` (keeping any filter registered already). A paho without
    that (private) attribute, or with another kind of matcher, is left as it is."""
    paho = client._client
    current = getattr(paho, "_on_message_filtered", None)
    if isinstance(current, MQTTMatcher) and not isinstance(current, _Matcher):
        fresh = _Matcher()
        fresh._root = current._root  # keeps any registered filter
        paho._on_message_filtered = fresh


def _cut(client: aiomqtt.Client) -> None:
    """End the TCP connection without an MQTT DISCONNECT, as a cut cable would."""
    sock = client._client.socket()  # paho's socket
    shutdown = getattr(sock, "shutdown", None)  # absent on paho's websocket wrapper
    if shutdown is not None:
        # shutdown(), not close(): the broker sees the connection end without a DISCONNECT
        # (so it fires the will), and the socket turns readable at EOF, so paho takes its
        # normal connection-lost path at once. Closing the fd under paho instead left the
        # link "connected" until the keepalive ran out, and made paho (un)register a dead
        # fd (-1) with the event loop.
        with contextlib.suppress(OSError):
            shutdown(socket.SHUT_RDWR)
