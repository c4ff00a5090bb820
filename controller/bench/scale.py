"""``cityctl bench scale``: the whole system at city scale, in real processes, measured.

One run starts, each in its own process and all on loopback:

* **Mosquitto** (:mod:`controller.bench.mosquitto`), and first of all the *reference*: the
  broker's raw rate with Mosquitto's own tools, ``mosquitto_pub -l`` sending ~60-byte lines to a
  ``mosquitto_sub`` at QoS 0 and QoS 1 — what the broker and the loopback can carry with no
  Python in the path;
* the **signal cabinets**: ``cityctl sim cabinets`` (one pymodbus server per intersection with
  its own monitor and traffic, the AI cameras on MQTT);
* the **controller**: ``cityctl run`` with a generated config (the lights in groups of
  ``group_size``, the intersections copied from the shipped ``config.yaml`` under new ids,
  telemetry on into its local outbox as in production, the API on a free port);
* the **light nodes**: ``cityctl sim lights`` in *gateway mode* (``gateway_size`` nodes per
  broker connection, as a street segment's lamps share its gateway; same topics and payloads,
  see :mod:`simulator.lights`), optionally split over several processes.

The controller is started before the nodes, so every state a node publishes reaches it live
(none as a retained copy): the count the simulator had acknowledged by the broker and the count
the controller received must then be equal, and their difference is the **messages lost**.
Convergence is timed from the controller's start until every node follows its group's command
and every intersection is in control.

Then the **steady state**: for ``duration_s`` the bench changes group levels through the API at
``changes_per_s`` (round robin over the groups; each change is an override set or cleared, as
an engineer would), while the nodes send their periodic reports and the intersections step at
10 Hz. Over that window it measures the controller's CPU (``/proc/<pid>/stat`` utime + stime
against wall time, as a share of one core), its peak resident memory (``VmHWM``), its MQTT
messages in and out per second (its own link counters, ``GET /api/v1/health``), and the
group-command **fan-out latency**, which the controller measures itself: from its publish of a
group command to the arrival of the last node's acknowledging state
(:mod:`controller.lighting.fanout`).

The bench prints nothing; ``cityctl bench scale`` prints its result. ``profile=`` runs the
controller under cProfile (slower: its CPU figures are then not the real ones) and adds the
functions that dominate.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from controller.bench.host import host_speed
from controller.bench.mosquitto import Mosquitto, find_mosquitto, free_port, free_ports
from controller.lighting.fanout import percentile

__all__ = [
    "TARGETS",
    "BrokerDropWatch",
    "ProcSample",
    "ScaleError",
    "ScaleOptions",
    "build_config",
    "format_table",
    "proc_sample",
    "run_scale_bench",
]

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "config.yaml"
TOKEN_ENV = "CITYCTL_BENCH_TOKEN"

#: The issue's targets at 10,000 light nodes and 100 intersections ticking at 10 Hz.
TARGETS: Mapping[str, float] = {
    "controller_cpu_pct_of_core": 50.0,
    "fanout_p99_ms": 100.0,
    "peak_rss_mb": 120.0,
    "lost": 0,
}

#: Levels the overrides alternate between: no shipped program uses them, so every override set
#: or cleared is a change of level (and so a new group command) whatever the time of day.
OVERRIDE_LEVELS = (33.0, 47.0)


class ScaleError(RuntimeError):
    """The bench could not run (a process did not start, the system did not converge…)."""


@dataclass(frozen=True)
class ScaleOptions:
    """What to run; see :func:`run_scale_bench`."""

    lights: int = 10_000
    intersections: int = 100
    duration_s: float = 60.0
    group_size: int = 100
    gateway_size: int = 100
    sim_processes: int = 1
    changes_per_s: float = 2.0
    report_interval_s: float = 30.0
    node_tick_hz: float = 1.0
    settle_s: float = 5.0
    converge_timeout_s: float | None = None
    reference_messages: int = 50_000
    base_config: Path = SHIPPED_CONFIG
    profile: Path | None = None
    keep: Path | None = None
    controller_cpu: int | None = None
    """Pin the controller to this CPU and everything else the bench runs (the broker, the
    simulators, the bench itself) to the others: the controller's box apart from the street
    it drives. None: every process may run on every CPU (the default, and the harder case)."""

    def check(self) -> None:
        """Raise ValueError naming the option (as ``cityctl bench scale`` spells it) and the
        reason for anything out of range."""
        checks = [
            (self.lights >= 1, "lights", "must be at least 1"),
            (self.intersections >= 0, "intersections", "must be 0 or more"),
            (self.duration_s > 0, "duration", "must be positive"),
            (self.group_size >= 1, "group-size", "must be at least 1"),
            (self.gateway_size >= 1, "gateway-size", "must be at least 1"),
            (self.sim_processes >= 1, "sim-processes", "must be at least 1"),
            (self.sim_processes <= self.lights, "sim-processes", "more processes than lights"),
            (self.changes_per_s > 0, "changes-per-s", "must be positive"),
            (self.report_interval_s > 0, "report-interval", "must be positive"),
            (self.node_tick_hz > 0, "node-tick-hz", "must be positive"),
            (self.settle_s >= 0, "settle", "must be 0 or more"),
            (self.reference_messages >= 0, "reference-messages", "must be 0 or more"),
        ]
        if self.controller_cpu is not None:
            cpus = _usable_cpus()
            checks.append(
                (
                    hasattr(os, "sched_setaffinity"),
                    "controller-cpu",
                    "needs CPU affinity, which this platform's Python does not offer",
                )
            )
            checks.append(
                (
                    self.controller_cpu in cpus and len(cpus) >= 2,
                    "controller-cpu",
                    f"must be one of this process's CPUs {sorted(cpus)}, leaving at least one "
                    "for the rest",
                )
            )
        for ok, name, why in checks:
            if not ok:
                raise ValueError(f"{name}: {why}")
        if self.intersections > 900:
            raise ValueError("intersections: at most 900 (one loopback port each)")

    @property
    def groups(self) -> int:
        """Light groups: ``lights / group_size``, rounded up."""
        return -(-self.lights // self.group_size)


# -- /proc --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    """CPU seconds (user + system) and memory of one process at one instant."""

    at: float  # time.monotonic()
    cpu_s: float
    rss_kb: int
    hwm_kb: int


def parse_proc_stat(text: str, clk_tck: int) -> float:
    """User + system CPU seconds from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may contain spaces and parentheses, so
    the fields are counted from the *last* ``)``: utime and stime are fields 14 and 15.
    """
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): field n is rest[n - 3]
    return (int(rest[11]) + int(rest[12])) / clk_tck


def parse_proc_status(text: str) -> dict[str, int]:
    """The ``kB`` values of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``…) as integers."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        parts = value.split()
        if sep and len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def proc_sample(pid: int) -> ProcSample | None:
    """A :class:`ProcSample` of a live process; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = parse_proc_status(Path(f"/proc/{pid}/status").read_text())
    except (OSError, ValueError):
        return None
    return ProcSample(
        at=time.monotonic(),
        cpu_s=parse_proc_stat(stat, os.sysconf("SC_CLK_TCK")),
        rss_kb=status.get("VmRSS", 0),
        hwm_kb=status.get("VmHWM", 0),
    )


def cpu_share_pct(a: ProcSample, b: ProcSample) -> float:
    """CPU used between two samples as a percentage of one core."""
    wall = b.at - a.at
    return 100.0 * (b.cpu_s - a.cpu_s) / wall if wall > 0 else 0.0


# -- the config ---------------------------------------------------------------------------


def build_config(
    base: Mapping[str, Any],
    *,
    lights: int,
    intersections: int,
    group_size: int,
    broker_url: str,
    prefix: str,
    state_dir: Path,
    api_port: int,
    cabinet_ports: list[int],
) -> dict[str, Any]:
    """The bench's config document from the shipped one (``base``, parsed YAML).

    ``lights`` nodes ``L00001``… in groups ``g001``… of ``group_size`` running the shipped
    calendars; ``intersections`` copies of the shipped intersections, in turn, as ``x001``…
    (a copy's coordination points at the copy of its upstream made with it, or is dropped)
    with their cabinets at ``127.0.0.1:cabinet_ports[k]``; telemetry into the local outbox;
    the API with one engineer token read from ``$CITYCTL_BENCH_TOKEN``.
    """
    if len(cabinet_ports) != intersections:
        raise ValueError("cabinet_ports: one port per intersection")
    lighting = base["lighting"]
    width = max(5, len(str(lights)))
    n_groups = -(-lights // group_size)
    calendars = [c["name"] for c in lighting.get("calendars", [])]
    groups = []
    for k in range(n_groups):
        first = k * group_size + 1
        last = min(lights, (k + 1) * group_size)
        g: dict[str, Any] = {
            "id": f"g{k + 1:03d}",
            "name": f"bench group {k + 1}",
            "road": f"bench road {k + 1}",
            "lighting_class": "M3",
            "lamp_w": 100,
            "nodes": [
                f"L{first:0{width}d}..L{last:0{width}d}" if last > first else f"L{first:0{width}d}"
            ],
        }
        if calendars:
            g["calendar"] = calendars[k % len(calendars)]
        else:
            g["program"] = lighting["programs"][k % len(lighting["programs"])]["name"]
        groups.append(g)
    shipped = list(base.get("signals", {}).get("intersections", []))
    if intersections and not shipped:
        raise ValueError("the base config has no intersections to copy")
    xs: list[dict[str, Any]] = []
    for k in range(intersections):
        src = shipped[k % len(shipped)]
        round_ = k // len(shipped)
        x = json.loads(json.dumps(src, default=str))  # a deep copy with plain types
        x["id"] = f"x{k + 1:03d}"
        x["name"] = f"{src.get('name', src['id'])} (copy {round_ + 1})"
        x["cabinet"] = {**src.get("cabinet", {}), "host": "127.0.0.1", "port": cabinet_ports[k]}
        coord = x.get("coordination")
        if coord and coord.get("upstream"):
            # The upstream's copy of the same round, if it was made.
            idx = next((i for i, s in enumerate(shipped) if s["id"] == coord["upstream"]), None)
            j = None if idx is None else round_ * len(shipped) + idx
            if j is not None and j < intersections:
                coord["upstream"] = f"x{j + 1:03d}"
            else:
                coord.pop("upstream", None)
                coord.pop("travel_time_s", None)
        xs.append(x)
    telemetry = dict(base.get("telemetry", {}))
    telemetry.pop("influx", None)  # the local outbox only: no database in the bench
    return {
        "site": base["site"],
        "controller": {"id": "bench-scale", "state_dir": str(state_dir), "log_level": "INFO"},
        "mqtt": {"url": broker_url, "prefix": prefix, "keepalive_s": 30},
        "lighting": {
            **{k: v for k, v in lighting.items() if k not in ("groups", "nodes", "overrides")},
            "groups": groups,
        },
        "signals": {**base.get("signals", {}), "intersections": xs},
        "telemetry": telemetry,
        "api": {
            "enabled": True,
            "host": "127.0.0.1",
            "port": api_port,
            "tokens": [{"name": "bench", "role": "engineer", "token_env": TOKEN_ENV}],
        },
    }


def _api_port(taken: Collection[int]) -> int:
    """A free port for the controller's API outside ``taken`` (the cabinets' ports): both were
    only free a moment ago, and the cabinets bind theirs first — a run once failed on an API
    port inside their range ("Address already in use")."""
    while True:
        port = free_port()
        if port not in taken:
            return port


def _free_port_range(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free loopback ports (see :func:`free_ports`)."""
    try:
        return free_ports(count, host)
    except OSError as exc:
        raise ScaleError(str(exc)) from None


# -- the reference: Mosquitto's own tools -------------------------------------------------


def broker_reference(
    broker: Mosquitto, messages: int, qos: int, *, timeout_s: float = 60.0
) -> dict[str, Any]:
    """``mosquitto_pub -l`` → broker → ``mosquitto_sub``: messages per second end to end.

    The subscriber is proven subscribed (a probe message reaches it) before the timed batch
    starts; the time runs from starting the publisher until the subscriber has printed the
    last message.
    """
    pub = shutil.which("mosquitto_pub")
    sub = shutil.which("mosquitto_sub")
    if pub is None or sub is None:
        return {
            "qos": qos,
            "error": "mosquitto_pub/mosquitto_sub not installed (mosquitto-clients)",
        }
    topic = f"bench/ref/{qos}"
    common = ["-h", broker.host, "-p", str(broker.port)]
    proc = subprocess.Popen(
        [sub, *common, "-q", str(qos), "-t", topic, "-t", f"{topic}/probe"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    out = proc.stdout
    seen = threading.Event()
    done = threading.Event()
    state = {"data": 0, "t_last": 0.0}

    def reader() -> None:
        for line in out:
            if line.startswith(b"probe"):
                seen.set()
                continue
            state["data"] += 1
            if state["data"] >= messages:
                state["t_last"] = time.perf_counter()
                done.set()
                return

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        deadline = time.monotonic() + 10
        while not seen.is_set():
            if time.monotonic() > deadline:
                return {"qos": qos, "error": "the subscriber never got the probe"}
            subprocess.run(
                [pub, *common, "-t", f"{topic}/probe", "-m", "probe"],
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            seen.wait(0.2)
        # ~60-byte lines, shaped like a node's report
        lines = b"".join(
            b'{"node":"L%05d","level":60.0,"cmd_id":"6789abcd-1f2e-%06d"}\n' % (i % 99999, i)
            for i in range(messages)
        )
        payload_bytes = len(lines) // max(1, messages) - 1
        t0 = time.perf_counter()
        pub_proc = subprocess.run(
            [pub, *common, "-q", str(qos), "-t", topic, "-l"],
            input=lines,
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout_s,
        )
        t_pub = time.perf_counter() - t0
        done.wait(timeout_s)
        received = int(state["data"])
        t_end = float(state["t_last"]) if done.is_set() else time.perf_counter()
        wall = t_end - t0
        return {
            "qos": qos,
            "messages": messages,
            "received": received,
            "payload_bytes": payload_bytes,
            "publisher_s": round(t_pub, 3),
            "wall_s": round(wall, 3),
            "msg_per_s": round(received / wall) if wall > 0 else None,
            "publisher_rc": pub_proc.returncode,
        }
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()


_DROPPED = "$SYS/broker/publish/messages/dropped"


class BrokerDropWatch:
    """Mosquitto's own count of messages it dropped (``$SYS/broker/publish/messages/dropped``,
    sent every ``sys_interval`` while it changes), followed by a ``mosquitto_sub`` for the whole
    run: asked for only at the end, a busy broker may not answer in time."""

    def __init__(self, broker: Mosquitto, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen[bytes] | None = None
        sub = shutil.which("mosquitto_sub")
        self.why = "" if sub else "mosquitto_sub not installed"
        if sub is None:
            return
        self._out = open(path, "wb")  # noqa: SIM115 - closed in value()
        self.proc = subprocess.Popen(
            [sub, "-h", broker.host, "-p", str(broker.port), "-t", _DROPPED],
            stdout=self._out,
            stderr=subprocess.DEVNULL,
        )

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()

    def value(self) -> tuple[int | None, str]:
        """The last count seen (None and why, if none was), and stop watching."""
        if self.proc is None:
            return None, self.why
        self.close()
        lines = [x for x in self.path.read_text(errors="replace").split() if x.isdigit()]
        if not lines:
            return None, "the broker never reported $SYS/broker/publish/messages/dropped"
        return int(lines[-1]), ""


# -- processes ----------------------------------------------------------------------------


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.log.close()
        return self.popen.returncode


def _spawn(name: str, argv: list[str], env: Mapping[str, str], logs: Path) -> _Proc:
    path = logs / f"{name}.log"
    log = open(path, "ab")  # noqa: SIM115 - closed in _Proc.stop()
    popen = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=str(ROOT),
        start_new_session=True,  # a Ctrl-C on the bench must not hit the children first
    )
    return _Proc(name, popen, log, path)


class _Api:
    """The controller's API over plain urllib (the bench needs no HTTP library)."""

    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"
        self.token = token

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def health(self) -> dict[str, Any] | None:
        try:
            h = self.call("GET", "/health", timeout=5.0)
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return h.get("controller") if isinstance(h, dict) else None


def _wait(
    what: str, predicate: Callable[[], bool], timeout: float, procs: list[_Proc], every: float = 0.2
) -> float:
    """Poll until ``predicate()``; the seconds it took. A dead process or the timeout raise."""
    t0 = time.monotonic()
    while not predicate():
        for p in procs:
            if not p.alive():
                raise ScaleError(
                    f"{p.name} exited (code {p.popen.returncode}) while waiting for {what}:\n{p.tail()}"
                )
        if time.monotonic() - t0 > timeout:
            raise ScaleError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - t0


# -- the run ------------------------------------------------------------------------------


@dataclass
class _Driver:
    """Changes group levels through the API at a fixed rate: override set, then cleared."""

    api: _Api
    groups: list[str]
    active: dict[str, str] = field(default_factory=dict)
    k: int = 0
    cycle: int = 0
    calls: int = 0
    errors: int = 0
    api_ms: list[float] = field(default_factory=list)

    def change(self) -> None:
        g = self.groups[self.k % len(self.groups)]
        self.k += 1
        if self.k % len(self.groups) == 0:
            self.cycle += 1
        t0 = time.perf_counter()
        try:
            oid = self.active.pop(g, None)
            if oid is not None:
                self.api.call("DELETE", f"/overrides/{oid}")
            else:
                level = OVERRIDE_LEVELS[self.cycle % len(OVERRIDE_LEVELS)]
                rec = self.api.call(
                    "POST",
                    "/overrides",
                    {"groups": [g], "level": level, "reason": "bench scale: level change"},
                )
                self.active[g] = rec["id"]
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            self.errors += 1
        self.calls += 1
        self.api_ms.append((time.perf_counter() - t0) * 1000)


def _python() -> list[str]:
    return [sys.executable, "-m", "controller.cli"]


def _delta(h1: Mapping[str, Any], h0: Mapping[str, Any], key: str) -> float:
    return float(h1.get(key, 0) or 0) - float(h0.get(key, 0) or 0)


def run_scale_bench(
    opts: ScaleOptions, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the bench (see the module docstring) and return a JSON-able result."""
    opts.check()
    find_mosquitto()  # a clear error before anything starts
    say = progress or (lambda _m: None)
    wall0 = time.monotonic()
    load0 = os.getloadavg()
    # The host's speed before anything starts (and again at the end, in _run): figures from
    # another hour or machine are compared through it (controller.bench.host).
    speed0 = host_speed()
    tmp = Path(tempfile.mkdtemp(prefix="cityctl-scale-"))
    work = opts.keep or tmp
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    # A kept directory from an earlier run: its state (overrides made over the API, the
    # outbox) and logs must not leak into this one.
    for old in (logs, work / "state", work / "mosquitto"):
        shutil.rmtree(old, ignore_errors=True)
    logs.mkdir()
    procs: list[_Proc] = []
    broker = Mosquitto(
        work / "mosquitto",
        # $SYS every second: the bench reads the broker's own count of dropped messages.
        extra_config="sys_interval 1\nset_tcp_nodelay true",
    )
    closers: list[Callable[[], None]] = []
    with (
        _cleanup(procs, broker, closers, tmp if opts.keep is None else None),
        _street_cpus(opts.controller_cpu),
    ):
        result = _run(opts, say, work, logs, procs, broker, closers, wall0, load0)
    # Everything the bench started has stopped: the host's speed again.
    result["machine"]["host_speed"] = {"before": speed0, "after": host_speed()}
    if opts.keep is not None:
        (work / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def _usable_cpus() -> set[int]:
    """The CPUs this process may run on (all of them where affinity is not supported)."""
    getter = getattr(os, "sched_getaffinity", None)
    return set(getter(0)) if getter is not None else set(range(os.cpu_count() or 1))


def _cpus_of(pid: int) -> list[int] | None:
    """The CPUs process ``pid`` may run on (None if it is gone or affinity is unsupported)."""
    try:
        return sorted(os.sched_getaffinity(pid))
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def _street_cpus(controller_cpu: int | None) -> Iterator[None]:
    """With a controller CPU: this process (and so every child it starts, which inherits it)
    runs on the other CPUs until the end; the controller is moved to its own when started."""
    if controller_cpu is None:
        yield
        return
    before = _usable_cpus()
    os.sched_setaffinity(0, before - {controller_cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def _cleanup(
    procs: list[_Proc], broker: Mosquitto, closers: list[Callable[[], None]], tmp: Path | None
) -> Iterator[None]:
    try:
        yield
    finally:
        for close in closers:
            with contextlib.suppress(Exception):
                close()
        for p in reversed(procs):
            with contextlib.suppress(Exception):
                p.stop(timeout=10)
        broker.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(
    opts: ScaleOptions,
    say: Callable[[str], None],
    work: Path,
    logs: Path,
    procs: list[_Proc],
    broker: Mosquitto,
    closers: list[Callable[[], None]],
    wall0: float,
    load0: tuple[float, float, float],
) -> dict[str, Any]:
    broker.start()
    say(f"mosquitto on {broker.url}")
    drops = BrokerDropWatch(broker, work / "broker-dropped.txt")
    closers.append(drops.close)
    reference = []
    if opts.reference_messages:
        for qos in (0, 1):
            r = broker_reference(broker, opts.reference_messages, qos)
            say(f"reference QoS {qos}: {r.get('msg_per_s')} msg/s")
            reference.append(r)

    # -- the config --------------------------------------------------------------------
    base = yaml.safe_load(opts.base_config.read_text(encoding="utf-8"))
    state = work / "state"
    ports = (
        list(range(p0 := _free_port_range(opts.intersections), p0 + opts.intersections))
        if opts.intersections
        else []
    )
    api_port = _api_port(ports)
    doc = build_config(
        base,
        lights=opts.lights,
        intersections=opts.intersections,
        group_size=opts.group_size,
        broker_url=broker.url,
        prefix="bench",
        state_dir=state,
        api_port=api_port,
        cabinet_ports=ports,
    )
    cfg_path = work / "bench-scale.yaml"
    cfg_path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    from controller.config import ConfigError, load_config

    try:
        load_config(cfg_path)
    except ConfigError as exc:
        raise ScaleError(f"the generated config is invalid:\n{exc}") from None
    token = os.urandom(16).hex()
    env = {k: v for k, v in os.environ.items() if k not in ("CITYCTL_DISTRICT",)}
    env.update({TOKEN_ENV: token, "CITYCTL_STATE_DIR": str(state), "PYTHONUNBUFFERED": "1"})

    # -- cabinets ------------------------------------------------------------------------
    cab: _Proc | None = None
    if opts.intersections:
        cab = _spawn(
            "sim-cabinets",
            [
                *_python(),
                "sim",
                "cabinets",
                "--config",
                str(cfg_path),
                "--port-base",
                str(ports[0]),
                "--broker",
                broker.url,
                "--log-level",
                "WARNING",
            ],
            env,
            logs,
        )
        procs.append(cab)

        def cabinets_listening() -> bool:
            for p in ports:
                try:
                    with socket.create_connection(("127.0.0.1", p), timeout=0.2):
                        pass
                except OSError:
                    return False
            return True

        t = _wait(
            "the cabinets to listen", cabinets_listening, 60 + opts.intersections * 0.2, procs
        )
        say(f"{opts.intersections} cabinets listening ({t:.1f} s)")

    # -- the controller ------------------------------------------------------------------
    ctl_argv = [*_python(), "run", "--config", str(cfg_path)]
    if opts.profile is not None:
        opts.profile.parent.mkdir(parents=True, exist_ok=True)
        ctl_argv = [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(opts.profile),
            "-m",
            "controller.cli",
            *ctl_argv[3:],
        ]
    t_start = time.monotonic()
    ctl = _spawn("controller", ctl_argv, env, logs)
    procs.append(ctl)
    if opts.controller_cpu is not None:
        # Before the interpreter has started any thread: they all inherit it.
        os.sched_setaffinity(ctl.pid, {opts.controller_cpu})
    api = _Api(api_port, token)
    last: dict[str, Any] = {}

    def mqtt_up() -> bool:
        h = api.health()
        if h is not None:
            last.clear()
            last.update(h)
        return bool(h and h.get("mqtt_up"))

    t_ready = _wait("the controller's API and broker link", mqtt_up, 60, procs)
    say(f"controller up ({t_ready:.1f} s)")

    # -- the light nodes -----------------------------------------------------------------
    sims: list[_Proc] = []
    stats_files = []
    for i in range(1, opts.sim_processes + 1):
        sf = work / f"sim-lights-{i}.json"
        stats_files.append(sf)
        argv = [
            *_python(),
            "sim",
            "lights",
            "--config",
            str(cfg_path),
            "--broker",
            broker.url,
            "--gateway-size",
            str(opts.gateway_size),
            "--report-interval",
            str(opts.report_interval_s),
            "--tick-hz",
            str(opts.node_tick_hz),
            "--stats-file",
            str(sf),
            "--log-level",
            "WARNING",
        ]
        if opts.sim_processes > 1:
            argv += ["--shard", f"{i}/{opts.sim_processes}"]
        p = _spawn(f"sim-lights-{i}", argv, env, logs)
        sims.append(p)
        procs.append(p)
    n_groups = opts.groups

    marks: dict[str, float] = {}

    def converged() -> bool:
        h = api.health()
        if h is None:
            return False
        last.clear()
        last.update(h)
        now = time.monotonic() - t_start
        if int(h.get("nodes_following", 0)) >= opts.lights and "lights" not in marks:
            marks["lights"] = now
        if int(h.get("intersections_in_control", 0)) >= opts.intersections:
            marks.setdefault("signals", now)
        else:
            marks.pop("signals", None)  # one fell out of control again
        if "lights" not in marks:
            return False
        # An intersection whose cabinet latched a fault waits for a person: do not wait for it
        # forever, but note it (the result says which, and why).
        return "signals" in marks or now - marks["lights"] > signals_grace_s

    signals_grace_s = 30.0 + opts.intersections * 0.3
    timeout = opts.converge_timeout_s or 120.0 + opts.lights / 200 + opts.intersections
    try:
        _wait("every node to follow its group", converged, timeout, procs, 0.25)
    except ScaleError as exc:
        raise ScaleError(f"{exc}; last health: {json.dumps(last)}") from None
    converged_s = time.monotonic() - t_start
    say(
        f"converged {converged_s:.1f} s after the controller's start (lights "
        f"{marks['lights']:.1f} s, signals "
        + (f"{marks['signals']:.1f} s)" if "signals" in marks else "NOT all in control)")
    )
    time.sleep(opts.settle_s)

    # -- steady state ----------------------------------------------------------------------
    pids = {"controller": ctl.pid, "broker": broker.pid or 0}
    if cab is not None:
        pids["sim_cabinets"] = cab.pid
    for i, p in enumerate(sims, 1):
        pids[f"sim_lights_{i}"] = p.pid
    s0 = {k: proc_sample(pid) for k, pid in pids.items()}
    h0 = api.health() or {}
    driver = _Driver(api, [f"g{k + 1:03d}" for k in range(n_groups)])
    per_s: list[float] = []
    last_ctl = s0["controller"]
    period = 1.0 / opts.changes_per_s
    t0 = time.monotonic()
    next_change = t0
    next_sample = t0 + 1.0
    t_end = t0 + opts.duration_s
    say(f"steady state: {opts.duration_s:g} s, {opts.changes_per_s:g} group changes/s")
    while True:
        now = time.monotonic()
        if now >= t_end:
            break
        if now >= next_sample:
            cur = proc_sample(ctl.pid)
            if cur is None:
                raise ScaleError(f"the controller died during the steady state:\n{ctl.tail()}")
            if last_ctl is not None:
                per_s.append(cpu_share_pct(last_ctl, cur))
            last_ctl = cur
            next_sample += 1.0
        if now >= next_change:
            driver.change()
            next_change += period
            if time.monotonic() - next_change > 5 * period:
                next_change = time.monotonic()  # the API lags: no burst to catch up
        time.sleep(max(0.0, min(next_change, next_sample, t_end) - time.monotonic()))
    s1 = {k: proc_sample(pid) for k, pid in pids.items()}
    cpus_of = {k: _cpus_of(pid) for k, pid in pids.items()}  # while they all still run
    h1 = api.health() or {}
    window = (
        s1["controller"].at - s0["controller"].at if s0["controller"] and s1["controller"] else 0.0
    )

    # -- drain: fan-outs in flight finish, then the end state ------------------------------
    def drained() -> bool:
        h = api.health()
        return bool(h and int(h.get("fanout_pending", 0)) == 0)

    with contextlib.suppress(ScaleError):
        _wait("the last fan-outs to complete", drained, 10.0, procs, 0.2)
    h_end = api.health() or {}
    hwm = proc_sample(ctl.pid)
    not_following = opts.lights - int(h_end.get("nodes_following", 0))

    # -- lost: stop the nodes, let the controller drain, compare counts --------------------
    for p in sims:
        p.stop(timeout=30)
    sim_stats = [json.loads(f.read_text()) if f.exists() else {} for f in stats_files]
    published = sum(int(s.get("states_published", 0)) for s in sim_stats)
    # Sent on a live connection whose PUBACK timed out: the broker may have passed them on.
    unconfirmed = sum(int(s.get("publish_unconfirmed", 0)) for s in sim_stats)
    prev = -1
    settle_deadline = time.monotonic() + 15
    h_fin = h_end
    while time.monotonic() < settle_deadline:
        h = api.health()
        if h is not None:
            h_fin = h
            n = int(h.get("light_states", 0))
            if n == prev:
                break
            prev = n
        time.sleep(0.5)
    received = int(h_fin.get("light_states", 0))
    retained = int(h_fin.get("light_states_retained", 0))
    dropped_payloads = int(h_fin.get("dropped_payloads", 0))
    time.sleep(1.5)  # one more $SYS round (sys_interval 1) after the last message
    dropped_broker, dropped_broker_why = drops.value()
    # Exact when the unconfirmed ones were delivered (the broker was up all along); negative
    # would mean duplicates (QoS 1 redelivery), which the result would show.
    lost_states = published + unconfirmed - (received - retained)
    incomplete = int(h_fin.get("fanout_incomplete", 0))

    intersections_status: list[dict[str, Any]] = []
    if opts.intersections:
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            intersections_status = api.call("GET", "/intersections", timeout=30)

    not_in_control = {
        x.get("id", x.get("intersection", "?")): {"sync": x.get("sync"), "alarms": x.get("alarms")}
        for x in intersections_status
        if x.get("sync") != "control"
    }
    ctl.stop(timeout=30)
    if cab is not None:
        cab.stop(timeout=20)

    # -- the result --------------------------------------------------------------------------
    def share(name: str) -> float | None:
        a, b = s0.get(name), s1.get(name)
        return round(cpu_share_pct(a, b), 1) if a and b else None

    cpu = share("controller")
    steps = [x.get("stats", {}).get("steps", 0) for x in intersections_status]
    lags = [x.get("stats", {}).get("max_step_lag_s", 0.0) for x in intersections_status]
    per_s_sorted = sorted(per_s)
    api_sorted = sorted(driver.api_ms)
    fan = {
        "count": int(h_fin.get("fanout_count", 0)),
        "in_window": int(_delta(h1, h0, "fanout_count")),
        "p50_ms": h_fin.get("fanout_p50_ms"),
        "p99_ms": h_fin.get("fanout_p99_ms"),
        "max_ms": h_fin.get("fanout_max_ms"),
        "incomplete": incomplete,
        "superseded": int(h_fin.get("fanout_superseded", 0)),
        "what": "controller's publish of a new group command → last node's acknowledging state",
    }
    peak_rss = round(hwm.hwm_kb / 1024, 1) if hwm else None
    lost_total = abs(lost_states) + incomplete + (dropped_broker or 0) + dropped_payloads
    result: dict[str, Any] = {
        "bench": "scale",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_avg_before": [round(x, 2) for x in load0],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "setup": {
            "lights": opts.lights,
            "groups": n_groups,
            "group_size": opts.group_size,
            "intersections": opts.intersections,
            "signal_step_s": doc["signals"].get("step_s", 0.1),
            "gateway_size": opts.gateway_size,
            "node_connections": sum(int(s.get("connections", 0)) for s in sim_stats),
            "sim_processes": opts.sim_processes,
            "duration_s": opts.duration_s,
            "changes_per_s": opts.changes_per_s,
            "report_interval_s": opts.report_interval_s,
            "node_tick_hz": opts.node_tick_hz,
            "telemetry": "on, local outbox (no database)",
            "profiled": opts.profile is not None,
            "controller_cpu": opts.controller_cpu,
        },
        "controller": {
            "cpu_pct_of_core": cpu,
            "cpu_pct_per_s_p50": round(percentile(per_s_sorted, 0.5), 1) if per_s else None,
            "cpu_pct_per_s_max": round(per_s_sorted[-1], 1) if per_s else None,
            "peak_rss_mb": peak_rss,
            "rss_end_mb": round(hwm.rss_kb / 1024, 1) if hwm else None,
            "ready_s": round(t_ready, 2),
            "converged_s": round(converged_s, 2) if "signals" in marks else None,
            "lights_converged_s": round(marks["lights"], 2),
            "signals_in_control_s": round(marks["signals"], 2) if "signals" in marks else None,
            "intersections_not_in_control": not_in_control,
            "window_s": round(window, 2),
            "mqtt_in_per_s": round(_delta(h1, h0, "mqtt_rx") / window, 1) if window else None,
            "mqtt_out_per_s": round(_delta(h1, h0, "mqtt_tx") / window, 1) if window else None,
            "light_states_per_s": round(_delta(h1, h0, "light_states") / window, 1)
            if window
            else None,
            "group_commands": int(_delta(h1, h0, "group_commands")),
            "node_retries": int(_delta(h1, h0, "node_retries")),
            "fanout": fan,
            "signal_steps_per_s": round(sum(steps) / max(1e-9, time.monotonic() - t_start), 1)
            if steps
            else None,
            "signal_max_step_lag_ms": round(max(lags) * 1000, 1) if lags else None,
            "api_changes": driver.calls,
            "api_errors": driver.errors,
            "api_ms_p50": round(percentile(api_sorted, 0.5), 1) if api_sorted else None,
            "api_ms_p99": round(percentile(api_sorted, 0.99), 1) if api_sorted else None,
        },
        "lost": {
            "states_published": published,
            "states_unconfirmed": unconfirmed,
            "states_received": received - retained,
            "states_lost": lost_states,
            "fanouts_incomplete": incomplete,
            "nodes_not_following_at_end": not_following,
            "dropped_payloads": dropped_payloads,
            "broker_dropped": dropped_broker,
            **({"broker_dropped_unread": dropped_broker_why} if dropped_broker is None else {}),
            "total": lost_total,
        },
        "processes_cpu_pct_of_core": {k: share(k) for k in pids},
        "processes_cpus": cpus_of,
        "simulator": sim_stats,
        "reference": reference,
        "targets": dict(TARGETS),
    }
    result["verdict"] = _verdict(result)
    if opts.profile is not None and opts.profile.exists():
        result["profile"] = profile_summary(opts.profile)
    result["wall_s"] = round(time.monotonic() - wall0, 1)
    return result


def _verdict(r: Mapping[str, Any]) -> dict[str, Any]:
    """Each target: the figure and whether it is met (None when it could not be measured)."""
    c = r["controller"]
    fig = {
        "controller_cpu_pct_of_core": c["cpu_pct_of_core"],
        "fanout_p99_ms": c["fanout"]["p99_ms"],
        "peak_rss_mb": c["peak_rss_mb"],
        "lost": r["lost"]["total"],
    }
    out: dict[str, Any] = {}
    for k, target in TARGETS.items():
        v = fig[k]
        out[k] = {"value": v, "target": target, "met": None if v is None else v <= target}
    return out


def profile_summary(path: Path, top: int = 20) -> dict[str, Any]:
    """The functions that dominate a cProfile dump: by own time, and by cumulative time."""
    st = pstats.Stats(str(path))
    raw: dict[Any, Any] = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())

    def name(key: tuple[str, int, str]) -> str:
        file, line, func = key
        short = file
        for marker in ("site-packages/", str(ROOT) + "/"):
            if marker in file:
                short = file.split(marker, 1)[1]
        return f"{short}:{line}({func})"

    by_tt = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    by_ct = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)[:top]
    return {
        "total_s": round(total, 2),
        "by_own_time": [
            {
                "function": name(k),
                "own_s": round(v[2], 2),
                "pct": round(100 * v[2] / total, 1),
                "calls": v[1],
            }
            for k, v in by_tt
        ],
        "by_cumulative_time": [
            {
                "function": name(k),
                "cum_s": round(v[3], 2),
                "pct": round(100 * v[3] / total, 1),
                "calls": v[1],
            }
            for k, v in by_ct
        ],
    }


def format_table(r: Mapping[str, Any]) -> str:
    """The result as a plain-text report for people."""
    s, c, lost, fan = r["setup"], r["controller"], r["lost"], r["controller"]["fanout"]

    def f(v: Any, spec: str = "", unit: str = "") -> str:
        if v is None:
            return "n/a"
        return f"{v:{spec}}{unit}"

    lines = [
        f"scale bench: {s['lights']:,} lights in {s['groups']} groups "
        f"({s['node_connections']} broker connections, gateways of {s['gateway_size']}), "
        f"{s['intersections']} intersections at {1 / s['signal_step_s']:g} Hz; "
        f"{s['duration_s']:g} s steady state, {s['changes_per_s']:g} group changes/s"
        + (" — PROFILED, CPU figures inflated" if s["profiled"] else ""),
        (
            f"controller pinned to CPU {s['controller_cpu']}, everything else on the other CPUs"
            if s.get("controller_cpu") is not None
            else "every process on every CPU (no pinning)"
        ),
        "",
        f"{'what':<44} {'measured':>14} {'target':>10} {'':>4}",
        "-" * 76,
    ]
    v = r["verdict"]

    def row(label: str, key: str, value: str, target: str) -> None:
        met = v[key]["met"]
        mark = "ok" if met else ("MISS" if met is not None else "?")
        lines.append(f"{label:<44} {value:>14} {target:>10} {mark:>4}")

    row(
        "controller CPU, share of one core",
        "controller_cpu_pct_of_core",
        f(c["cpu_pct_of_core"], ".1f", " %"),
        "≤ 50 %",
    )
    row("group-command fan-out p99", "fanout_p99_ms", f(fan["p99_ms"], ".1f", " ms"), "≤ 100 ms")
    row("controller peak RSS", "peak_rss_mb", f(c["peak_rss_mb"], ".1f", " MB"), "≤ 120 MB")
    row("messages lost", "lost", f(lost["total"]), "0")
    lines += [
        "",
        f"fan-out p50 {f(fan['p50_ms'], '.1f', ' ms')}, max {f(fan['max_ms'], '.1f', ' ms')}, "
        f"{fan['count']} timed ({fan['in_window']} in the window), {fan['incomplete']} incomplete, "
        f"{fan['superseded']} superseded",
        f"converged {f(c['converged_s'], '.1f', ' s')} after the controller's start (lights "
        f"{c['lights_converged_s']:.1f} s, intersections in control "
        f"{f(c['signals_in_control_s'], '.1f', ' s')})",
        f"controller MQTT in {f(c['mqtt_in_per_s'], ',.0f')} msg/s, out {f(c['mqtt_out_per_s'], ',.0f')} msg/s; "
        f"signal steps {f(c['signal_steps_per_s'], ',.0f')}/s, worst step lag "
        f"{f(c['signal_max_step_lag_ms'], '.0f', ' ms')}",
        f"CPU per second: median {f(c['cpu_pct_per_s_p50'], '.0f', ' %')}, max "
        f"{f(c['cpu_pct_per_s_max'], '.0f', ' %')}; API change p50 {f(c['api_ms_p50'], '.0f', ' ms')}, "
        f"p99 {f(c['api_ms_p99'], '.0f', ' ms')}",
        f"states: {lost['states_published']:,} published by the nodes (+ "
        f"{lost['states_unconfirmed']:,} unconfirmed), "
        f"{lost['states_received']:,} received; broker dropped {f(lost['broker_dropped'])}; "
        f"{lost['nodes_not_following_at_end']} nodes not following at the end",
        "CPU, share of one core: "
        + ", ".join(f"{k} {f(x, '.0f', ' %')}" for k, x in r["processes_cpu_pct_of_core"].items()),
    ]
    for ref in r["reference"]:
        if "error" in ref:
            lines.append(f"reference QoS {ref['qos']}: {ref['error']}")
        else:
            lines.append(
                f"reference (mosquitto_pub -l → mosquitto_sub, {ref['payload_bytes']} B, QoS "
                f"{ref['qos']}): {f(ref['msg_per_s'], ',')} msg/s ({ref['received']:,} of "
                f"{ref['messages']:,})"
            )
    out = c["intersections_not_in_control"]
    if out:
        shown = ", ".join(
            f"{xid} ({why['alarms'].get('cabinet_fault') or why['sync']})"
            for xid, why in list(out.items())[:5]
        )
        more = f" and {len(out) - 5} more" if len(out) > 5 else ""
        lines.append(f"NOT IN CONTROL at the end: {len(out)} intersections: {shown}{more}")
    m = r["machine"]
    speed = m.get("host_speed")
    lines.append(
        f"machine: {m['cpus']} CPUs, load {m['load_avg_before'][0]:.2f} before, "
        f"{m['load_avg_after'][0]:.2f} after; wall {r['wall_s']:.0f} s"
        + (
            f"; host speed (CPU ms of a fixed piece of work, lower is faster) "
            f"{speed['before']['cpu_ms']:.1f} before, {speed['after']['cpu_ms']:.1f} after"
            if speed
            else ""
        )
    )
    if "profile" in r:
        lines += ["", "profile (controller, own time):"]
        for e in r["profile"]["by_own_time"][:12]:
            lines.append(f"  {e['pct']:5.1f} %  {e['function']}")
    return "\n".join(lines)
