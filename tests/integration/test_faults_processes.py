"""Fault survival with real processes: the broker and the controller die by SIGKILL.

Both tests run ``cityctl run`` as a child process on the machine's clock against a real
Mosquitto, with the shipped district's 200 light nodes simulated in this process
(:class:`~simulator.lights.LightSimulator`) and everything judged by an independent MQTT
client (:class:`Watcher`) and the controller's HTTP API, never through the controller's own
objects. The schedule is the shipped district's groups with one clock-time program (``p``,
no ramps) in a fixed-offset zone where it is now early evening, so the levels the nodes must
show are known from the steps alone (:func:`level_of`), not from the controller's code.

1. **Broker killed.** Overrides stream in over the API (a new group command every 0.1 s),
   a schedule transition is saved to fall inside the outage, and the broker is SIGKILLed
   right after an override was accepted. While it is down, more overrides are accepted and
   the transition passes. It comes back on the same port, empty (no persistence): every
   node must end on its group's latest command, the retained commands must be the ones for
   *now* with a fresh ``issued``, and nothing may be lost.
2. **Controller killed.** With simulated signal cabinets (``cityctl sim cabinets``), an
   override, a new schedule version and an acknowledged incident are made over the API; the
   controller is SIGKILLed just before a transition of the new version and started again on
   the same state directory. The lights must follow the new process within 3 s of its start,
   the intersections must be handed back — adopted as they stand when the cabinet still
   follows the old process (a stage, or a stage change under way: no change on the heads,
   within 3 s), otherwise through the cabinet's own clearances — and none of the state may
   be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from controller.config import CityConfig, parse_config
from controller.signals.service import link_for, with_cabinets
from devices.cabinet import CabinetMode, CabinetStatus, FaultCode, RegisterError, SignalCode
from devices.lights import LightCommand, NodeMode, NodeState, PayloadError, Topics, decode
from devices.modbus import CabinetError, CabinetLink
from devices.mqtt import MqttLink, MqttSettings
from simulator.lights import LightSimulator, NodeSpec
from tests.faults import report
from tests.helpers import Mosquitto, wait_for

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
CITYCTL = [sys.executable, "-m", "controller.cli"]
TOKEN_ENV = "CITYCTL_FAULT_TEST_TOKEN"
TOKEN = f"fault-test-{uuid.uuid4().hex}"  # an engineer's token (at least 16 characters)
#: The override stream's groups (88 nodes); the other 112 follow program ``p``.
STREAM_GROUPS = ("ql1a", "le-cong-thanh")
#: How long the broker stays dead: beyond every client's reconnect cap, so the test sees the
#: slowest return (the wait between attempts doubles up to the cap).
OUTAGE_S = 8.0

# -- the schedule ------------------------------------------------------------------------------


def evening_zone(now: dt.datetime) -> str:
    """A fixed-offset zone in which it is now between 15:00 and 20:59, far from noon and midnight
    (a night runs from noon to noon: every step of the test's program falls inside one)."""
    for k in range(-12, 15):
        if 15 <= (now.hour + k) % 24 <= 20:
            # Etc/GMT zones have inverted signs: Etc/GMT-7 is UTC+7.
            return f"Etc/GMT{-k:+d}" if k else "Etc/GMT"
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Step:
    """One step of program ``p``: from ``at`` (whole seconds, aware) the level is ``level``."""

    at: dt.datetime
    level: float

    def item(self, tz: dt.tzinfo) -> dict[str, Any]:
        """As config.yaml and the API write it."""
        return {"at": self.at.astimezone(tz).strftime("%H:%M:%S"), "level": self.level}


def level_of(steps: list[Step], at: dt.datetime) -> float:
    """The level program ``p`` gives at ``at``: the latest step at or before it (the test's
    own oracle; every step lies within one evening, so no night-boundary rules apply)."""
    level = 0.0
    for s in sorted(steps, key=lambda s: s.at):
        if s.at <= at:
            level = s.level
    return level


def whole_second_after(t: dt.datetime, seconds: float) -> dt.datetime:
    """The first whole second at least ``seconds`` after ``t`` (steps have 1 s resolution)."""
    later = t + dt.timedelta(seconds=seconds)
    return later.replace(microsecond=0) + dt.timedelta(seconds=1 if later.microsecond else 0)


def write_config(
    path: Path,
    broker: Mosquitto,
    prefix: str,
    *,
    zone: str,
    steps: list[Step],
    signals: bool,
    lighting: dict[str, Any] | None = None,
) -> CityConfig:
    """The shipped district under a test prefix, every group on program ``p``; returns the
    parsed config (for its groups and nodes)."""
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    tz = ZoneInfo(zone)
    data["site"]["timezone"] = zone
    data["mqtt"].update(url=broker.url, prefix=prefix)
    lt = data["lighting"]
    lt["programs"] = [{"name": "p", "steps": [s.item(tz) for s in steps]}]
    lt["calendars"] = []
    lt["overrides"] = []
    for g in lt["groups"]:
        g.pop("calendar", None)
        g["program"] = "p"
    for key, value in (lighting or {}).items():
        # One level deep: {"faults": {"settle_s": 2}} changes one threshold, keeps the rest.
        old = lt.get(key)
        lt[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    data["api"] = {
        "host": "127.0.0.1",
        "port": 0,  # a free one, read from the log: no race with the test's other sockets
        "tokens": [{"name": "fault-test", "role": "engineer", "token_env": TOKEN_ENV}],
    }
    if not signals:
        data.pop("signals", None)
    text = yaml.safe_dump(data, allow_unicode=True)
    path.write_text(text)
    cfg, _ = parse_config(text)
    return cfg


# -- processes -----------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The test's environment (CITYCTL_STATE_DIR included) plus the API token."""
    return {**os.environ, "PYTHONPATH": str(ROOT), TOKEN_ENV: TOKEN}


class Cityctl:
    """``cityctl run`` as a child process; its output goes to ``log`` (appended across runs)."""

    def __init__(self, config: Path, log: Path, *extra: str) -> None:
        self.args = [*CITYCTL, "run", "--config", str(config), "--log-level", "INFO", *extra]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> float:
        """Start it; returns ``time.monotonic()`` taken just before the fork."""
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"--- start {self.starts}\n".encode())
            out.flush()
            t0 = time.monotonic()
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT
            )
        return t0

    def sigkill(self) -> float:
        """SIGKILL (a crash: no goodbye, no clean shutdown); returns when it died."""
        assert self.proc is not None and self.proc.poll() is None, self.tail()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)
        return time.monotonic()

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL if it hangs); the exit code, None if it was not running."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            return None

    def alive(self) -> bool:
        """True while the child runs."""
        return self.proc is not None and self.proc.poll() is None

    def api_url(self) -> str | None:
        """The API's address as the current run logged it (None: not listening yet)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return None
        run = text.rpartition(f"--- start {self.starts}\n")[2]
        found = re.search(r"API and page on (http://\S+)", run)
        return found[1] if found else None

    def tail(self, lines: int = 60) -> str:
        """The end of its output, for failure messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])


class CabinetSim:
    """``cityctl sim cabinets`` on free ports, with cameras on the broker."""

    def __init__(self, config: Path, log: Path, broker: Mosquitto) -> None:
        self.log = log
        self.args = [
            *CITYCTL,
            "sim",
            "cabinets",
            "--config",
            str(config),
            "--port-base",
            "0",
            "--broker",
            broker.url,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the child process."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT
            )

    def cabinet_flags(self) -> list[str] | None:
        """The ``--cabinet ID=HOST:PORT`` options it logged once listening (None: not yet)."""
        assert self.proc is not None
        assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
        for line in self.log.read_text(errors="replace").splitlines():
            if "point a controller at them" in line:
                words = line.split()
                return [w for i, w in enumerate(words) if i and words[i - 1] == "--cabinet"]
        return None

    def stop(self) -> None:
        """SIGINT and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- the independent observer ------------------------------------------------------------------


@dataclass
class GroupCmd:
    """A group command as the watcher received it."""

    arrived: float  # time.monotonic()
    group: str
    cmd: LightCommand
    retained: bool


@dataclass
class Watcher:
    """An MQTT client of its own that keeps the latest message of every topic under the
    prefix, each node's state and availability, and every group and node command it saw."""

    broker: Mosquitto
    topics: Topics
    latest: dict[str, bytes] = field(default_factory=dict)
    states: dict[str, NodeState] = field(default_factory=dict)
    availability: dict[str, str] = field(default_factory=dict)
    group_cmds: list[GroupCmd] = field(default_factory=list)
    node_cmds: int = 0
    #: Every message on a controller's availability topic: (arrival, payload).
    controller_availability: list[tuple[float, bytes]] = field(default_factory=list)
    link: MqttLink | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect (and reconnect within 0.1 s of a broker's return, so it measures
        the others, not its own backoff)."""
        self.link = MqttLink(
            MqttSettings(
                host=self.broker.host,
                port=self.broker.port,
                client_id=f"watch-{uuid.uuid4().hex[:8]}",
                reconnect_min_s=0.05,
                reconnect_max_s=0.1,
            )
        )
        self.link.subscribe(f"{self.topics.root}/#", self._on_message)
        self._task = asyncio.create_task(self.link.run())
        assert await self.link.wait_connected(10)

    async def close(self) -> None:
        """Disconnect."""
        if self.link is not None:
            await self.link.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def forget(self) -> None:
        """Drop what was seen (the broker restarted empty: only what arrives now counts)."""
        self.latest.clear()
        self.states.clear()
        self.availability.clear()

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self.latest[topic] = payload
        if topic.startswith(f"{self.topics.root}/controller/") and topic.endswith("/availability"):
            self.controller_availability.append((time.monotonic(), payload))
        parsed = self.topics.node_from(topic)
        if parsed is not None:
            node, leaf = parsed
            if leaf == "state" and payload:
                with contextlib.suppress(PayloadError):
                    self.states[node] = decode(NodeState, payload)
            elif leaf == "availability":
                self.availability[node] = payload.decode()
            elif leaf == "set":
                self.node_cmds += 1
            return
        head = f"{self.topics.root}/lights/group/"
        if topic.startswith(head) and topic.endswith("/set") and payload:
            group = topic[len(head) : -len("/set")]
            cmd = decode(LightCommand, payload)
            self.group_cmds.append(GroupCmd(time.monotonic(), group, cmd, retained))

    def group_cmd(self, group: str) -> LightCommand | None:
        """The latest command on the group's topic."""
        raw = self.latest.get(self.topics.group_set(group))
        return decode(LightCommand, raw) if raw else None

    def signal_status(self, xid: str) -> dict[str, Any]:
        """The latest retained status of an intersection ({} if none)."""
        raw = self.latest.get(f"{self.topics.root}/signals/{xid}/status")
        return json.loads(raw) if raw else {}


async def retained_on_broker(broker: Mosquitto, patterns: list[str]) -> dict[str, bytes]:
    """What a brand-new client gets as retained messages on ``patterns`` (read for 0.5 s)."""
    got: dict[str, bytes] = {}

    def keep(topic: str, payload: bytes, retained: bool) -> None:
        if retained:
            got[topic] = payload

    link = MqttLink(
        MqttSettings(host=broker.host, port=broker.port, client_id=f"ret-{uuid.uuid4().hex[:8]}")
    )
    for p in patterns:
        link.subscribe(p, keep)
    task = asyncio.create_task(link.run())
    try:
        assert await link.wait_connected(5)
        await asyncio.sleep(0.5)
    finally:
        await link.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return got


async def first_time(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float, interval: float = 0.02
) -> float | None:
    """``time.monotonic()`` when ``predicate`` first held, None if not within ``timeout``
    (a measurement: the caller reports it before asserting on it)."""
    try:
        await wait_for(predicate, timeout, interval)
    except TimeoutError:
        return None
    return time.monotonic()


# -- fixtures ------------------------------------------------------------------------------------


@dataclass
class District:
    """The parsed config, the simulated nodes and the watcher of one test."""

    cfg: CityConfig
    sim: LightSimulator
    watcher: Watcher

    @property
    def nodes(self) -> dict[str, str]:
        """Node id → group id."""
        return {n: g.id for g, n, _, _ in self.cfg.nodes()}

    def off_level(self, want: dict[str, float]) -> list[str]:
        """Nodes whose reported state is not in remote mode at their group's wanted level."""
        out = []
        for n, g in self.nodes.items():
            st = self.watcher.states.get(n)
            if st is None or st.mode is not NodeMode.REMOTE or abs(st.level - want[g]) > 0.5:
                out.append(n)
        return out

    def off_command(self, cmds: Mapping[str, LightCommand | None]) -> list[str]:
        """Nodes whose state does not acknowledge their group's command in ``cmds``."""
        out = []
        for n, g in self.nodes.items():
            st = self.watcher.states.get(n)
            cmd = cmds.get(g)
            if st is None or cmd is None or st.cmd_id != cmd.cmd_id:
                out.append(n)
        return out


@pytest.fixture
async def watcher(mosquitto: Mosquitto, mqtt_prefix: str) -> AsyncIterator[Watcher]:
    w = Watcher(mosquitto, Topics(mqtt_prefix))
    await w.start()
    try:
        yield w
    finally:
        await w.close()


async def start_district(
    cfg: CityConfig, mosquitto: Mosquitto, prefix: str, watcher: Watcher
) -> District:
    """The config's 200 nodes on the broker, with the product's reconnect settings."""
    specs = [NodeSpec(n, g.id, w, m) for g, n, w, m in cfg.nodes()]
    sim = LightSimulator(
        mosquitto.url, specs, prefix=prefix, fallback_after_s=cfg.lighting.fallback_after_s
    )
    await sim.start(wait_s=30)
    assert sim.stats.online == len(specs)
    return District(cfg, sim, watcher)


def api_client() -> httpx.AsyncClient:
    """An engineer's client of the controller's API (:func:`api_up` points it at the API)."""
    return httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)


async def api_up(api: httpx.AsyncClient, ctl: Cityctl) -> bool:
    """Whether the API of the controller's current run answers (and point ``api`` at it)."""
    url = ctl.api_url()
    if url is None:
        return False
    api.base_url = httpx.URL(url)
    try:
        return (await api.get("/api/v1/health")).status_code == 200
    except httpx.TransportError:
        return False


# -- 1. the broker dies ------------------------------------------------------------------------


async def test_broker_sigkill_mid_stream_loses_no_command(
    mosquitto: Mosquitto, mqtt_prefix: str, watcher: Watcher, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    zone = evening_zone(now)
    tz = ZoneInfo(zone)
    steps = [
        Step((now - dt.timedelta(minutes=10)).replace(microsecond=0), 70.0),
        Step((now + dt.timedelta(hours=1)).replace(microsecond=0), 0.0),
    ]
    cfg = write_config(
        tmp_path / "city.yaml",
        mosquitto,
        mqtt_prefix,
        zone=zone,
        steps=steps,
        signals=False,
    )
    d = await start_district(cfg, mosquitto, mqtt_prefix, watcher)
    ctl = Cityctl(tmp_path / "city.yaml", tmp_path / "cityctl.log")
    topics = watcher.topics
    ctl_online = topics.controller_availability(cfg.controller.id)
    groups = [g.id for g in cfg.lighting.groups]
    ctl.start()
    stream: list[tuple[float, float, int]] = []  # (time, level, HTTP status)
    try:
        async with api_client() as api:
            assert await first_time(lambda: api_up(api, ctl), 20, 0.1), ctl.tail()
            want = dict.fromkeys(groups, 70.0)
            assert await first_time(lambda: not d.off_level(want), 15), ctl.tail()
            assert watcher.latest.get(ctl_online) == b"online"

            # Overrides stream in: a new command for 88 nodes every 0.1 s.
            levels = [50.0, 55.0, 60.0, 65.0]
            until = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()

            async def post_override(level: float) -> int:
                r = await api.post(
                    "/api/v1/overrides",
                    json={
                        "groups": list(STREAM_GROUPS),
                        "level": level,
                        "until": until,
                        "reason": "fault test stream",
                    },
                )
                stream.append((time.monotonic(), level, r.status_code))
                return r.status_code

            async def override_stream(stop: asyncio.Event) -> None:
                k = 0
                while not stop.is_set():
                    await post_override(levels[k % len(levels)])
                    k += 1
                    await asyncio.sleep(0.1)

            stop_stream = asyncio.Event()
            streamer = asyncio.create_task(override_stream(stop_stream))
            await asyncio.sleep(1.0)
            # A transition of the schedule that falls inside the outage: 70 % → 40 %. The kill
            # comes 2 s before it; a save that took longer than the margin (a loaded machine:
            # the controller serves the stream meanwhile) is made again with a later one.
            for attempt in range(3):
                cur = (await api.get("/api/v1/schedules")).json()
                margin = 3.0 + 3.0 * attempt
                transition = Step(whole_second_after(dt.datetime.now(dt.UTC), margin), 40.0)
                new_steps = [steps[0], transition, steps[1]]
                t_put = time.monotonic()
                r = await api.put(
                    "/api/v1/schedules/programs/p",
                    json={
                        "base_version": cur["version"],
                        "item": {"name": "p", "steps": [s.item(tz) for s in new_steps]},
                        "comment": "dim at the transition (falls in the broker outage)",
                    },
                )
                put_s = time.monotonic() - t_put
                assert r.status_code == 200, r.text
                # Kill 2 s before the transition, right after an override was accepted: its
                # command is on its way to 88 nodes when the broker dies.
                lead = (transition.at - dt.datetime.now(dt.UTC)).total_seconds() - 2.0
                if lead > 0:
                    break
            assert lead > 0, f"three schedule saves took too long (the last {put_s:.1f} s)"
            await asyncio.sleep(lead)
            assert await post_override(42.0) == 201
            mosquitto.kill()
            t_kill = time.monotonic()
            stream_at_kill = len(stream)
            # What the watcher saw up to the kill: the latest command of each group and the
            # nodes that had not yet confirmed it (in flight when the broker died).
            sent_before = {(c.group, c.cmd.cmd_id) for c in watcher.group_cmds}
            last_before = {c.group: c.cmd for c in watcher.group_cmds}
            in_flight = len(d.off_command(last_before))
            # While the broker is down the overrides keep coming and the transition passes.
            await asyncio.sleep(3.0)
            stop_stream.set()
            await streamer
            final_level = 33.0
            assert await post_override(final_level) == 201
            accepted_down = [s for s in stream[stream_at_kill:] if s[2] == 201]
            # Long enough for every client's reconnect backoff to reach its cap (the
            # controller's mqtt.reconnect_max_s 2 s, the nodes' 3 s): the worst case.
            await asyncio.sleep(max(0.0, t_kill + OUTAGE_S - time.monotonic()))
            assert dt.datetime.now(dt.UTC) > transition.at
            assert ctl.alive(), ctl.tail()
            # Taken before the restart: restart() returns once the broker accepts connections,
            # and a controller retrying its connection may get in (and announce) before that.
            back_wall = dt.datetime.now(dt.UTC)
            mosquitto.restart()  # same port, empty: nothing retained survives
            t_back = time.monotonic()
            watcher.forget()
            outage = t_back - t_kill

            want = {
                g: final_level if g in STREAM_GROUPS else level_of(new_steps, back_wall)
                for g in groups
            }
            assert set(want.values()) == {final_level, 40.0}

            def fresh_cmds() -> dict[str, LightCommand | None]:
                return {g: watcher.group_cmd(g) for g in groups}

            seen_back: dict[str, float] = {}

            def recovered() -> bool:
                if watcher.latest.get(ctl_online) != b"online":
                    return False
                seen_back.setdefault("controller", time.monotonic() - t_back)
                if sum(1 for n in d.nodes if watcher.availability.get(n) == "online") < 200:
                    return False
                seen_back.setdefault("nodes", time.monotonic() - t_back)
                cmds = fresh_cmds()
                for g, c in cmds.items():
                    if c is None or abs(c.level - want[g]) > 1e-6 or c.issued < back_wall:
                        return False
                return not d.off_level(want) and not d.off_command(cmds)

            t_ok = await first_time(recovered, 15)
            recovery = None if t_ok is None else t_ok - t_back
            # Give late retries a moment, then count what did not arrive.
            await asyncio.sleep(0.5)
            cmds = fresh_cmds()
            lost_nodes = sorted(set(d.off_command(cmds)) | set(d.off_level(want)))
            lost = len(lost_nodes)
            retained = await retained_on_broker(
                mosquitto, [f"{topics.root}/lights/group/+/set", f"{topics.root}/controller/+/+"]
            )
            on_broker = {
                g: decode(LightCommand, retained[topics.group_set(g)])
                for g in groups
                if topics.group_set(g) in retained
            }
            sent_after = {(c.group, c.cmd.cmd_id) for c in watcher.group_cmds if c.arrived > t_back}
            view: list[dict[str, Any]] = []
            stats = d.sim.stats
            published = len(sent_before) + len(sent_after - sent_before)
            detail = (
                f"outage {outage:.1f} s; after the broker's return: controller online"
                f" {seen_back.get('controller', math.nan):.2f} s, 200 nodes online"
                f" {seen_back.get('nodes', math.nan):.2f} s, all converged"
                f" {recovery if recovery is not None else math.nan:.2f} s;"
                f" {len(stream)} overrides accepted ({len(accepted_down)} while down) + 1"
                f" schedule transition while down; {published} distinct group commands published"
                f" ({len(sent_after)} after the restart), {in_flight} nodes had not confirmed"
                f" the latest when the broker died; {watcher.node_cmds} node retries;"
                f" {200 - lost}/200 nodes on their group's latest command;"
                f" retained: {len(on_broker)}/{len(groups)} group commands for now;"
                f" sim: {stats.commands_applied} applied, {stats.commands_duplicate} duplicate,"
                f" {stats.commands_stale} stale, {stats.invalid} invalid"
            )
            report(
                "broker killed (SIGKILL) and restarted",
                recovery_s=recovery,
                lost=lost,
                detail=detail,
            )

            assert t_ok is not None, (
                f"not recovered within 15 s: off level {d.off_level(want)[:10]}, "
                f"off command {d.off_command(fresh_cmds())[:10]}\n{ctl.tail()}"
            )
            assert recovery is not None and recovery <= 5.0, detail
            assert lost == 0, lost_nodes[:20]
            # Nothing stale on the broker: each group's retained command is the one for now,
            # issued after the broker came back, and the one every node acknowledged.
            assert set(on_broker) == set(groups), sorted(retained)
            for g, c in on_broker.items():
                assert abs(c.level - want[g]) < 1e-6, (g, c)
                assert c.issued >= back_wall, (g, c.issued, back_wall)
                acked = cmds[g]
                assert acked is not None and c.cmd_id == acked.cmd_id, (g, c, acked)
            assert retained.get(ctl_online) == b"online"

            # The controller's own view agrees: every node follows, nothing offline.
            # The controller's own view agrees (it hears the same states a moment later, so
            # give it a moment): every group at its level, every node following, none offline.
            async def controller_agrees() -> bool:
                view[:] = (await api.get("/api/v1/groups")).json()
                return all(
                    gv["level"] == want[gv["id"]]
                    and gv["nodes_following"] == gv["nodes"]
                    and gv["nodes_offline"] == 0
                    for gv in view
                )

            agrees = await first_time(controller_agrees, 5, 0.1)
            assert agrees is not None, [
                {k: gv[k] for k in ("id", "level", "nodes", "nodes_following", "nodes_offline")}
                for gv in view
            ]
            assert stats.commands_stale == 0 and stats.invalid == 0, stats
            assert all(s[2] == 201 for s in stream), [s for s in stream if s[2] != 201]
    finally:
        rc = ctl.stop()
        await d.sim.stop()
    assert rc == 0, ctl.tail()


# -- 2. the controller dies ----------------------------------------------------------------------


@dataclass
class CabinetProbe:
    """Reads one cabinet's status registers every 50 ms over its own Modbus connection (a
    second client, as a bench tester would): who drives the heads, seen from the cabinet."""

    xid: str
    link: CabinetLink
    polls: list[tuple[float, CabinetStatus]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False

    def start(self) -> None:
        """Poll in the background."""
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(CabinetError, RegisterError):
                self.polls.append((time.monotonic(), await self.link.read_status()))
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop polling and close the connection."""
        self._stopping = True
        task = self._task
        # Cancel until it ends: a cancellation that lands inside pymodbus' own timeout
        # handling can be swallowed (Python 3.11), and the flag ends the loop anyway.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        await self.link.close()

    def since(self, t: float) -> list[tuple[float, CabinetStatus]]:
        """The polls after ``t``."""
        return [(at, st) for at, st in self.polls if at > t]

    def first_write_after(self, t: float) -> float | None:
        """When the heartbeat register first moved after ``t`` (a controller writing again)."""
        polls = self.since(t)
        if not polls:
            return None
        frozen = polls[0][1].last_heartbeat
        return next((at for at, st in polls if st.last_heartbeat != frozen), None)


async def test_controller_sigkill_restart_converges_and_keeps_state(
    mosquitto: Mosquitto, mqtt_prefix: str, watcher: Watcher, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    zone = evening_zone(now)
    tz = ZoneInfo(zone)
    steps = [
        Step((now - dt.timedelta(minutes=10)).replace(microsecond=0), 70.0),
        Step((now + dt.timedelta(hours=1)).replace(microsecond=0), 0.0),
    ]
    config = tmp_path / "city.yaml"
    cfg = write_config(
        config,
        mosquitto,
        mqtt_prefix,
        zone=zone,
        steps=steps,
        signals=True,
        # Judge power (and recompute) every 2 s, so the lamp fault's incident opens at once.
        lighting={"tick_s": 2, "faults": {"settle_s": 2}},
    )
    xs = {x.id: x for x in cfg.intersections()}
    assert len(xs) >= 2
    d = await start_district(cfg, mosquitto, mqtt_prefix, watcher)
    cabinets = CabinetSim(config, tmp_path / "cabinets.log", mosquitto)
    probes: list[CabinetProbe] = []
    ctl: Cityctl | None = None
    groups = [g.id for g in cfg.lighting.groups]
    park, faulty = "nam-cao-park", "LCT-007"
    try:
        cabinets.start()
        flags = await wait_for(cabinets.cabinet_flags, 20, 0.1, what="cabinets listening")
        assert flags is not None
        addresses = {}
        for flag in flags:
            xid, _, addr = flag.partition("=")
            host, _, port = addr.rpartition(":")
            addresses[xid] = (host, int(port))
        assert set(addresses) == set(xs)
        for x in with_cabinets(list(xs.values()), addresses):
            probe = CabinetProbe(x.id, link_for(x, name=f"probe {x.id}"))
            probe.start()
            probes.append(probe)
        ctl = Cityctl(config, tmp_path / "cityctl.log", *(f"--cabinet={f}" for f in flags))
        # A dark lamp from the start: its incident opens while the cabinets are handed over.
        d.sim.inject(faulty, "lamp_failure")
        ctl.start()
        async with api_client() as api:

            async def syncs() -> dict[str, str]:
                try:
                    r = await api.get("/api/v1/intersections")
                except httpx.TransportError:
                    return {}
                return {i["intersection"]: i["sync"] for i in r.json()} if r.is_success else {}

            async def all_in_control() -> bool:
                got = await syncs()
                return set(got) == set(xs) and set(got.values()) == {"control"}

            assert await first_time(lambda: api_up(api, ctl), 20, 0.1), ctl.tail()
            # The controller process runs on uvloop (its default: controller/cli.py).
            assert "event loop: uvloop" in ctl.log.read_text(errors="replace"), ctl.tail()
            # State made over the API before the crash: an override, an acknowledged
            # incident, a new schedule version.
            until = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
            r = await api.post(
                "/api/v1/overrides",
                json={"groups": [park], "level": 35, "until": until, "reason": "fault test"},
            )
            assert r.status_code == 201, r.text
            override = r.json()
            want = {g: 35.0 if g == park else 70.0 for g in groups}
            assert await first_time(lambda: not d.off_level(want), 15), ctl.tail()
            assert await first_time(all_in_control, 20, 0.1), (await syncs(), ctl.tail())

            async def open_incidents() -> list[dict[str, Any]]:
                r = await api.get("/api/v1/incidents", params={"open": True, "device": faulty})
                return [i for i in r.json() if i["fault_kind"] == "lamp_failure"]

            async def open_incident() -> dict[str, Any] | None:
                found = await open_incidents()
                return found[0] if found else None

            incident = await wait_for(open_incident, 15, 0.2, what="lamp failure incident")
            r = await api.post(
                f"/api/v1/incidents/{incident['id']}/acknowledge", json={"note": "crew sent"}
            )
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "acknowledged"
            base = (await api.get("/api/v1/schedules")).json()["version"]
            # The new version dims to 60 % now and to 45 % at a transition that falls while
            # the controller is dead (the new process must recompute, not replay).
            transition = Step(whole_second_after(dt.datetime.now(dt.UTC), 3.5), 45.0)
            new_steps = [Step(steps[0].at, 60.0), transition, steps[1]]
            r = await api.put(
                "/api/v1/schedules/programs/p",
                json={
                    "base_version": base,
                    "item": {"name": "p", "steps": [s.item(tz) for s in new_steps]},
                    "comment": "dimmer tonight",
                },
            )
            assert r.status_code == 200, r.text
            made = r.json()["version"]
            history = (await api.get("/api/v1/schedules/versions")).json()
            want = {g: 35.0 if g == park else 60.0 for g in groups}
            assert await first_time(lambda: not d.off_level(want), 10), ctl.tail()
            lead = (transition.at - dt.datetime.now(dt.UTC)).total_seconds() - 0.5
            assert lead > 0, "the schedule save took too long; the kill would miss the transition"
            await asyncio.sleep(lead)

            t_kill = ctl.sigkill()
            t_start = ctl.start()
            start_wall = dt.datetime.now(dt.UTC)
            want = {g: 35.0 if g == park else 45.0 for g in groups}

            def new_cmds() -> dict[str, LightCommand | None]:
                """Each group's latest command published by the new process."""
                out: dict[str, LightCommand | None] = dict.fromkeys(groups)
                for c in watcher.group_cmds:
                    if c.arrived > t_start and c.cmd.issued >= start_wall:
                        out[c.group] = c.cmd
                return out

            def lights_converged() -> bool:
                cmds = new_cmds()
                if any(c is None or abs(c.level - want[g]) > 1e-6 for g, c in cmds.items()):
                    return False
                return not d.off_level(want) and not d.off_command(cmds)

            control_at: dict[str, float] = {}

            async def signals_converged() -> bool:
                for xid, sync in (await syncs()).items():
                    if sync == "control":
                        control_at.setdefault(xid, time.monotonic())
                return set(control_at) == set(xs)

            lights_task = asyncio.create_task(first_time(lights_converged, 20))
            api_at = await first_time(lambda: api_up(api, ctl), 20, 0.05)
            signals_at = await first_time(signals_converged, 40, 0.05)
            lights_at = await lights_task

            # What survived: the override, the version history, the acknowledgement.
            overrides = (await api.get("/api/v1/overrides")).json()
            kept_override = [o for o in overrides if o["id"] == override["id"]]
            current = (await api.get("/api/v1/schedules")).json()
            history_after = (await api.get("/api/v1/schedules/versions")).json()
            inc_after = (await api.get(f"/api/v1/incidents/{incident['id']}")).json()
            still_open = [i["id"] for i in await open_incidents()]
            lost_state = [
                what
                for what, ok in (
                    ("override", len(kept_override) == 1 and kept_override[0]["level"] == 35),
                    ("schedule version", current["version"] == made and history_after == history),
                    ("incident acknowledgement", inc_after["state"] == "acknowledged"),
                    # The fault is still there: the same case, not a second one.
                    ("incident", still_open == [incident["id"]]),
                )
                if not ok
            ]
            statuses = (await api.get("/api/v1/intersections")).json()

        def rel(t: float | None) -> float:
            return math.nan if t is None else t - t_start

        # The cabinets' side of it, from the probes: when the new process first wrote, when
        # the cabinet went to its local plan (asked to, or by its own heartbeat watchdog),
        # and when it handed the heads back in all red; or, with no local plan, whether the
        # heads stayed as the old process left them until the new one had them.
        cab: dict[str, dict[str, float | None]] = {}
        watchdog = []
        adopted = {st["intersection"]: st["stats"]["adoptions"] for st in statuses}
        unchanged: dict[str, bool] = {}
        clearing: dict[str, bool] = {}  # a clearance under way when the old process died
        for p in probes:
            after = p.since(t_kill)
            left = [st for at, st in after if at > t_kill + 0.05 and at <= control_at[p.xid]]
            unchanged[p.xid] = bool(left) and all(
                st.following and st.displayed == left[0].displayed for st in left
            )
            clearing[p.xid] = bool(left) and any(
                c in (SignalCode.YELLOW, SignalCode.PED_CLEARANCE) for c in left[0].displayed
            )
            local = next((at for at, st in after if st.mode is CabinetMode.LOCAL_PLAN), None)
            handed = next(
                (
                    at
                    for at, st in after
                    if local is not None and at > local and st.following and st.all_red
                ),
                None,
            )
            if any(st.fault is FaultCode.HEARTBEAT_LOST for _, st in after):
                watchdog.append(p.xid)
            cab[p.xid] = {"written": p.first_write_after(t_kill), "local": local, "handed": handed}
        will = [at for at, payload in watcher.controller_availability if at > t_kill]
        will_payloads = [payload for at, payload in watcher.controller_availability if at > t_kill]
        lights_s, signals_s = rel(lights_at), rel(signals_at)
        recovery = None if lights_at is None or signals_at is None else max(lights_s, signals_s)

        def how(xid: str, c: dict[str, float | None]) -> str:
            if c["local"] is not None:
                return f"its own clearance {rel(c['handed']) - rel(c['local']):.1f} s"
            if adopted.get(xid):
                return "adopted in a clearance" if clearing[xid] else "adopted as shown"
            return "all red handed over"

        per_x = "; ".join(
            f"{xid}: cabinet written {rel(c['written']):.2f} s, {how(xid, c)},"
            f" in control {rel(control_at.get(xid)):.2f} s"
            for xid, c in sorted(cab.items())
        )
        detail = (
            f"from the new process's start: 200 nodes on its commands at the recomputed level"
            f" {lights_s:.2f} s, API {rel(api_at):.2f} s; {per_x}"
            f"{'; cabinet watchdog fired: ' + ', '.join(watchdog) if watchdog else ''};"
            f" kept: override, {len(history_after)} schedule versions (current {made}),"
            f" incident {incident['id']} {inc_after['state']}; lost: {', '.join(lost_state) or 'none'}"
        )
        report(
            "controller killed (SIGKILL) and restarted",
            recovery_s=recovery,
            lost=len(lost_state),
            detail=detail,
        )

        assert lights_at is not None and lights_s <= 3.0, detail
        assert not lost_state, detail
        # The dead process's last will, then the new one's announcement.
        assert will_payloads[:2] == [b"offline", b"online"], will_payloads
        assert will[0] < t_start + 1.0
        # The intersections: the new process reaches every cabinet within 3 s of its start
        # (within the cabinets' 2 s heartbeat timeout after the kill, so they still follow the
        # old outputs). Whatever the old process showed — a stage, a stage change, all red —
        # is taken over as it stands: in control within 3 s of the start, no change on the
        # heads, no local plan. Only a cabinet whose watchdog fired before the new process
        # reached it comes back through its own clearances (its local plan winds the greens
        # down to all red: minimum greens and pedestrian clearances hold), and the controller
        # takes the heads as soon as the cabinet hands them over.
        assert signals_at is not None, (detail, ctl.tail())
        for xid, c in cab.items():
            written, handed = c["written"], c["handed"]
            assert written is not None and written - t_start <= 3.0, (xid, detail)
            if xid not in watchdog:
                assert c["local"] is None, (xid, detail)
            if c["local"] is None:
                assert unchanged[xid] and control_at[xid] - t_start <= 3.0, (xid, detail)
            else:
                assert not adopted[xid], (xid, detail)
                assert handed is not None and control_at[xid] - handed <= 1.0, (xid, detail)
        for st in statuses:
            assert st["sync"] == "control" and st["control"]["violations"] == 0, st
            assert st["cabinet"]["fault"] is None, st
    finally:
        rc = ctl.stop() if ctl is not None else None
        for p in probes:
            await p.stop()
        cabinets.stop()
        await d.sim.stop()
    assert rc == 0, ctl.tail() if ctl else ""
