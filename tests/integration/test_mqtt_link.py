"""MqttLink against a real Mosquitto: connect, subscribe, survive a broker restart, last will."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from devices.mqtt import LinkDown, MqttLink, MqttSettings, Will
from tests.helpers import Mosquitto, wait_for

Received = list[tuple[str, bytes, bool]]


class Harness:
    """Starts links and makes sure every one is closed at the end of the test."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.links: list[tuple[MqttLink, asyncio.Task[None]]] = []

    def link(
        self,
        client_id: str,
        *,
        will: Will | None = None,
        on_connect: Callable[[], Awaitable[None]] | None = None,
    ) -> MqttLink:
        settings = MqttSettings.from_url(
            self.broker.url,
            client_id=client_id,
            will=will,
            keepalive_s=5,
            reconnect_min_s=0.05,
            reconnect_max_s=0.5,
        )
        link = MqttLink(settings, on_connect=on_connect, name=client_id)
        self.links.append((link, asyncio.create_task(link.run())))
        return link

    async def subscriber_and_publisher(self, pattern: str) -> tuple[Received, MqttLink, MqttLink]:
        """A link ``sub`` collecting what matches ``pattern``, a link ``pub``; both connected."""
        got, handler = collector()
        sub = self.link("sub")
        sub.subscribe(pattern, handler)
        pub = self.link("pub")
        assert await sub.wait_connected(5) and await pub.wait_connected(5)
        return got, sub, pub

    async def close(self) -> None:
        for link, task in self.links:
            await link.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def harness(mosquitto: Mosquitto) -> AsyncIterator[Harness]:
    h = Harness(mosquitto)
    yield h
    await h.close()


def collector() -> tuple[Received, Callable[[str, bytes, bool], None]]:
    got: Received = []

    def handler(topic: str, payload: bytes, retained: bool) -> None:
        got.append((topic, payload, retained))

    return got, handler


async def test_connects_subscribes_and_receives(harness: Harness, mqtt_prefix: str) -> None:
    got, sub, pub = await harness.subscriber_and_publisher(f"{mqtt_prefix}/a/+")
    await pub.publish(f"{mqtt_prefix}/a/x", b"hello", qos=1)
    await pub.publish(f"{mqtt_prefix}/b/x", b"not for us", qos=1)
    await wait_for(lambda: got, 3, what="the message on a/x")
    await asyncio.sleep(0.1)
    assert got == [(f"{mqtt_prefix}/a/x", b"hello", False)]
    assert sub.stats.received == 1 and sub.stats.connects == 1


async def test_retained_message_is_flagged(harness: Harness, mqtt_prefix: str) -> None:
    pub = harness.link("pub")
    assert await pub.wait_connected(5)
    await pub.publish(f"{mqtt_prefix}/r", b"kept", qos=1, retain=True)
    got, handler = collector()
    sub = harness.link("sub")
    sub.subscribe(f"{mqtt_prefix}/#", handler)
    await wait_for(lambda: got, 3, what="the retained message")
    assert got == [(f"{mqtt_prefix}/r", b"kept", True)]


async def test_subscribe_while_connected_takes_effect(harness: Harness, mqtt_prefix: str) -> None:
    sub = harness.link("sub")
    pub = harness.link("pub")
    assert await sub.wait_connected(5) and await pub.wait_connected(5)
    got, handler = collector()
    sub.subscribe(f"{mqtt_prefix}/late", handler)

    async def delivered() -> bool:
        await pub.publish(f"{mqtt_prefix}/late", b"x", qos=1)
        return bool(got)

    await wait_for(delivered, 3, interval=0.05, what="delivery on a late subscription")


async def test_broker_restart_reconnects_resubscribes_and_announces(
    harness: Harness, mosquitto: Mosquitto, mqtt_prefix: str
) -> None:
    announced = 0

    async def on_connect() -> None:
        nonlocal announced
        announced += 1

    got, handler = collector()
    sub = harness.link("sub", on_connect=on_connect)
    sub.subscribe(f"{mqtt_prefix}/t", handler)
    pub = harness.link("pub")
    assert await sub.wait_connected(5) and await pub.wait_connected(5)
    await wait_for(lambda: announced == 1, 3, what="first on_connect")

    mosquitto.restart()
    await wait_for(lambda: sub.stats.disconnects >= 1, 5, what="the link noticing the restart")
    await wait_for(lambda: sub.connected and pub.connected, 10, what="both links reconnected")
    await wait_for(lambda: announced == 2, 3, what="on_connect after the reconnect")
    assert sub.stats.connects == 2

    # The subscription was made again on the new broker (which forgot everything).
    await pub.publish(f"{mqtt_prefix}/t", b"after", qos=1)
    await wait_for(lambda: (f"{mqtt_prefix}/t", b"after", False) in got, 3, what="delivery")


async def test_publish_while_down_raises_link_down(
    harness: Harness, mosquitto: Mosquitto, mqtt_prefix: str
) -> None:
    link = harness.link("pub")
    assert await link.wait_connected(5)
    mosquitto.stop()
    await wait_for(lambda: not link.connected, 5, what="the link noticing the broker is gone")
    with pytest.raises(LinkDown):
        await link.publish(f"{mqtt_prefix}/x", b"lost", qos=1)
    assert link.stats.publish_failed == 1
    mosquitto.start()  # same port
    await wait_for(lambda: link.connected, 10, what="reconnect after the broker came back")
    await link.publish(f"{mqtt_prefix}/x", b"ok", qos=1)


async def test_publish_before_connect_raises_link_down(mqtt_prefix: str) -> None:
    link = MqttLink(MqttSettings(port=1, client_id="never"))
    with pytest.raises(LinkDown):
        await link.publish(f"{mqtt_prefix}/x", b"x")


@pytest.mark.parametrize("qos", [0, 1])
async def test_send_many_delivers_in_order_and_counts_the_confirmations(
    harness: Harness, mqtt_prefix: str, qos: int
) -> None:
    got, _sub, pub = await harness.subscriber_and_publisher(f"{mqtt_prefix}/many/+")
    sent = [(f"{mqtt_prefix}/many/{i % 7}", f"m{i}".encode()) for i in range(300)]
    before = pub.stats.published
    confirmed = await asyncio.wait_for(pub.send_many(sent, qos=qos), 10)
    assert confirmed == 300
    assert pub.stats.published - before == 300
    await wait_for(lambda: len(got) == 300, 5, what="all 300 messages")
    assert [(t, p) for t, p, _ in got] == sent  # one connection: in order
    # Nothing left behind in aiomqtt's table of publishes waiting for a confirmation.
    assert pub._client is not None and not pub._client._pending_publishes
    assert await pub.send_many([]) == 0


async def test_send_many_before_connect_raises_link_down(mqtt_prefix: str) -> None:
    link = MqttLink(MqttSettings(port=1, client_id="never"))
    with pytest.raises(LinkDown):
        link.send_many([(f"{mqtt_prefix}/x", b"x")], qos=1)
    assert link.stats.publish_failed == 1


async def test_send_many_counts_short_on_timeout_and_on_a_lost_connection(
    harness: Harness, mosquitto: Mosquitto, mqtt_prefix: str
) -> None:
    """A frozen broker confirms nothing: the batch ends after its timeout with what came (0)
    and forgets its ids; a connection cut meanwhile ends a batch at once, not at its
    timeout."""
    link = harness.link("pub")
    assert await link.wait_connected(5)
    pid = mosquitto.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        n = await link.send_many(
            [(f"{mqtt_prefix}/x", b"1"), (f"{mqtt_prefix}/y", b"2")], qos=1, timeout=0.3
        )
        assert n == 0
        assert 0.25 <= time.monotonic() - t0 < 3.0
        assert link._client is not None and not link._client._pending_publishes

        batch = link.send_many([(f"{mqtt_prefix}/z", b"3")], qos=1, timeout=30.0)
        t0 = time.monotonic()
        link.abort()  # the cable is cut: no PUBACK can come on this connection any more
        assert await asyncio.wait_for(batch, 5) == 0
        assert time.monotonic() - t0 < 3.0
    finally:
        os.kill(pid, signal.SIGCONT)
    link.resume()
    await wait_for(lambda: link.connected, 10, what="the link back")
    assert await asyncio.wait_for(link.send_many([(f"{mqtt_prefix}/x", b"4")], qos=1), 5) == 1


async def test_abort_fires_last_will_and_resume_comes_back(
    harness: Harness, mqtt_prefix: str
) -> None:
    avail = f"{mqtt_prefix}/node/n1/availability"

    async def announce() -> None:
        await node.publish(avail, b"online", qos=1, retain=True)

    node = harness.link("n1", will=Will(avail, b"offline"), on_connect=announce)
    watcher_got, handler = collector()
    watcher = harness.link("watcher")
    watcher.subscribe(avail, handler)
    await wait_for(lambda: watcher_got and watcher_got[-1][1] == b"online", 5, what="online")

    node.abort()
    await wait_for(lambda: watcher_got[-1][1] == b"offline", 5, what="the last will")
    assert not node.connected
    await asyncio.sleep(0.3)
    assert not node.connected, "an aborted link must stay down until resume()"

    # A client arriving later sees the retained "offline".
    late_got, late_handler = collector()
    late = harness.link("late")
    late.subscribe(avail, late_handler)
    await wait_for(lambda: late_got, 5, what="the retained availability")
    assert late_got == [(avail, b"offline", True)]

    node.resume()
    await wait_for(lambda: watcher_got[-1][1] == b"online", 5, what="online after resume")
    assert node.stats.connects == 2


async def test_close_with_goodbye_publishes_it(harness: Harness, mqtt_prefix: str) -> None:
    avail = f"{mqtt_prefix}/ctl/availability"
    node = harness.link("ctl", will=Will(avail, b"offline"))
    got, handler = collector()
    watcher = harness.link("watcher")
    watcher.subscribe(avail, handler)
    assert await node.wait_connected(5) and await watcher.wait_connected(5)
    await node.close(goodbye=(avail, b"offline"))
    await wait_for(lambda: got, 5, what="the goodbye")
    assert got[-1][1] == b"offline"
    assert not node.connected


async def test_handler_error_is_counted_and_link_survives(
    harness: Harness, mqtt_prefix: str
) -> None:
    got, good = collector()

    def bad(topic: str, payload: bytes, retained: bool) -> None:
        raise RuntimeError("boom")

    sub = harness.link("sub")
    sub.subscribe(f"{mqtt_prefix}/x", bad)
    sub.subscribe(f"{mqtt_prefix}/x", good)
    pub = harness.link("pub")
    assert await sub.wait_connected(5) and await pub.wait_connected(5)
    for i in range(3):
        await pub.publish(f"{mqtt_prefix}/x", str(i).encode(), qos=1)
    await wait_for(lambda: len(got) == 3, 3, what="three deliveries")
    assert sub.stats.handler_errors == 3


async def test_abort_before_the_connection_is_up_keeps_the_link_down(
    harness: Harness, mqtt_prefix: str
) -> None:
    avail = f"{mqtt_prefix}/node/n2/availability"
    node = harness.link("n2", will=Will(avail, b"offline"))
    node.abort()  # the run task has not even connected yet
    await asyncio.sleep(0.5)
    assert not node.connected and node.stats.connects <= 1
    node.resume()
    assert await node.wait_connected(5)


async def test_inbox_empty_says_whether_messages_wait_unread(
    harness: Harness, mqtt_prefix: str
) -> None:
    got: list[bytes] = []
    release = asyncio.Event()

    async def slow(topic: str, payload: bytes, retained: bool) -> None:
        got.append(payload)
        if payload == b"0":
            await release.wait()  # the first message holds up the dispatch of the others

    sub = harness.link("sub")
    sub.subscribe(f"{mqtt_prefix}/in", slow)
    pub = harness.link("pub")
    assert await sub.wait_connected(5) and await pub.wait_connected(5)
    assert sub.inbox_empty()
    for i in range(20):
        await pub.publish(f"{mqtt_prefix}/in", str(i).encode(), qos=1)
    await wait_for(lambda: got, 3, what="the first message")

    async def backlog() -> bool:
        return not sub.inbox_empty()

    await wait_for(backlog, 3, interval=0.02, what="the 19 others waiting in the inbox")
    assert got == [b"0"]
    release.set()
    await wait_for(lambda: len(got) == 20, 3, what="all 20 handled")
    assert sub.inbox_empty()


async def test_a_burst_larger_than_one_read_arrives_whole_and_in_order(
    harness: Harness, mqtt_prefix: str
) -> None:
    # 400 messages of 1 kB: several 64 KiB reads, packets cut at their edges.
    got, sub, pub = await harness.subscriber_and_publisher(f"{mqtt_prefix}/burst")
    sent = [f"{i:04d}".encode() * 250 for i in range(400)]
    await asyncio.gather(*(pub.publish(f"{mqtt_prefix}/burst", p, qos=1) for p in sent))
    await wait_for(lambda: len(got) >= 400, 10, what="all 400 messages")
    assert [p for _, p, _ in got] == sent
    assert sub.inbox_empty()


def test_buffered_reads_serve_small_reads_from_one_large_one() -> None:
    import socket

    from devices.mqtt import _BufferedReads

    a, b = socket.socketpair()
    try:
        b.setblocking(False)
        reads = _BufferedReads(b)
        with pytest.raises(BlockingIOError):
            reads.recv(1)  # nothing there: paho's "try again later"
        a.sendall(b"\x30\x05hello\x30\x03abc")
        assert reads.recv(1) == b"\x30" and reads.pending() == 11
        assert reads.recv(1) == b"\x05" and reads.recv(5) == b"hello"
        assert reads.recv(100) == b"\x30\x03abc" and reads.pending() == 0
        a.sendall(b"xy")
        assert reads.recv(2) == b"xy"  # fits: handed over without buffering
        a.close()
        assert reads.recv(1) == b""  # end of the connection, as from the socket itself
        assert reads.fileno() == b.fileno()  # everything else is the socket's
    finally:
        b.close()


async def test_receiving_leaves_no_cyclic_garbage(harness: Harness, mqtt_prefix: str) -> None:
    # paho's topic matcher built a self-referencing closure per incoming message: six cyclic
    # objects each that only the garbage collector frees, whose young-generation passes were
    # the controller's longest event-loop pauses. Counted here with the collector off.
    import gc

    got, _, pub = await harness.subscriber_and_publisher(f"{mqtt_prefix}/many/+")
    n = 1000
    gc.collect()
    gc.disable()
    try:
        await asyncio.gather(
            *(pub.publish(f"{mqtt_prefix}/many/{i % 10}", b"x", qos=0) for i in range(n))
        )
        await wait_for(lambda: len(got) >= n, 10, what=f"all {n} messages")
        garbage = gc.collect()
    finally:
        gc.enable()
    print(f"{n} messages received: {garbage} cyclic garbage objects")
    assert garbage < n // 10, f"{garbage} cyclic garbage objects for {n} messages"


def test_topic_matcher_without_filters_matches_nothing_and_with_them_as_paho() -> None:
    from paho.mqtt.matcher import MQTTMatcher

    from devices.mqtt import _Matcher

    empty = _Matcher()
    assert list(empty.iter_match("a/b")) == []
    ours, theirs = _Matcher(), MQTTMatcher()  # type: ignore[no-untyped-call]
    for m in (ours, theirs):
        m["a/+/c"] = 1
        m["a/#"] = 2
        m["$SYS/x"] = 3
    for topic in ("a/b/c", "a/x", "b", "$SYS/x", "a/b/c/d"):
        paho = theirs.iter_match(topic)  # type: ignore[no-untyped-call]
        assert sorted(ours.iter_match(topic)) == sorted(paho), topic
