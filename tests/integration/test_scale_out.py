"""Scale-out by district: two `cityctl run --district` processes share one real Mosquitto.

The shipped city (200 light nodes in 8 groups, 2 intersections) is split into two districts of
one config file. Each district runs in its own `cityctl run --district D` process; the nodes
of both districts are simulated in this process, the cabinets (and their cameras) by
`cityctl sim cabinets`. What each instance publishes is judged by the broker's own debug log
(`Received PUBLISH from <client id>`), not by the controllers' word; what the nodes do is seen
by an independent MQTT client.

Then one instance is killed (SIGKILL: its last will fires) and restarted: the other district
must not notice, the killed district's lights keep their level (their fallback only starts
after `fallback_after_s`, far longer than this test), and the restart converges it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from controller.clock import ManualClock
from controller.config import CityConfig, parse_config
from controller.runtime import Controller
from controller.telemetry.lineproto import parse as parse_line
from controller.telemetry.outbox import iter_lines, open_readonly
from devices.lights import NodeState, Topics, decode
from devices.mqtt import MqttLink, MqttSettings
from schedules.evaluate import level_at
from simulator.lights import LightSimulator, NodeSpec
from tests.faults import report
from tests.helpers import Mosquitto, free_port, wait_for
from tests.integration.test_cli_processes import evening_zone

CITYCTL = [sys.executable, "-m", "controller.cli"]
ROOT = Path(__file__).resolve().parents[2]
DISTRICTS = {
    "north": {
        "name": "North",
        "groups": ["ql1a", "le-cong-thanh", "lam-ha", "junction-ql1a-lct"],
        "intersections": ["ql1a-lct"],
    },
    "south": {
        "name": "South",
        "groups": ["tran-hung-dao", "bien-hoa", "nam-cao-park", "school-crossing"],
        "intersections": ["ql1a-thd"],
    },
}
#: Every program is one level from ten minutes ago until fifty minutes from now, a different
#: level per program, so a group commanded by the wrong instance would show.
LEVELS = {
    "arterial": 80.0,
    "arterial-weekend": 80.0,
    "festival": 90.0,
    "residential": 50.0,
    "park": 30.0,
    "dusk-to-dawn": 100.0,
}
PUBLISH = re.compile(r"Received PUBLISH from (\S+) \(d\d, q\d, r\d, m\d+, '([^']*)'")


def city_config(url: str, prefix: str, api_ports: dict[str, int]) -> dict[str, Any]:
    """The shipped city in two districts, on a test prefix, lit now at fixed levels."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "config.yaml").read_text())
    zone = evening_zone(dt.datetime.now(dt.UTC))  # 15:00–20:59 there: far from noon
    local = dt.datetime.now(ZoneInfo(zone))
    on = (local - dt.timedelta(minutes=10)).strftime("%H:%M:%S")
    off = (local + dt.timedelta(minutes=50)).strftime("%H:%M:%S")
    data["site"]["timezone"] = zone
    for p in data["lighting"]["programs"]:
        p["steps"] = [{"at": on, "level": LEVELS[p["name"]]}, {"at": off, "level": 0}]
    # Group commands every 5 s (the nodes' heartbeat) so a quiet instance shows in seconds;
    # the nodes fall back only after 15 min of silence.
    data["lighting"].update(overrides=[], tick_s=1, refresh_s=5, fallback_after_s=900)
    data["mqtt"] = {"url": url, "prefix": prefix}
    data["telemetry"]["intervals"]["health_s"] = 1
    data["api"] = {"open_reads": True}
    data["districts"] = {d: {**spec, "api_port": api_ports[d]} for d, spec in DISTRICTS.items()}
    return data


@dataclass
class Seen:
    """Every message an independent client saw, in order, and the latest per topic."""

    topics: Topics
    log: list[tuple[float, str, bytes]] = field(default_factory=list)
    latest: dict[str, bytes] = field(default_factory=dict)

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self.log.append((time.monotonic(), topic, payload))
        self.latest[topic] = payload

    def state(self, node: str) -> NodeState | None:
        raw = self.latest.get(self.topics.node_state(node))
        return decode(NodeState, raw) if raw else None

    def json(self, topic: str) -> dict[str, Any]:
        raw = self.latest.get(topic)
        return json.loads(raw) if raw else {}

    def index_of(self, topic: str, payload: bytes) -> int:
        """Position of the last message ``payload`` on ``topic``."""
        for i in range(len(self.log) - 1, -1, -1):
            if self.log[i][1] == topic and self.log[i][2] == payload:
                return i
        raise AssertionError(f"never saw {payload!r} on {topic}")


@dataclass
class City:
    """The full config, who owns what, and the topics each instance alone may write."""

    cfg: CityConfig
    topics: Topics

    def instance(self, district: str) -> str:
        return f"{self.cfg.controller.id}.{district}"

    @property
    def owner(self) -> dict[str, str]:
        """Topic → the only instance (controller id = MQTT client id) allowed to publish it."""
        t = self.topics
        out: dict[str, str] = {}
        for d in self.cfg.districts:
            own = self.cfg.for_district(d)
            me = own.controller.id
            for g in own.lighting.groups:
                out[t.group_set(g.id)] = out[t.group_fallback(g.id)] = me
            for _, n, _, _ in own.nodes():
                out[t.node_set(n)] = out[t.node_alarms(n)] = me
            for x in own.signals.intersections:
                out[f"{t.root}/signals/{x.id}/status"] = me
            for topic in (t.controller_availability, t.controller_lighting, t.controller_telemetry):
                out[topic(me)] = me
        return out

    def nodes(self, district: str) -> list[str]:
        return [n for _, n, _, _ in self.cfg.for_district(district).nodes()]

    def wanted(self) -> dict[str, float]:
        now = dt.datetime.now(dt.UTC)
        return {
            n: level_at(self.cfg.group_schedule(g.id, overrides=()), now)
            for g, n, _, _ in self.cfg.nodes()
        }


def off_level(seen: Seen, city: City, nodes: list[str]) -> list[str]:
    """Nodes not (or not yet) at their group's wanted level under the controller's command."""
    want = city.wanted()
    out = []
    for n in nodes:
        st = seen.state(n)
        if st is None or st.mode.value != "remote" or abs(st.level - want[n]) > 0.5:
            out.append(n)
    return out


class Processes:
    """The test's child processes, each logging to its own file; stopped at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.env.pop("CITYCTL_DISTRICT", None)
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    async def start(self, name: str, *args: str) -> asyncio.subprocess.Process:
        with open(self.log(name), "ab") as out:  # the child keeps its own descriptor
            proc = await asyncio.create_subprocess_exec(
                *CITYCTL, *args, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        self.procs[name] = proc
        return proc

    async def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        proc = self.procs[name]
        if proc.returncode is None:
            proc.send_signal(sig)
        return await asyncio.wait_for(proc.wait(), 20)

    async def close(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    def tails(self) -> str:
        out = []
        for name in self.procs:
            text = self.log(name).read_text(errors="replace").splitlines()
            out.append(f"--- {name} ---\n" + "\n".join(text[-25:]))
        return "\n".join(out)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto that logs every PUBLISH with the client id that sent it."""
    b = Mosquitto(tmp_path / "mosquitto", extra_config="log_type debug")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
async def seen(broker: Mosquitto, mqtt_prefix: str) -> AsyncIterator[Seen]:
    topics = Topics(mqtt_prefix)
    obs = Seen(topics)
    link = MqttLink(
        MqttSettings(host=broker.host, port=broker.port, client_id=f"obs-{mqtt_prefix}")
    )
    link.subscribe(f"{topics.root}/#", obs.on_message)
    task = asyncio.create_task(link.run())
    assert await link.wait_connected(10)
    yield obs
    await link.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def cabinet_flags(procs: Processes) -> dict[str, str]:
    """``intersection → --cabinet value`` that `cityctl sim cabinets` printed."""

    def flags() -> dict[str, str]:
        text = procs.log("cabinets").read_text(errors="replace")
        return {m[1]: m[0] for m in re.findall(r"--cabinet ((\S+)=\S+:\d+)", text)}

    return await wait_for(lambda: len(flags()) == 2 and flags(), 30, what="the cabinets' ports")


def health_points(outbox: Path) -> list[dict[str, Any]]:
    """Every ``controller_health`` point of an outbox, its tags and fields merged."""
    db = open_readonly(outbox)
    try:
        out = []
        for _, line in iter_lines(db):
            p = parse_line(line)
            if p.measurement == "controller_health":
                out.append({**dict(p.tags), **dict(p.fields)})
        return out
    finally:
        db.close()


@pytest.mark.faults
async def test_two_district_instances_share_one_broker_without_interfering(
    broker: Mosquitto, seen: Seen, mqtt_prefix: str, tmp_path: Path, _state_dir: Path
) -> None:
    ports = {d: free_port() for d in DISTRICTS}
    data = city_config(broker.url, mqtt_prefix, ports)
    path = tmp_path / "city.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    cfg, _ = parse_config(path.read_text())
    city = City(cfg, seen.topics)
    t = seen.topics
    north, south = city.instance("north"), city.instance("south")
    owner = city.owner
    settings = MqttSettings(
        host=broker.host, port=broker.port, reconnect_min_s=0.1, reconnect_max_s=0.5
    )
    specs = [NodeSpec(n, g.id, w, m) for g, n, w, m in cfg.nodes()]
    sim = LightSimulator(
        settings, specs, prefix=mqtt_prefix, fallback_after_s=900, report_interval_s=5.0
    )
    procs = Processes(tmp_path)
    await sim.start(wait_s=30)
    try:
        await procs.start(
            "cabinets", "sim", "cabinets", "--config", str(path), "--port-base", "0",
            "--broker", broker.url,
        )  # fmt: skip
        cabinets = await cabinet_flags(procs)

        def run_args(d: str) -> list[str]:
            flags = [a for x in DISTRICTS[d]["intersections"] for a in ("--cabinet", cabinets[x])]
            return ["run", "--config", str(path), "--district", d, *flags]

        t_start = time.monotonic()
        for d in DISTRICTS:
            await procs.start(d, *run_args(d))

        # -- both districts up: their own identities, every light at its level ------------
        for me in (north, south):
            await wait_for(
                lambda me=me: seen.latest.get(t.controller_availability(me)) == b"online",
                30,
                what=f"{me} online",
            )
        everyone = [n for _, n, _, _ in cfg.nodes()]
        await wait_for(lambda: not off_level(seen, city, everyone), 20, what="200 nodes at level")
        converged_s = time.monotonic() - t_start

        def sync(x: str) -> Any:
            return seen.json(f"{t.root}/signals/{x}/status").get("sync")

        await wait_for(
            lambda: sync("ql1a-lct") == sync("ql1a-thd") == "control",
            40,
            what="both intersections in control",
        )
        # each API serves its own district
        async with httpx.AsyncClient(timeout=5) as http:
            for d in DISTRICTS:
                base = f"http://127.0.0.1:{ports[d]}/api/v1"
                groups = (await http.get(f"{base}/groups")).json()
                assert [g["id"] for g in groups] == DISTRICTS[d]["groups"]
                xs = (await http.get(f"{base}/intersections")).json()
                assert [x["intersection"] for x in xs] == DISTRICTS[d]["intersections"]
        south_cmds = {n: seen.state(n).cmd_id for n in city.nodes("south")}  # type: ignore[union-attr]
        old_cmds = {
            g.id: json.loads(seen.latest[t.group_set(g.id)])["cmd_id"] for g in cfg.lighting.groups
        }

        # -- north killed: its will fires; south carries on and touches nothing of north's --
        await procs.stop("north", signal.SIGKILL)
        await wait_for(
            lambda: seen.latest.get(t.controller_availability(north)) == b"offline",
            10,
            what="north's last will",
        )
        # The broker handles a client's messages in order, so nothing north sent can arrive
        # after its will: whatever comes later on north's topics came from someone else.
        will_at = seen.index_of(t.controller_availability(north), b"offline")
        await asyncio.sleep(7.0)  # more than one refresh period of south's group commands
        after = seen.log[will_at + 1 :]
        north_topics = {tp for tp, who in owner.items() if who == north}
        intruding = [tp for _, tp, _ in after if tp in north_topics]
        assert not intruding, f"north's topics written while north was dead: {intruding[:5]}"
        refreshed = {tp for _, tp, _ in after}
        for g in DISTRICTS["south"]["groups"]:
            assert t.group_set(g) in refreshed, f"south stopped commanding {g}"
        assert f"{t.root}/signals/ql1a-thd/status" in refreshed
        assert sync("ql1a-thd") == "control"
        # the lights of both districts stay where they were: north's under the retained
        # commands north left (fresh enough for 15 minutes), south's under south
        stray = off_level(seen, city, everyone)
        assert not stray, f"lights left their level while north was dead: {stray[:5]}"

        # -- north restarted: it re-announces and its district converges again -------------
        t_restart = time.monotonic()
        restart_at = len(seen.log)
        await procs.start("north", *run_args("north"))
        await wait_for(
            lambda: seen.latest.get(t.controller_availability(north)) == b"online",
            30,
            what="north back online",
        )

        def north_follows_new_commands() -> bool:
            for g in cfg.for_district("north").lighting.groups:
                raw = seen.latest.get(t.group_set(g.id))
                cmd = json.loads(raw)["cmd_id"] if raw else None
                if cmd is None or cmd == old_cmds[g.id]:
                    return False  # a new boot gives new command ids
                if any(getattr(seen.state(n), "cmd_id", None) != cmd for n in g.node_ids()):
                    return False
            return not off_level(seen, city, city.nodes("north"))

        await wait_for(north_follows_new_commands, 30, what="north's nodes follow the new north")
        lights_recovery_s = time.monotonic() - t_restart
        lct = f"{t.root}/signals/ql1a-lct/status"

        def lct_since_restart() -> list[str]:
            return [json.loads(p)["sync"] for _, tp, p in seen.log[restart_at:] if tp == lct]

        # The retained status still says what the killed north last published: wait for the
        # new north's own word. Its cabinet ran its local plan meanwhile, so it hands over.
        await wait_for(
            lambda: lct_since_restart()[-1:] == ["control"], 45, what="ql1a-lct back in control"
        )
        signals_recovery_s = time.monotonic() - t_restart
        assert "handover" in lct_since_restart(), lct_since_restart()
        # south never noticed: the very same commands, every node still following them
        moved = [n for n in city.nodes("south") if seen.state(n).cmd_id != south_cmds[n]]  # type: ignore[union-attr]
        assert not moved, f"south's nodes got new commands: {moved[:5]}"
        assert sync("ql1a-thd") == "control"

        # -- clean stop: each says goodbye on its own availability topic ------------------
        for d in DISTRICTS:
            assert await procs.stop(d) == 0
        for me in (north, south):
            assert seen.latest.get(t.controller_availability(me)) == b"offline"
    except BaseException:
        print(procs.tails())
        print(f"--- mosquitto ---\n{broker.log_tail(20)}")
        raise
    finally:
        await procs.close()
        await sim.stop()

    # -- who published what, by the broker's own account ------------------------------------
    by_client: dict[str, int] = {}
    group_cmds: dict[str, int] = {}
    wrong: list[str] = []
    for client, topic in PUBLISH.findall(broker.log_path.read_text(errors="replace")):
        who = owner.get(topic)
        if who is None:
            continue  # the nodes' own topics, the cameras', the observer's
        by_client[client] = by_client.get(client, 0) + 1
        if topic.startswith(f"{t.root}/lights/group/") and topic.endswith("/set"):
            group_cmds[client] = group_cmds.get(client, 0) + 1
        if client != who:
            wrong.append(f"{client} → {topic}")
    assert not wrong, f"instances wrote topics of another district: {wrong[:5]}"
    assert set(by_client) == {north, south}, by_client
    assert set(group_cmds) == {north, south}, group_cmds

    # -- own state, own telemetry: nobody counted the other's nodes as bad or offline -------
    foreign = {}
    for d in DISTRICTS:
        outbox = _state_dir / d / "telemetry.sqlite"
        assert (_state_dir / d / "workbench.sqlite").exists()
        points = health_points(outbox)
        me = city.instance(d)
        assert points and {p["controller"] for p in points} == {me}
        assert max(p["dropped_payloads"] for p in points) == 0, d
        assert max(p["nodes_online"] for p in points) == len(city.nodes(d))
        foreign[d] = max(p["foreign_messages"] for p in points)
        assert foreign[d] > 0, f"{d} never saw the other district's messages"
        log_text = procs.log(d).read_text(errors="replace")
        assert "dropped bad" not in log_text and "unknown node" not in log_text, d
    assert not (_state_dir / "workbench.sqlite").exists()  # nothing shared at the top

    report(
        "one of two district instances killed and restarted",
        recovery_s=lights_recovery_s,
        lost=len(intruding) + len(stray) + len(moved) + len(wrong),
        detail=(
            f"200 nodes of 2 districts at level {converged_s:.1f} s after start; north killed:"
            f" south kept {len(DISTRICTS['south']['groups'])} groups and ql1a-thd in control,"
            f" 0 writes on north's topics, 0 lights moved; north restarted: its 126 nodes"
            f" followed its new commands in {lights_recovery_s:.1f} s, ql1a-lct handed over and"
            f" back in control in {signals_recovery_s:.1f} s; group commands by north"
            f" {group_cmds[north]},"
            f" by south {group_cmds[south]}, by anyone else 0; foreign messages ignored:"
            f" north {foreign['north']}, south {foreign['south']}, drops 0"
        ),
    )


class AclMosquitto(Mosquitto):
    """A Mosquitto with passwords and the ACL make_acl.py writes; no anonymous clients."""

    def __init__(self, workdir: Path, acl: Path, passwd: Path) -> None:
        super().__init__(workdir)
        self.acl, self.passwd = acl, passwd

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous false",
            f"password_file {self.passwd}",
            f"acl_file {self.acl}",
            "persistence false",
            "log_dest stderr",
            "log_type all",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to `mosquitto`, who cannot read tmp_path
        self.config_path.write_text("\n".join(lines) + "\n")


async def test_the_broker_keeps_each_group_to_its_own_district_instance(
    tmp_path: Path, mqtt_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ACL make_acl.py writes for a districted config, enforced by a real Mosquitto: the
    north instance (logged in as `cityctl-controller-north`, derived from `mqtt.username`)
    commands its groups and reads every node, but may not command a south group."""
    sys.path.insert(0, str(ROOT / "deploy" / "mosquitto"))
    try:
        import make_acl
    finally:
        sys.path.remove(str(ROOT / "deploy" / "mosquitto"))
    data = city_config("mqtt://127.0.0.1:1", mqtt_prefix, {d: 0 for d in DISTRICTS})
    data["mqtt"].update(username="cityctl-controller", password_env="CITYCTL_TEST_MQTT_PW")
    cfg, _ = parse_config(yaml.safe_dump(data, allow_unicode=True))
    work = tmp_path / "broker"
    work.mkdir()
    (work / "cityctl.acl").write_text(make_acl.build_acl(cfg))
    secrets = {
        "cityctl-controller-north": "north-secret",
        "cityctl-controller-south": "south-secret",
        "QL-001": "ql-secret",
        "THD-001": "thd-secret",
    }
    assert set(secrets) <= set(make_acl.usernames(cfg))
    users = tmp_path / "users.txt"
    users.write_text("".join(f"{u}:{p}\n" for u, p in secrets.items()))
    subprocess.run(
        ["bash", str(ROOT / "deploy/mosquitto/make_passwd.sh"), str(work / "passwd"), str(users)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    broker = AclMosquitto(work, work / "cityctl.acl", work / "passwd")
    broker.start()
    t = Topics(mqtt_prefix)
    got: dict[str, list[tuple[str, bytes]]] = {}
    links: list[tuple[MqttLink, asyncio.Task[None]]] = []

    async def client(user: str, *subscriptions: str) -> MqttLink:
        link = MqttLink(
            MqttSettings(
                host=broker.host,
                port=broker.port,
                client_id=f"{user}-test",
                username=user,
                password=secrets[user],
            )
        )
        for sub in subscriptions:
            link.subscribe(
                sub, lambda tp, p, r, user=user: got.setdefault(user, []).append((tp, p))
            )
        links.append((link, asyncio.create_task(link.run())))
        assert await link.wait_connected(10), f"{user} could not log in"
        return link

    monkeypatch.setenv("CITYCTL_TEST_MQTT_PW", secrets["cityctl-controller-north"])
    city = cfg.model_copy(
        update={"mqtt": cfg.mqtt.model_copy(update={"url": broker.url})}
    )  # the broker's port is known only now
    ctl = Controller(
        city, clock=ManualClock(dt.datetime.now(dt.UTC)), district="north", signals=False
    )
    try:
        assert ctl.link.settings.username == "cityctl-controller-north"
        await client("QL-001", t.group_set("ql1a"))
        thd = await client("THD-001", t.group_set("tran-hung-dao"))
        await ctl.start()
        assert await ctl.link.wait_connected(10)
        # north's own group command reaches north's node
        await wait_for(
            lambda: [tp for tp, _ in got.get("QL-001", [])][:1] == [t.group_set("ql1a")], 10
        )
        # a south node's state reaches the north instance (read on the wildcard), as foreign
        await thd.publish(t.node_state("THD-001"), b'{"v": 1}', qos=1)
        await wait_for(lambda: ctl.lighting.stats.foreign >= 1, 10, what="a foreign state")
        assert ctl.lighting.drops.total == 0
        # the north user may not command a south group: Mosquitto drops it, THD-001 never sees it
        rogue = await client("cityctl-controller-north")
        await rogue.publish(t.group_set("tran-hung-dao"), b'{"from": "north"}', qos=1, retain=True)
        # south's own publish after it: delivered in order, so north's would have come first
        south = await client("cityctl-controller-south")
        await south.publish(t.group_set("tran-hung-dao"), b'{"from": "south"}', qos=1)
        await wait_for(lambda: got.get("THD-001"), 10, what="south's message")
        assert got["THD-001"] == [(t.group_set("tran-hung-dao"), b'{"from": "south"}')]
        log = broker.log_path.read_text(errors="replace")
        assert "Denied PUBLISH from cityctl-controller-north-test" in log
        print(
            f"ACL: {len(make_acl.usernames(cfg))} users; north instance commanded ql1a, read a"
            " south node's state (foreign), was denied south's group topic"
        )
    finally:
        await ctl.stop()
        ctl.close()
        for link, task in links:
            await link.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        broker.cleanup()
