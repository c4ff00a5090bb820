"""Security of the shipped Mosquitto configuration (deploy/mosquitto/), against a real broker.

The broker runs ``deploy/mosquitto/cityctl.conf`` itself, with only its paths and port moved
into the test's directory: TLS with certificates from ``make_certs.sh``, a password file made
with ``mosquitto_passwd`` (through ``make_passwd.sh``) and the ACL ``make_acl.py`` generates for
the shipped ``config.yaml``. So what is tested is what is deployed.

Users: the controller (``cityctl-controller``), nodes LCT-001 and LCT-002 (group
le-cong-thanh) and QL-001 (group ql1a); usernames are node ids, as the ACL expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from controller.config import MqttConfig, TlsConfig, load_config
from devices.lights import Topics
from devices.mqtt import MqttLink, TlsSettings
from tests.faults import report
from tests.helpers import Mosquitto, wait_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "mosquitto"
CONTROLLER = "cityctl-controller"
PASSWORDS = {CONTROLLER: "ctl-secret", "LCT-001": "n1-secret", "LCT-002": "n2-secret"}
PASSWORDS["QL-001"] = "q1-secret"
T = Topics(load_config(ROOT / "config.yaml").mqtt.prefix)
TIMEOUT = 5.0


@dataclass(frozen=True)
class Pki:
    """The test CA the broker trusts, and a second CA it knows nothing of."""

    certs: Path
    rogue: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    for name in ("certs", "rogue"):
        subprocess.run(
            ["bash", str(DEPLOY / "make_certs.sh"), str(base / name)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return Pki(base / "certs", base / "rogue")


class ShippedMosquitto(Mosquitto):
    """The test broker, configured with the shipped cityctl.conf (paths and port moved)."""

    def __init__(self, workdir: Path, certs: Path) -> None:
        super().__init__(workdir)
        self.certs = certs

    def _write_config(self) -> None:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        text = (DEPLOY / "cityctl.conf").read_text()
        text = text.replace("listener 8883\n", f"listener {self.port} {self.host}\n")
        text = text.replace("/etc/mosquitto/certs/", f"{self.certs}/")
        text = text.replace("/etc/mosquitto/", f"{self.workdir}/")
        text = text.replace("/var/lib/mosquitto/", f"{data}/")
        text = text.replace("log_dest syslog", "log_dest stderr")
        assert f"listener {self.port} " in text, "the shipped config has no `listener 8883`"
        assert "/etc/" not in text and "/var/" not in text, "a path was not moved"
        if os.geteuid() == 0:
            # Started as root, Mosquitto drops to user `mosquitto`, which cannot read the
            # test's private temporary directory; in production the files belong to it.
            text += "\nuser root\n"
        self.config_path.write_text(text)


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    work = tmp_path / "broker"
    work.mkdir()
    subprocess.run(
        [
            sys.executable,
            str(DEPLOY / "make_acl.py"),
            *("--config", str(ROOT / "config.yaml"), "--out", str(work / "cityctl.acl")),
            *("--controller-user", CONTROLLER),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    users = tmp_path / "users.txt"
    users.write_text("".join(f"{u}:{p}\n" for u, p in PASSWORDS.items()))
    subprocess.run(
        ["bash", str(DEPLOY / "make_passwd.sh"), str(work / "cityctl.passwd"), str(users)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    b = ShippedMosquitto(work, pki.certs)
    b.start()
    try:
        yield b
    finally:
        b.stop()
        rep = getattr(request.node, "_rep_call", None)
        if rep is not None and rep.failed:
            rep.sections.append(("mosquitto log (tail)", b.log_tail(60)))


@dataclass
class Client:
    """A paho client on its own network thread, recording what it receives."""

    client: paho.Client
    connack: ReasonCode | None = None
    connected: threading.Event = field(default_factory=threading.Event)
    messages: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    seen: list[tuple[str, bytes]] = field(default_factory=list)

    def wait(self, topic: str, payload: bytes, timeout: float = TIMEOUT) -> list[tuple[str, bytes]]:
        """Wait for ``(topic, payload)``; returns everything received up to it."""
        while True:
            try:
                msg = self.messages.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"never received {payload!r} on {topic}") from None
            self.seen.append(msg)
            if msg == (topic, payload):
                return list(self.seen)

    def subscribe(self, topic: str) -> int:
        """Subscribe and wait for the SUBACK; returns the granted code (0x80: refused)."""
        done = threading.Event()
        granted: list[int] = []

        def on_subscribe(
            _c: object, _u: object, _mid: int, codes: list[ReasonCode], _p: object
        ) -> None:
            granted.extend(c.value for c in codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, qos=1)
        assert done.wait(TIMEOUT), f"no SUBACK for {topic}"
        return granted[0]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish QoS 1 and wait for the PUBACK (Mosquitto acks even a refused publish)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _tls(ca: Path) -> ssl.SSLContext:
    # The repo's own TLS settings build the context: what the controller and nodes use.
    return TlsSettings(ca_file=str(ca / "ca.crt")).context()


def connect(broker: Mosquitto, ca: Path, user: str | None, password: str | None = None) -> Client:
    """Connect over TLS; the returned client's ``connack`` says whether the broker agreed."""
    c = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{user or 'anon'}-{uuid.uuid4().hex[:6]}"
    )
    c.tls_set_context(_tls(ca))
    if user is not None:
        c.username_pw_set(user, password)
    out = Client(c)

    def on_connect(_c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        out.connack = rc
        out.connected.set()

    def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
        out.messages.put((msg.topic, bytes(msg.payload)))

    c.on_connect = on_connect
    c.on_message = on_message
    c.connect("localhost", broker.port, keepalive=30)  # name checked against the SAN
    c.loop_start()
    assert out.connected.wait(TIMEOUT), "no CONNACK"
    return out


@contextlib.contextmanager
def session(broker: Mosquitto, ca: Path, user: str) -> Iterator[Client]:
    c = connect(broker, ca, user, PASSWORDS[user])
    try:
        assert c.connack is not None and not c.connack.is_failure, f"{user}: {c.connack}"
        yield c
    finally:
        c.close()


@pytest.mark.faults
def test_anonymous_client_is_refused(broker: Mosquitto, pki: Pki) -> None:
    c = connect(broker, pki.certs, None)
    c.close()
    assert c.connack is not None and c.connack.is_failure
    report(
        "MQTT anonymous client",
        recovery_s=None,
        lost=None,
        detail=f"anonymous client refused: CONNACK {c.connack!s}"
        f" ({c.connack.value:#x} in paho's MQTT 5 reason codes)",
    )


@pytest.mark.faults
def test_wrong_password_is_refused(broker: Mosquitto, pki: Pki) -> None:
    bad = connect(broker, pki.certs, "LCT-001", "not-the-password")
    bad.close()
    unknown = connect(broker, pki.certs, "LCT-999", "whatever")
    unknown.close()
    assert bad.connack is not None and bad.connack.is_failure
    assert unknown.connack is not None and unknown.connack.is_failure
    report(
        "MQTT wrong password",
        recovery_s=None,
        lost=None,
        detail=f"wrong password refused: CONNACK {bad.connack!s} ({bad.connack.value:#x});"
        f" unknown user: CONNACK {unknown.connack!s} ({unknown.connack.value:#x})",
    )


@pytest.mark.faults
def test_node_cannot_command_another_node(broker: Mosquitto, pki: Pki) -> None:
    with (
        session(broker, pki.certs, CONTROLLER) as ctl,
        session(broker, pki.certs, "LCT-002") as b,
        session(broker, pki.certs, "LCT-001") as a,
    ):
        assert ctl.subscribe(f"{T.root}/#") == 1
        assert b.subscribe(T.node_set("LCT-002")) == 1
        forged = b'{"v":1,"cmd_id":"forged","level":0}'
        a.publish(T.node_set("LCT-002"), forged)  # B's own command topic
        a.publish(T.group_set("le-cong-thanh"), forged, retain=True)  # the group's
        a.publish(T.node_state("LCT-002"), forged, retain=True)  # B's state
        marker = uuid.uuid4().hex.encode()
        a.publish(T.node_state("LCT-001"), marker, retain=True)  # allowed: A's own state
        # Same publisher, same broker: the forged messages would have arrived first.
        seen = ctl.wait(T.node_state("LCT-001"), marker)
        assert [m for m in seen if m[1] == forged] == []
        ctl.publish(T.node_set("LCT-002"), b"real")
        b.wait(T.node_set("LCT-002"), b"real")
        assert [m for m in b.seen if m[1] == forged] == []
    report(
        "node commands another node",
        recovery_s=None,
        lost=None,
        detail=f"node LCT-001 -> LCT-002 set/group set/state: 3 forged publishes dropped by the"
        f" ACL; controller saw {len(seen)} message(s), none forged; LCT-002 got only the"
        " controller's command",
    )


@pytest.mark.faults
def test_node_cannot_read_another_nodes_commands(broker: Mosquitto, pki: Pki) -> None:
    with session(broker, pki.certs, CONTROLLER) as ctl, session(broker, pki.certs, "LCT-001") as a:
        granted_b = a.subscribe(T.node_set("LCT-002"))
        granted_other_group = a.subscribe(T.group_set("ql1a"))
        granted_all = a.subscribe(f"{T.root}/#")
        assert a.subscribe(T.node_set("LCT-001")) == 1
        ctl.publish(T.node_set("LCT-002"), b"for-b")
        ctl.publish(T.group_set("ql1a"), b"for-ql1a", retain=True)
        ctl.publish(T.node_state("QL-001"), b"not-for-a", retain=True)
        ctl.publish(T.node_set("LCT-001"), b"for-a")
        seen = a.wait(T.node_set("LCT-001"), b"for-a")
        assert seen == [(T.node_set("LCT-001"), b"for-a")]
    report(
        "node reads another node's commands",
        recovery_s=None,
        lost=None,
        detail=f"node LCT-001 reads only its own: SUBACK for LCT-002 set {granted_b:#x}, ql1a"
        f" group {granted_other_group:#x}, '#' {granted_all:#x}; received {len(seen)} (its own)",
    )


def test_node_state_delivered_and_group_command_received(broker: Mosquitto, pki: Pki) -> None:
    with session(broker, pki.certs, CONTROLLER) as ctl, session(broker, pki.certs, "LCT-001") as a:
        assert ctl.subscribe(T.node_state("+")) == 1
        assert a.subscribe(T.group_set("le-cong-thanh")) == 1
        assert a.subscribe(T.group_fallback("le-cong-thanh")) == 1
        a.publish(T.node_state("LCT-001"), b"state-1", retain=True)
        ctl.wait(T.node_state("LCT-001"), b"state-1")
        ctl.publish(T.group_set("le-cong-thanh"), b"cmd-1", retain=True)
        ctl.publish(T.group_fallback("le-cong-thanh"), b"fb-1", retain=True)
        a.wait(T.group_set("le-cong-thanh"), b"cmd-1")
        a.wait(T.group_fallback("le-cong-thanh"), b"fb-1")
    # A node that connects later gets the retained group command from the broker.
    with session(broker, pki.certs, "LCT-002") as late:
        assert late.subscribe(T.group_set("le-cong-thanh")) == 1
        late.wait(T.group_set("le-cong-thanh"), b"cmd-1")
    print("node LCT-001 state delivered; group command + fallback received (and retained)")


async def test_controller_commands_groups_and_reads_states(broker: Mosquitto, pki: Pki) -> None:
    # The controller connects the way production does: config -> MqttSettings -> MqttLink.
    cfg = MqttConfig(
        url=f"mqtts://localhost:{broker.port}",
        username=CONTROLLER,
        password_file=None,
        tls=TlsConfig(ca_file=pki.certs / "ca.crt"),
    )
    pw = broker.workdir / "controller.pass"
    pw.write_text(PASSWORDS[CONTROLLER])
    cfg = cfg.model_copy(update={"password_file": pw})
    link = MqttLink(cfg.settings("phuly-edge-01"))
    states: dict[str, bytes] = {}
    link.subscribe(T.node_state("+"), lambda t, p, r: states.__setitem__(t, p))
    task = asyncio.create_task(link.run())
    try:
        assert await link.wait_connected(TIMEOUT), "controller did not connect over TLS"
        with session(broker, pki.certs, "LCT-001") as a, session(broker, pki.certs, "QL-001") as q:
            assert a.subscribe(T.group_set("le-cong-thanh")) == 1
            assert q.subscribe(T.group_set("ql1a")) == 1
            await link.publish(T.group_set("le-cong-thanh"), b"lct-80", qos=1, retain=True)
            await link.publish(T.group_set("ql1a"), b"ql-60", qos=1, retain=True)
            await asyncio.to_thread(a.wait, T.group_set("le-cong-thanh"), b"lct-80")
            await asyncio.to_thread(q.wait, T.group_set("ql1a"), b"ql-60")
            a.publish(T.node_state("LCT-001"), b"s-lct")
            q.publish(T.node_state("QL-001"), b"s-ql")
            await wait_for(lambda: len(states) == 2, TIMEOUT, what="both node states")
        assert states == {T.node_state("LCT-001"): b"s-lct", T.node_state("QL-001"): b"s-ql"}
    finally:
        await link.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    print("controller (MqttLink over TLS) commanded 2 groups and read 2 node states")


@pytest.mark.faults
def test_wrong_ca_fails_the_tls_handshake(broker: Mosquitto, pki: Pki) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as exc:
        connect(broker, pki.rogue, "LCT-001", PASSWORDS["LCT-001"])
    report(
        "MQTT broker with a certificate of another CA",
        recovery_s=None,
        lost=None,
        detail=f"TLS handshake failed before any password was sent ({exc.value.verify_message})",
    )


def test_generated_acl_covers_every_client_of_the_config() -> None:
    # Imported here: the script lives in deploy/, outside the packages.
    sys.path.insert(0, str(DEPLOY))
    try:
        import make_acl
    finally:
        sys.path.remove(str(DEPLOY))
    cfg = load_config(ROOT / "config.yaml")
    text = make_acl.build_acl(cfg, CONTROLLER)
    blocks = {b.split("\n")[0]: b for b in text.split("\nuser ")[1:]}
    nodes = [(g.id, n) for g, n, _, _ in cfg.nodes()]
    assert len(blocks) == len(make_acl.usernames(cfg, CONTROLLER))
    for group, node in nodes:
        lines = {ln for ln in blocks[node].split("\n") if ln.startswith("topic ")}
        assert lines == {
            f"topic write {T.node_state(node)}",
            f"topic write {T.node_ack(node)}",
            f"topic write {T.node_availability(node)}",
            f"topic read {T.node_set(node)}",
            f"topic read {T.group_set(group)}",
            f"topic read {T.group_fallback(group)}",
        }
    assert not [ln for ln in text.split("\n") if ln.startswith("pattern") or "%" in ln]
    # The shipped example is what the generator makes for the shipped config: no drift.
    shipped = (DEPLOY / "cityctl.acl").read_text()
    assert shipped == text, "deploy/mosquitto/cityctl.acl is stale: run make_acl.py"
    with pytest.raises(make_acl.AclError):
        make_acl.build_acl(cfg, nodes[0][1])  # controller user = a node id: ambiguous
    print(f"ACL: {len(blocks)} users ({len(nodes)} nodes), 6 topics per node, no patterns")
