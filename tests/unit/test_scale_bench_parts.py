"""Pure parts of the scale bench: percentiles, fan-out timing, /proc parsing, the generated
config, option checks and the report."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.bench.scale import (
    SHIPPED_CONFIG,
    ProcSample,
    ScaleOptions,
    _verdict,
    build_config,
    cpu_share_pct,
    format_table,
    parse_proc_stat,
    parse_proc_status,
    proc_sample,
)
from controller.config import parse_config
from controller.lighting.fanout import FanoutTracker, percentile

# -- percentiles ----------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    v = [10.0, 20.0, 30.0, 40.0]
    assert percentile(v, 0.0) == 10.0
    assert percentile(v, 1.0) == 40.0
    assert percentile(v, 0.5) == 25.0
    assert percentile(list(range(101)), 0.99) == pytest.approx(99.0)
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError, match="q must be"):
        percentile(v, 1.5)


# -- fan-out --------------------------------------------------------------------------------


def test_fanout_is_timed_to_the_last_acknowledgement() -> None:
    f = FanoutTracker()
    f.sent("g1", "c1", waiting=3, t=10.0)
    assert f.pending == 1
    assert f.acked("g1", "c1", 10.02) is None
    assert f.acked("g1", "other-cmd", 10.03) is None  # an older command: not this fan-out
    assert f.acked("g2", "c1", 10.03) is None  # another group
    assert f.acked("g1", "c1", 10.04) is None
    assert f.acked("g1", "c1", 10.05) == pytest.approx(0.05)
    assert f.pending == 0
    assert f.acked("g1", "c1", 10.06) is None  # done: a late duplicate changes nothing
    s = f.summary()
    assert (s.count, s.incomplete, s.superseded) == (1, 0, 0)
    assert s.p50_ms == pytest.approx(50.0)
    assert s.max_ms == pytest.approx(50.0)


def test_fanout_superseded_incomplete_and_nothing_to_wait_for() -> None:
    f = FanoutTracker(timeout_s=5.0)
    f.sent("g1", "c1", waiting=2, t=0.0)
    f.sent("g1", "c2", waiting=2, t=1.0)  # a new command before c1 completed
    assert f.superseded == 1
    f.sent("g2", "c3", waiting=0, t=1.0)  # nobody online: nothing to time
    assert f.pending == 1
    assert f.expire(5.9) == 0
    assert f.expire(6.1) == 1  # c2 never completed
    s = f.summary()
    assert (s.count, s.incomplete, s.pending) == (0, 1, 0)
    assert s.p50_ms is None and s.p99_ms is None
    assert "fanout_p50_ms" not in s.as_fields()
    assert s.as_fields()["fanout_incomplete"] == 1


def test_fanout_keeps_a_window_of_the_newest_samples() -> None:
    f = FanoutTracker(window=4)
    for k in range(10):
        f.sent("g", f"c{k}", waiting=1, t=float(k))
        f.acked("g", f"c{k}", k + (k + 1) / 1000)  # latency k+1 ms
    assert f.count == 10
    assert f.samples() == pytest.approx([0.007, 0.008, 0.009, 0.010])
    s = f.summary()
    assert s.p50_ms == pytest.approx(8.5)
    assert s.max_ms == pytest.approx(10.0)
    fields = s.as_fields()
    assert fields["fanout_count"] == 10 and fields["fanout_p99_ms"] == pytest.approx(9.97)


# -- /proc ----------------------------------------------------------------------------------


def test_proc_stat_counts_from_the_last_parenthesis() -> None:
    # A command name with spaces and a parenthesis must not shift the fields.
    fields = ["S", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"] + ["150", "50"] + ["0"] * 30
    text = "4242 (cityctl (x) y) " + " ".join(fields)
    assert parse_proc_stat(text, 100) == pytest.approx(2.0)


def test_proc_status_reads_kb_values() -> None:
    text = "Name:\tpython\nVmHWM:\t  123456 kB\nVmRSS:\t   98765 kB\nThreads:\t4\n"
    assert parse_proc_status(text) == {"VmHWM": 123456, "VmRSS": 98765}


def test_proc_sample_of_this_process_and_of_none() -> None:
    s = proc_sample(os.getpid())
    assert s is not None and s.cpu_s > 0 and s.hwm_kb >= s.rss_kb > 0
    assert proc_sample(2**22 + 12345) is None  # no such process
    a = ProcSample(at=10.0, cpu_s=1.0, rss_kb=0, hwm_kb=0)
    b = ProcSample(at=12.0, cpu_s=1.5, rss_kb=0, hwm_kb=0)
    assert cpu_share_pct(a, b) == pytest.approx(25.0)


# -- the generated config -------------------------------------------------------------------


def _doc(lights: int, xs: int, group_size: int = 100) -> dict[str, Any]:
    base = yaml.safe_load(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    return build_config(
        base,
        lights=lights,
        intersections=xs,
        group_size=group_size,
        broker_url="mqtt://127.0.0.1:1883",
        prefix="bench",
        state_dir=Path("/tmp/bench-state"),
        api_port=8123,
        cabinet_ports=list(range(15000, 15000 + xs)),
    )


def test_generated_config_is_valid_and_has_the_size_asked_for() -> None:
    doc = _doc(250, 5)
    cfg, _warnings = parse_config(yaml.safe_dump(doc), source="bench")
    assert len(cfg.lighting.groups) == 3  # 100 + 100 + 50
    nodes = [n for _, n, _, _ in cfg.nodes()]
    assert len(nodes) == 250 and len(set(nodes)) == 250
    assert nodes[0] == "L00001" and nodes[-1] == "L00250"
    xs = cfg.signals.intersections
    assert [x.id for x in xs] == ["x001", "x002", "x003", "x004", "x005"]
    assert [x.cabinet.port for x in xs] == [15000, 15001, 15002, 15003, 15004]
    # Copies of the shipped pair: each copy of ql1a-lct follows the copy of its upstream made
    # with it; the odd one out has nobody upstream.
    ups = {x.id: x.coordination.upstream if x.coordination else None for x in xs}
    assert ups["x001"] == "x002" and ups["x003"] == "x004" and ups["x005"] is None
    assert cfg.telemetry.enabled and cfg.telemetry.influx is None
    assert cfg.api.tokens[0].role == "engineer" and not cfg.lighting.overrides


def test_generated_config_at_full_size() -> None:
    doc = _doc(10_000, 100)
    cfg, _ = parse_config(yaml.safe_dump(doc), source="bench")
    assert len(cfg.lighting.groups) == 100
    assert sum(1 for _ in cfg.nodes()) == 10_000
    assert len(cfg.signals.intersections) == 100


def test_generated_config_needs_one_port_per_intersection() -> None:
    base = yaml.safe_load(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match="cabinet_ports"):
        build_config(
            base,
            lights=10,
            intersections=2,
            group_size=10,
            broker_url="mqtt://127.0.0.1:1",
            prefix="p",
            state_dir=Path("/tmp/s"),
            api_port=1,
            cabinet_ports=[1],
        )


# -- options and report ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lights": 0}, "lights"),
        ({"duration_s": 0}, "duration"),
        ({"gateway_size": 0}, "gateway-size"),
        ({"sim_processes": 3, "lights": 2}, "sim-processes"),
        ({"changes_per_s": -1}, "changes-per-s"),
        ({"intersections": 1000}, "intersections"),
        ({"controller_cpu": 4096}, "controller-cpu: must be one of this process's CPUs"),
    ],
)
def test_options_name_the_bad_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScaleOptions(**change).check()


def test_groups_round_up() -> None:
    assert ScaleOptions(lights=10_000).groups == 100
    assert ScaleOptions(lights=250, group_size=100).groups == 3


def _result(cpu: float | None, p99: float | None, rss: float, lost: int) -> dict[str, Any]:
    r: dict[str, Any] = {
        "setup": {
            "lights": 10_000,
            "groups": 100,
            "node_connections": 100,
            "gateway_size": 100,
            "intersections": 100,
            "signal_step_s": 0.1,
            "duration_s": 60,
            "changes_per_s": 2,
            "profiled": False,
        },
        "controller": {
            "cpu_pct_of_core": cpu,
            "cpu_pct_per_s_p50": cpu,
            "cpu_pct_per_s_max": cpu,
            "peak_rss_mb": rss,
            "converged_s": None,
            "lights_converged_s": 12.5,
            "signals_in_control_s": None,
            "intersections_not_in_control": {
                f"x{k:03d}": {"sync": "cabinet_fault", "alarms": {"cabinet_fault": "latched"}}
                for k in range(7)
            },
            "mqtt_in_per_s": 400.0,
            "mqtt_out_per_s": 3.0,
            "signal_steps_per_s": None,
            "signal_max_step_lag_ms": None,
            "api_ms_p50": 40.0,
            "api_ms_p99": 90.0,
            "fanout": {
                "count": 120,
                "in_window": 120,
                "p50_ms": 60.0,
                "p99_ms": p99,
                "max_ms": p99,
                "incomplete": 0,
                "superseded": 0,
            },
        },
        "lost": {
            "states_published": 1000,
            "states_unconfirmed": 0,
            "states_received": 1000 - lost,
            "nodes_not_following_at_end": 0,
            "broker_dropped": 0,
            "total": lost,
        },
        "processes_cpu_pct_of_core": {"controller": cpu, "broker": 2.0},
        "reference": [
            {"qos": 0, "msg_per_s": 70000, "payload_bytes": 62, "received": 10, "messages": 10},
            {"qos": 1, "error": "mosquitto_pub/mosquitto_sub not installed (mosquitto-clients)"},
        ],
        "machine": {"cpus": 2, "load_avg_before": [0.5, 0, 0], "load_avg_after": [1.5, 0, 0]},
        "wall_s": 100.0,
    }
    r["verdict"] = _verdict(r)
    return r


def test_verdict_and_table() -> None:
    ok = _result(40.0, 90.0, 100.0, 0)
    assert all(v["met"] for v in ok["verdict"].values())
    bad = _result(91.6, 720.0, 165.0, 3)
    assert [v["met"] for v in bad["verdict"].values()] == [False, False, False, False]
    text = format_table(bad)
    assert "MISS" in text and "91.6 %" in text and "720.0 ms" in text
    assert "NOT IN CONTROL at the end: 7 intersections" in text and "and 2 more" in text
    assert "70,000 msg/s" in text and "not installed" in text
    unknown = _result(None, None, 100.0, 0)
    assert unknown["verdict"]["fanout_p99_ms"]["met"] is None
    assert "n/a" in format_table(unknown)


def test_free_ports_lie_below_the_ephemeral_range_and_are_free() -> None:
    import socket
    from pathlib import Path

    from controller.bench.mosquitto import free_port, free_ports

    # Ports the kernel may hand to outgoing connections at any moment are avoided: a server
    # restarted on its port must find it free.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    base = free_ports(5)
    assert base >= 10_000 and base + 5 <= low
    socks = [socket.socket() for _ in range(5)]
    try:
        for i, sock in enumerate(socks):
            sock.bind(("127.0.0.1", base + i))
    finally:
        for sock in socks:
            sock.close()
    assert 10_000 <= free_port() < low


def test_the_api_port_is_never_one_of_the_cabinets_ports() -> None:
    from unittest import mock

    from controller.bench import scale

    cabinets = range(20_000, 20_100)
    offered = iter([20_042, 20_099, 21_000])  # two inside the cabinets' range, then one outside
    with mock.patch.object(scale, "free_port", lambda: next(offered)):
        assert scale._api_port(cabinets) == 21_000
