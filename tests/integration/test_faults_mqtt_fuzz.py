"""Garbage on every topic the controller listens to, against a running controller.

A controller (lights and both intersections) runs with 200 simulated nodes and two simulated
signal cabinets on a real Mosquitto. A seeded generator (reproducible: the seed is printed)
publishes payloads of many kinds of wrongness on each topic the controller subscribes to —
node state, availability and ack, traffic counts, camera counts — plus topics under the prefix
it does not subscribe to. Every message carries what the protocol says must become of it
(docs/protocol.md, *Bad input*): dropped and counted by the lighting loop, dropped and counted
by the signals service, ignored by rule (an empty retained-clearing payload, a count for a road
this controller does not light, a camera of another controller's intersection, a retained
camera count), or never delivered (a topic nobody subscribed to). The test checks each of those
totals exactly, that nothing the controller decides changed, that it stayed up, and that a
valid message sent right after the flood is still processed promptly.

A second test runs the broker with the shipped ``max_packet_size`` (deploy/mosquitto/cityctl.conf)
and shows where a message over it ends: at the broker, which drops the sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import gc
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.clock import ManualClock
from controller.config import CityConfig
from controller.diagnostics import DropCounter
from controller.runtime import Controller, _rss_mb
from controller.signals.model import DetectorKind
from controller.sim_signals import SimulatedSite
from devices.cameras import camera_topic
from devices.lights import Topics, encode
from devices.mqtt import LinkDown, MessageHandler, MqttLink, MqttSettings
from simulator.lights import LightSimulator, NodeSpec
from tests.faults import report
from tests.helpers import Mosquitto, free_port, wait_for
from tests.integration.test_lighting_e2e import LOCAL, SharedWall, district

pytestmark = pytest.mark.faults

SEED = 20261125
NOW = dt.datetime(2026, 11, 25, 21, 0, tzinfo=LOCAL)
TS = NOW.isoformat()

# What must become of a message (docs/protocol.md, "Bad input"):
LIGHTING = "dropped and counted by the lighting loop"
SIGNALS = "dropped and counted by the signals service"
IGNORED = "ignored by rule"
UNROUTED = "not delivered (no subscription)"


@dataclass(frozen=True)
class Msg:
    """One publish: where, what, what it is, and what must become of it."""

    topic: str
    payload: bytes
    kind: str
    family: str
    outcome: str
    retain: bool = False


@dataclass
class Site:
    cfg: CityConfig
    clock: ManualClock
    controller: Controller
    sim: LightSimulator
    cabinets: SimulatedSite
    pub: MqttLink
    topics: Topics

    @property
    def nodes(self) -> list[str]:
        return [n for _, n, _, _ in self.cfg.nodes()]


@pytest.fixture
async def site(mosquitto: Mosquitto, mqtt_prefix: str) -> AsyncIterator[Site]:
    """The shipped district and both intersections at 21:00, every node converged."""
    cfg = district(mqtt_prefix)
    clock = ManualClock(NOW)
    settings = MqttSettings(
        host=mosquitto.host, port=mosquitto.port, reconnect_min_s=0.1, reconnect_max_s=0.5
    )
    # Nodes report only on a change (a long report interval): then nothing but the fuzz can
    # move their states, and an unchanged state proves the fuzz moved nothing.
    sim = LightSimulator(
        settings,
        [NodeSpec(n, g.id, w, m) for g, n, w, m in cfg.nodes()],
        prefix=mqtt_prefix,
        fallback_after_s=cfg.lighting.fallback_after_s,
        report_interval_s=3600.0,
        clock=SharedWall(clock),
    )
    xs = cfg.intersections()
    ports = {x.id: free_port() for x in xs}
    # The controller before the cabinets: a cabinet's heartbeat watchdog runs from its start.
    controller = Controller(
        cfg,
        clock=clock,
        mqtt=settings,
        cabinets={xid: ("127.0.0.1", p) for xid, p in ports.items()},
    )
    cabinets = SimulatedSite(xs, cfg.signals, ports=ports)
    pub = MqttLink(
        MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id=f"fuzz-{mqtt_prefix}")
    )
    pub_task = asyncio.create_task(pub.run())
    await sim.start(wait_s=30)
    await cabinets.start()
    await controller.start()
    s = Site(cfg, clock, controller, sim, cabinets, pub, Topics(mqtt_prefix))
    try:
        assert await pub.wait_connected(10) and await controller.link.wait_connected(10)
        assert controller.signals is not None
        runners = controller.signals.runners.values()
        await wait_for(
            lambda: all(r.sync == "control" for r in runners), 20, what="intersections in control"
        )
        await wait_for(
            lambda: all(
                g.nodes_converged == g.nodes_total for g in controller.lighting.core.status()
            ),
            20,
            what="every node at its group's level",
        )
        yield s
    finally:
        await controller.stop()
        controller.close()
        await cabinets.stop()
        await sim.stop()
        await pub.close()
        pub_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pub_task


# -- the generator ---------------------------------------------------------------------------


def _state(node: str, /, group: str = "ql1a", **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1,
        "node": node,
        "group": group,
        "ts": TS,
        "level": 40.0,
        "target": 40.0,
        "cmd_id": "fuzz-1",
        "mode": "remote",
        "power_w": 60.0,
        "energy_wh": 1234.5,
        "burn_h": 10.0,
        "switches": 3,
        "faults": [],
    }
    return base | over


def _ack(node: str, /, **over: Any) -> dict[str, Any]:
    return {"v": 1, "node": node, "cmd_id": "c-1", "status": "rejected", "reason": "x"} | over


def _count(segment: str, /, **over: Any) -> dict[str, Any]:
    return {"v": 1, "segment": segment, "ts": TS, "interval_s": 60, "vehicles": 30} | over


def _camera(x: str, cam: str, /, **over: Any) -> dict[str, Any]:
    lanes = [{"lane": 1, "group": "N_T", "count": 4, "queue": 7}]
    base = {"v": 1, "intersection": x, "camera": cam, "ts": TS, "interval_s": 10, "lanes": lanes}
    return base | over


def _j(data: Any) -> bytes:
    return json.dumps(data, allow_nan=True).encode()


def _other_type(rng: random.Random, value: Any, *, nullable: bool = False) -> Any:
    """A JSON value of another type than ``value`` (a number as text, text as a number …);
    not null where null is allowed."""
    if isinstance(value, bool):
        choices: list[Any] = [1, "true", None, [value]]
    elif isinstance(value, int | float):
        choices = [str(value), True, None, [value], {"value": value}]
    elif isinstance(value, str):
        choices = [7, True, None, [value], {"id": value}]
    elif isinstance(value, list):
        choices = ["[]", 0, {"items": value}, None]
    else:
        choices = ["x", 1, [], None]
    return rng.choice([c for c in choices if c is not None or not nullable])


@dataclass
class Fuzz:
    """Builds the messages; ``rng`` makes every choice, so the seed reproduces the run."""

    rng: random.Random
    t: Topics
    known_nodes: list[str]
    known_segments: list[str]
    # (intersection, camera) pairs the controller drives.
    cameras: list[tuple[str, str]]
    out: list[Msg] = field(default_factory=list)

    def add(
        self,
        topic: str,
        payload: bytes,
        kind: str,
        family: str,
        outcome: str,
        *,
        retain: bool = False,
    ) -> None:
        self.out.append(Msg(topic, payload, kind, family, outcome, retain))

    def targets(self) -> list[tuple[str, str, str, Callable[..., dict[str, Any]] | None]]:
        """One random target of each family: the family, the topic, who counts a drop, and a
        builder of a valid payload for that topic (None: plain text)."""
        rng = self.rng
        node = rng.choice(self.known_nodes)
        seg = rng.choice(self.known_segments)
        x, cam = rng.choice(self.cameras)
        return [
            ("node state", self.t.node_state(node), LIGHTING, lambda **o: _state(node, **o)),
            ("node availability", self.t.node_availability(node), LIGHTING, None),
            ("node ack", self.t.node_ack(node), LIGHTING, lambda **o: _ack(node, **o)),
            ("traffic count", self.t.traffic_count(seg), LIGHTING, lambda **o: _count(seg, **o)),
            (
                "camera counts",
                camera_topic(self.t, x, cam),
                SIGNALS,
                lambda **o: _camera(x, cam, **o),
            ),
        ]

    def random_bytes(self, n: int) -> None:
        for _ in range(n):
            for family, topic, by, _ in self.targets():
                data = self.rng.randbytes(self.rng.randint(1, 300))
                if data.strip() in (b"online", b"offline"):
                    continue  # valid availability (not a realistic draw, but be exact)
                self.add(topic, data, "random bytes", family, by)

    def wrong_shapes(self, n: int) -> None:
        shapes = [b"[]", b"[1,2,3]", b"42", b"-1e999", b'"online"', b"null", b"true", b"{}"]
        shapes += [b'{"v":1}', b'{"v":1,', b"\xef\xbb\xbf{}", b"{'v': 1}", b"NaN"]
        for _ in range(n):
            for family, topic, by, _ in self.targets():
                self.add(topic, self.rng.choice(shapes), "JSON of the wrong shape", family, by)

    def wrong_types(self, n: int) -> None:
        for _ in range(n):
            for family, topic, by, valid in self.targets():
                if valid is None:  # availability is text: a JSON document is the wrong type
                    bad: Any = self.rng.choice(
                        [{"availability": "online"}, ["online"], 1, True, {"v": 1}]
                    )
                    self.add(topic, _j(bad), "wrong types", family, by)
                    continue
                data = valid()
                key = self.rng.choice([k for k in data if k != "v"])
                if key == "lanes" and self.rng.random() < 0.5:
                    lane_key = self.rng.choice(["lane", "count", "queue", "group"])
                    lane = data["lanes"][0]
                    lane[lane_key] = _other_type(
                        self.rng, lane[lane_key], nullable=lane_key == "group"
                    )
                else:
                    data[key] = _other_type(self.rng, data[key], nullable=key == "cmd_id")
                self.add(topic, _j(data), "wrong types", family, by)

    def out_of_range(self) -> None:
        cases: dict[str, list[dict[str, Any]]] = {
            "node state": [
                {"level": 100.5},
                {"level": -0.1},
                {"target": 1e400},
                {"power_w": -1},
                {"power_w": 100_001},
                {"energy_wh": -5},
                {"energy_wh": float("inf")},
                {"burn_h": float("nan")},
                {"burn_h": float("inf")},
                {"switches": -1},
                {"switches": 2**64},
                {"ts": "2026-11-25T21:00:00"},  # no UTC offset
                {"ts": "yesterday"},
                {"mode": "manual"},
                {"faults": ["fire"]},
                {"node": "QL 001"},
            ],
            "node ack": [{"status": "ok"}, {"status": ""}, {"node": "a/b"}, {"cmd_id": 5}],
            "traffic count": [
                {"interval_s": 0},
                {"interval_s": 3601},
                {"interval_s": -60},
                {"vehicles": -1},
                {"vehicles": 100_001},
                {"vehicles": 2.5},
                {"ts": "2026-11-25 21:00"},
            ],
            "camera counts": [
                {"interval_s": 0},
                {"interval_s": 901},
                {"lanes": []},
                {"lanes": [{"lane": 1, "count": 1, "queue": 1}] * 17},
                {"lanes": [{"lane": 0, "count": 1, "queue": 1}]},
                {"lanes": [{"lane": 9, "count": 1, "queue": 1}]},
                {"lanes": [{"lane": 1, "count": 10_001, "queue": 1}]},
                {"lanes": [{"lane": 1, "count": 1, "queue": 501}]},
                {"lanes": [{"lane": 1, "count": -1, "queue": 1}]},
                {"ts": "25/11/2026"},
            ],
        }
        for _ in range(3):
            for family, topic, by, valid in self.targets():
                if valid is None:
                    for text in (b"onl1ne", b"ONLINE", b"off", b"\x00online", b"online!"):
                        self.add(topic, text, "out-of-range values", family, by)
                    continue
                for over in cases[family]:
                    self.add(topic, _j(valid(**over)), "out-of-range values", family, by)

    def wrong_version(self) -> None:
        for v in (0, 2, -1, "1", None, 1.5, True, [1], {"major": 1}):
            for family, topic, by, valid in self.targets():
                if valid is not None:
                    self.add(topic, _j(valid(v=v)), "wrong v", family, by)

    def mismatches(self) -> None:
        """A valid payload about someone else than its topic names."""
        rng = self.rng
        for _ in range(10):
            a, b = rng.sample(self.known_nodes, 2)
            self.add(
                self.t.node_state(a), _j(_state(b)), "node/topic mismatch", "node state", LIGHTING
            )
            self.add(self.t.node_ack(a), _j(_ack(b)), "node/topic mismatch", "node ack", LIGHTING)
            s1, s2 = rng.sample(self.known_segments, 2)
            self.add(
                self.t.traffic_count(s1),
                _j(_count(s2)),
                "node/topic mismatch",
                "traffic count",
                LIGHTING,
            )
            (x1, c1), (x2, c2) = rng.sample(self.cameras, 2)
            self.add(
                camera_topic(self.t, x1, c1),
                _j(_camera(x2, c2)),
                "node/topic mismatch",
                "camera counts",
                SIGNALS,
            )

    def strangers(self) -> None:
        """Nodes, roads and intersections that are not in the config."""
        for i in range(30):
            ghost = f"GHOST-{i:03d}"
            self.add(
                self.t.node_state(ghost),
                _j(_state(ghost)),
                "not in the config",
                "node state",
                LIGHTING,
            )
            self.add(
                self.t.node_availability(ghost),
                b"online",
                "not in the config",
                "node availability",
                LIGHTING,
            )
            self.add(
                self.t.node_ack(ghost), _j(_ack(ghost)), "not in the config", "node ack", LIGHTING
            )
            # Documented: a count for a road this controller does not light is not an error,
            # a camera of another controller's intersection is not ours; a bad count is bad
            # whatever the road.
            road = f"other-road-{i}"
            self.add(
                self.t.traffic_count(road),
                _j(_count(road)),
                "not in the config",
                "traffic count",
                IGNORED,
            )
            self.add(
                self.t.traffic_count(road),
                b"\x00garbage",
                "not in the config",
                "traffic count",
                LIGHTING,
            )
            x = f"other-x-{i}"
            self.add(
                camera_topic(self.t, x, "cam"),
                _j(_camera(x, "cam")),
                "not in the config",
                "camera counts",
                IGNORED,
            )
            self.add(
                camera_topic(self.t, x, "cam"),
                b"\x00garbage",
                "not in the config",
                "camera counts",
                IGNORED,
            )

    def wildcard_ids(self) -> None:
        """Ids that look like wildcards or like known ids, and an empty topic level (MQTT forbids
        a real + or # in a topic one publishes to: clients and the broker refuse it)."""
        ids = [
            "＋",
            "＃",
            "%2B",
            "%23",
            "*",
            "?",
            "..",
            ".",
            " ",
            "QL-001 ",
            "ql-001",
            "QL‐001",
            "$SYS",
            "x" * 5000,
        ]
        for node in ids:
            payload = _j(_state(node))
            self.add(
                self.t.node_state(node), payload, "wildcard-looking ids", "node state", LIGHTING
            )
            self.add(
                self.t.node_availability(node),
                b"online",
                "wildcard-looking ids",
                "node availability",
                LIGHTING,
            )
            self.add(
                self.t.traffic_count(node),
                _j(_count("ql1a-centre")),
                "wildcard-looking ids",
                "traffic count",
                LIGHTING,
            )
            x, cam = self.cameras[0]
            self.add(
                camera_topic(self.t, x, node),
                _j(_camera(x, cam)),
                "wildcard-looking ids",
                "camera counts",
                SIGNALS,
            )
        # An empty level: a subscription's + matches it, the protocol has no such id.
        empty = [
            (self.t.node_state(""), "node state", LIGHTING),
            (self.t.node_ack(""), "node ack", LIGHTING),
            (self.t.traffic_count(""), "traffic count", LIGHTING),
            (camera_topic(self.t, "", "cam-lct-n"), "camera counts", SIGNALS),
            (camera_topic(self.t, "ql1a-lct", ""), "camera counts", SIGNALS),
        ]
        for topic, family, by in empty:
            self.add(topic, b'{"v":1}', "wildcard-looking ids", family, by)

    def huge(self) -> None:
        """256 KiB and 5 MiB: random bytes, a valid-looking document with a huge field, and
        one with a huge list."""
        for size in (256 * 1024, 5 * 1024 * 1024):
            for family, topic, by, valid in self.targets():
                self.add(topic, self.rng.randbytes(size), "huge messages", family, by)
                if valid is None:
                    self.add(topic, b"online" + b" x" * (size // 2), "huge messages", family, by)
                    continue
                data = valid()
                key = self.rng.choice([k for k in data if k not in ("v", "ts")])
                data[key] = "9" * size
                self.add(topic, _j(data), "huge messages", family, by)
                data = valid()
                # A valid document with a huge extra key would be fine (unknown keys are
                # ignored); with a huge list where the protocol has a short one it is not.
                if family == "node state":
                    data["faults"] = ["driver_failure"] * (size // 17)
                elif family == "camera counts":
                    data["lanes"] = data["lanes"] * (size // 45)
                else:
                    data["padding"] = "p" * size
                    data["v"] = 2
                self.add(topic, _j(data), "huge messages", family, by)

    def nested(self) -> None:
        """Brackets nested 64 to 200,000 deep, alone and in place of a field; an unclosed object."""
        for depth in (64, 900, 5000, 200_000):
            for family, topic, by, valid in self.targets():
                deep = "[" * depth + "]" * depth
                self.add(topic, deep.encode(), "deeply nested JSON", family, by)
                if valid is not None:
                    data = _j(valid())
                    key = self.rng.choice([k for k in valid() if k != "v"])
                    text = data.decode().replace(
                        f'"{key}": {json.dumps(valid()[key])}', f'"{key}": {deep}', 1
                    )
                    self.add(topic, text.encode(), "deeply nested JSON", family, by)
            self.add(
                self.t.node_state(self.known_nodes[0]),
                b"{" * depth,
                "deeply nested JSON",
                "node state",
                LIGHTING,
            )

    def unknown_topics(self) -> None:
        """Under the prefix but outside what the controller subscribes to."""
        n = self.known_nodes[0]
        root = self.t.root
        topics = [
            f"{root}/lights/node/{n}",
            f"{root}/lights/node/{n}/state/extra",
            f"{root}/lights/node/{n}/fault",
            f"{root}/lights/node/{n}/STATE",
            f"{root}/lights/nodes/{n}/state",
            f"{root}/traffic/segment/ql1a-centre/count/x",
            f"{root}/traffic/segment/ql1a-centre/counts",
            f"{root}/signals/ql1a-lct/camera/cam-lct-n/count",
            f"{root}/signals/ql1a-lct/camera/cam-lct-n/counts/x",
            f"{root}/signals/ql1a-lct/cameras/cam-lct-n/counts",
            f"{self.t.prefix}/v2/lights/node/{n}/state",
            f"{self.t.prefix}/v1",
            f"{self.t.prefix}/v1/",
            f"{self.t.prefix}//v1/lights/node/{n}/state",
        ]
        for topic in topics:
            self.add(topic, _j(_state(n, level=99.0)), "unknown topics", "other", UNROUTED)
            self.add(topic, self.rng.randbytes(64), "unknown topics", "other", UNROUTED)

    def ignored_by_rule(self) -> None:
        """Inputs the protocol tells the controller to ignore without counting them."""
        n = self.known_nodes[1]
        seg = self.known_segments[0]
        x, cam = self.cameras[0]
        self.add(self.t.node_state(n), b"", "empty (retained cleared)", "node state", IGNORED)
        self.add(
            self.t.node_availability(n),
            b"",
            "empty (retained cleared)",
            "node availability",
            IGNORED,
        )
        self.add(
            self.t.node_state("GHOST-1"), b"", "empty (retained cleared)", "node state", IGNORED
        )
        self.add(
            self.t.traffic_count(seg), b"", "empty (retained cleared)", "traffic count", IGNORED
        )
        self.add(
            camera_topic(self.t, x, cam), b"", "empty (retained cleared)", "camera counts", IGNORED
        )
        # A retained camera count is an old interval: ignored when the broker hands it over
        # at a (re)subscription. Sent live it reaches subscribers as a fresh message (MQTT
        # clears the retain flag): then it is judged like any other.
        self.add(
            camera_topic(self.t, x, cam),
            b"\x00garbage",
            "retained garbage",
            "camera counts",
            SIGNALS,
            retain=True,
        )

    def build(self) -> list[Msg]:
        self.random_bytes(40)
        self.wrong_shapes(30)
        self.wrong_types(60)
        self.out_of_range()
        self.wrong_version()
        self.mismatches()
        self.strangers()
        self.wildcard_ids()
        self.huge()
        self.nested()
        self.unknown_topics()
        self.ignored_by_rule()
        out = self.out
        # Interleave the kinds (seeded), so no kind meets a controller that only saw its own.
        self.rng.shuffle(out)
        return out


# -- what the controller decides -------------------------------------------------------------


def decisions(ctl: Controller) -> dict[str, Any]:
    """Everything garbage must not change: node states and alarms, what every group wants and
    why (its traffic class included), and every camera zone's last reading."""
    core = ctl.lighting.core
    nodes = {n: core.node_state(n) for _, n, _, _ in ctl.cfg.nodes()}
    groups = [
        (g.group, g.level, g.source, g.detail, g.lighting_class, g.nodes_converged, g.nodes_offline)
        for g in core.status()
    ]
    cams = {}
    assert ctl.signals is not None
    for xid, r in ctl.signals.runners.items():
        for d in r.control.detectors._dets.values():
            if d.kind is DetectorKind.CAMERA:
                cams[(xid, d.id)] = (d.cam_t, d.cam_queue, d.cam_interval)
    return {
        "nodes": nodes,
        "alarms": {n: sorted(a) for n, a in core.faults.active.items()},
        "groups": groups,
        "cameras": cams,
        "node states accepted": ctl.lighting.stats.states,
        "counts accepted": ctl.lighting.stats.counts,
        "rejections": ctl.lighting.stats.rejections,
    }


def _spy(
    handler: MessageHandler, counter: DropCounter, seen: Counter[tuple[str, bytes, int]]
) -> MessageHandler:
    def spied(topic: str, payload: bytes, retained: bool) -> Any:
        n = counter.total
        result = handler(topic, payload, retained)
        assert result is None, "the controller's handlers are synchronous"
        seen[(topic, _digest(payload), counter.total - n)] += 1
        return None

    return spied


def _misjudged(msgs: list[Msg], seen: Counter[tuple[str, bytes, int]]) -> list[str]:
    """The messages whose fate was not the one the protocol gives them."""
    left = Counter(seen)
    out = []
    for m in msgs:
        if m.outcome == UNROUTED:
            continue
        want = 1 if m.outcome in (LIGHTING, SIGNALS) else 0
        key = (m.topic, _digest(m.payload))
        if left[(*key, want)] > 0:
            left[(*key, want)] -= 1
            continue
        got = "not delivered" if left[(*key, 1 - want)] == 0 else f"drops +{1 - want}"
        out.append(f"{m.kind} on {m.family} ({m.topic[-40:]}): {m.payload[:90]!r} → {got}")
    return out


def _digest(payload: bytes) -> bytes:
    # The spy keeps digests, not the payloads (megabytes each): RSS measures the controller.
    return hashlib.blake2b(payload, digest_size=16).digest()


def _rss() -> float:
    """Resident memory after a collection, with free heap pages handed back (glibc): what the
    process still holds, not what its allocator keeps around for later."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _rss_mb()


async def test_garbage_on_every_subscribed_topic_is_dropped_counted_and_changes_nothing(
    site: Site,
) -> None:
    ctl = site.controller
    assert ctl.signals is not None
    segments = [g.traffic_segment for g in site.cfg.lighting.groups if g.traffic_segment]
    cameras = sorted(
        {
            (x.id, d.camera)
            for x in site.cfg.signals.intersections
            for d in x.detectors
            if d.camera is not None
        }
    )
    fuzz = Fuzz(random.Random(SEED), site.topics, site.nodes, segments, cameras)
    msgs = fuzz.build()
    kinds = Counter(m.kind for m in msgs)
    outcomes = Counter(m.outcome for m in msgs)
    families = {m.family for m in msgs if m.outcome != UNROUTED}
    topics_used = {m.topic for m in msgs}
    print(f"\nseed {SEED}: {len(msgs)} messages, {dict(kinds)}")

    # Watch each handler: which message made which counter move. Only for the failure
    # message (which payload was not dropped); the assertions use the counters themselves.
    observed: Counter[tuple[str, bytes, int]] = Counter()
    for sub in ctl.link._subs:
        counter = ctl.signals.drops if "/camera/" in sub.pattern else ctl.lighting.drops
        sub.handler = _spy(sub.handler, counter, observed)

    before = decisions(ctl)
    ctl.healthy()  # primes its "has every intersection stepped since" memory
    link = ctl.link.stats
    received0, errors0, disconnects0 = link.received, link.handler_errors, link.disconnects
    ldrops0, sdrops0 = ctl.lighting.drops.total, ctl.signals.drops.total
    rss0 = _rss()

    t0 = time.monotonic()
    # QoS 1: the broker delivers each message (the controller subscribes with QoS 1) and the
    # test broker queues up to 100,000 of them, so every count below is exact.
    for k in range(0, len(msgs), 10):
        await asyncio.gather(
            *(
                site.pub.publish(m.topic, m.payload, qos=1, retain=m.retain)
                for m in msgs[k : k + 10]
            )
        )
    sent_s = time.monotonic() - t0

    # Right after the flood, valid messages on three topics must still go through promptly.
    node = site.nodes[7]
    state = ctl.lighting.core.node_state(node)
    assert state is not None
    fresh = state.model_copy(
        update={"energy_wh": state.energy_wh + 1.0, "burn_h": state.burn_h + 0.001}
    )
    seg = segments[0]
    x, cam = "ql1a-lct", "cam-lct-n"
    runner = ctl.signals.runners[x]
    cams_before = runner.stats.camera_messages
    t_valid = time.monotonic()
    await site.pub.publish(site.topics.node_state(node), encode(fresh), qos=1, retain=True)
    # 123 vehicles a minute is busy: the group's class stays where it is (checked below).
    await site.pub.publish(site.topics.traffic_count(seg), _j(_count(seg, vehicles=123)), qos=1)
    await site.pub.publish(
        camera_topic(site.topics, x, cam),
        _j(_camera(x, cam, lanes=[{"lane": 1, "group": "N_T", "count": 3, "queue": 11}])),
        qos=1,
    )
    counts0 = before["counts accepted"]
    states0 = before["node states accepted"]

    def valid_processed() -> bool:
        return (
            ctl.lighting.core.node_state(node) == fresh
            and ctl.lighting.stats.counts == counts0 + 1
            and runner.stats.camera_messages == cams_before + 1
        )

    lost = 0
    try:
        await wait_for(
            valid_processed, 30, interval=0.01, what="the valid messages after the flood"
        )
    except TimeoutError:
        lost = sum(
            [
                ctl.lighting.core.node_state(node) != fresh,
                ctl.lighting.stats.counts != counts0 + 1,
                runner.stats.camera_messages != cams_before + 1,
            ]
        )
    valid_s = time.monotonic() - t_valid
    processed_s = time.monotonic() - t0
    routed = sum(1 for m in msgs if m.outcome != UNROUTED) + 3
    await wait_for(lambda: link.received - received0 >= routed, 10, what="every message received")
    await asyncio.sleep(0.3)  # anything still in flight (there should be nothing) arrives
    rss1 = _rss()

    after = decisions(ctl)
    ldrops = ctl.lighting.drops.total - ldrops0
    sdrops = ctl.signals.drops.total - sdrops0
    # The three valid messages are the only changes.
    expected_after = dict(before)
    expected_after["nodes"] = {**before["nodes"], node: fresh}
    expected_after["node states accepted"] = states0 + 1
    expected_after["counts accepted"] = counts0 + 1
    cam_det = [
        k for k in after["cameras"] if k[0] == x and after["cameras"][k] != before["cameras"][k]
    ]
    expected_after["cameras"] = {**before["cameras"], **{k: after["cameras"][k] for k in cam_det}}
    summary = (
        f"{len(msgs)} payloads of {len(kinds)} kinds on {len(topics_used)} topics"
        f" ({len(families)} subscribed families); lighting dropped {ldrops}/{outcomes[LIGHTING]},"
        f" signals dropped {sdrops}/{outcomes[SIGNALS]}, {outcomes[IGNORED]} ignored by rule,"
        f" {outcomes[UNROUTED]} unrouted; valid messages after the flood processed"
        f" {valid_s:.2f} s after sending ({processed_s:.1f} s after the flood began, sent in"
        f" {sent_s:.1f} s); RSS {rss0:.0f} → {rss1:.0f} MB; seed {SEED}"
    )
    print(summary)
    print(ctl.lighting.drops.summary())
    print(ctl.signals.drops.summary())
    print("by reason:", dict(ctl.lighting.drops.by_reason.most_common(12)))
    report(
        "MQTT payload fuzz",
        recovery_s=None,
        lost=lost,
        detail=summary,
    )
    wrong = _misjudged(msgs, observed)
    assert not wrong, "\n".join([f"{len(wrong)} messages misjudged:", *wrong[:60]])
    assert lost == 0
    assert ctl.healthy() is None and ctl.link.connected
    assert link.disconnects == disconnects0, "the controller lost its broker connection"
    assert link.handler_errors == errors0, "a handler raised instead of dropping"
    assert link.received - received0 == routed, "a message not accounted for"
    assert ldrops == outcomes[LIGHTING], dict(ctl.lighting.drops.by_reason)
    assert sdrops == outcomes[SIGNALS], dict(ctl.signals.drops.by_reason)
    assert {k: v for k, v in after.items() if k != "cameras"} == {
        k: v for k, v in expected_after.items() if k != "cameras"
    }
    assert cam_det and all(k[1].startswith("N_T") for k in cam_det), cam_det
    assert after["cameras"] == expected_after["cameras"]
    assert valid_s < 5.0
    assert rss1 - rss0 < 32, f"RSS grew {rss1 - rss0:.0f} MB"


async def test_a_message_over_the_shipped_packet_limit_ends_at_the_broker(
    tmp_path: Path, mqtt_prefix: str
) -> None:
    """The shipped broker config caps a packet at 256 KiB: a client that sends more is
    disconnected by the broker, and the controller never sees the message."""
    limit = _shipped_max_packet_size()
    broker = Mosquitto(tmp_path / "limited", extra_config=f"max_packet_size {limit}")
    broker.start()
    try:
        cfg = district(mqtt_prefix)
        settings = MqttSettings(host=broker.host, port=broker.port)
        ctl = Controller(cfg, clock=ManualClock(NOW), mqtt=settings, signals=False)
        await ctl.start()
        pub = MqttLink(
            MqttSettings(
                host=broker.host,
                port=broker.port,
                client_id=f"big-{mqtt_prefix}",
                reconnect_min_s=0.1,
            )
        )
        task = asyncio.create_task(pub.run())
        try:
            assert await ctl.link.wait_connected(10) and await pub.wait_connected(10)
            topics = Topics(mqtt_prefix)
            node = next(n for _, n, _, _ in cfg.nodes())
            received0 = ctl.link.stats.received
            drops0 = ctl.lighting.drops.total
            # Just under the limit: delivered, then dropped and counted as garbage.
            under = b"x" * (limit - 1024)
            await pub.publish(topics.node_state(node), under, qos=1)
            await wait_for(
                lambda: ctl.lighting.drops.total == drops0 + 1, 10, what="drop under the limit"
            )
            # Over it: the broker cuts the sender; nothing reaches the controller.
            # QoS 0: there is no PUBACK to wait for, the broker just hangs up.
            with contextlib.suppress(LinkDown):
                await pub.publish(topics.node_state(node), b"x" * (limit + 1), qos=0)
            await wait_for(
                lambda: pub.stats.disconnects >= 1, 10, what="the broker drops the sender"
            )
            await wait_for(lambda: pub.connected, 10, what="the sender reconnects")
            await pub.publish(topics.traffic_count("ql1a-centre"), b"after", qos=1)
            await wait_for(
                lambda: ctl.lighting.drops.total == drops0 + 2, 10, what="the next message"
            )
            got = ctl.link.stats.received - received0
            connected = ctl.link.connected and ctl.link.stats.disconnects == 0
            detail = (
                f"max_packet_size {limit}: {limit - 1024} B delivered and dropped as garbage;"
                f" {limit + 1} B: sender disconnected by the broker"
                f" ({pub.stats.disconnects} disconnect), controller received {got} of 3"
                f" (the oversize one never), stayed connected: {connected}"
            )
            report(
                "MQTT message over the broker's size limit",
                recovery_s=None,
                lost=None,
                detail=detail,
            )
            assert got == 2 and connected
        finally:
            await pub.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await ctl.stop()
            ctl.close()
    finally:
        broker.stop()


def _shipped_max_packet_size() -> int:
    conf = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "cityctl.conf"
    for line in conf.read_text().splitlines():
        if line.startswith("max_packet_size "):
            return int(line.split()[1])
    raise AssertionError("deploy/mosquitto/cityctl.conf sets no max_packet_size")
