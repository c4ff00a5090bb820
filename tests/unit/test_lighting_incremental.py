"""The lighting core's incremental work gives exactly what a scan of every node gives.

``LightingCore.check_faults`` diagnoses only the nodes whose inputs, group facts or silence
timer changed, and ``plan`` looks for lagging nodes only among those whose inputs or group
command changed. Two cores are fed the same random events — node states (healthy, dead lamp,
too much power, ramping, fallback, own diagnoses, acknowledging the current command or not),
availability, overrides, reconnects, time jumps across the silence and settle limits — one
working incrementally and one with ``full=True`` (the scan of every node), and must publish the
same commands and retries and flag the same alarms, with the same ``since`` and detail, at
every step.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config import CityConfig, load_config
from controller.lighting.core import LightingCore
from devices.lights import AlarmEntry, NodeFault, NodeMode, NodeState
from schedules.energy import LampPowerModel
from schedules.model import Override

ROOT = Path(__file__).resolve().parents[2]
TZ = ZoneInfo("Asia/Ho_Chi_Minh")
#: Late afternoon: the programs switch on at sunset within the hour the events span.
START = dt.datetime(2026, 11, 25, 17, 0, tzinfo=TZ)


def _cfg() -> CityConfig:
    cfg = load_config(ROOT / "config.yaml")
    # Short limits, so that random time jumps cross them often.
    faults = cfg.lighting.faults.model_copy(update={"stale_after_s": 40.0, "settle_s": 5.0})
    lighting = cfg.lighting.model_copy(update={"faults": faults})
    return cfg.model_copy(update={"lighting": lighting})


CFG = _cfg()
#: A few nodes of three groups: small enough that events hit the same nodes again.
NODES: list[tuple[str, str, float]] = []
for _group in CFG.lighting.groups[:3]:
    NODES += [(n, g.id, w) for g, n, w, _ in CFG.nodes() if g.id == _group.id][:4]
GROUPS = sorted({g for _, g, _ in NODES})

node_i = st.integers(0, len(NODES) - 1)
event = st.one_of(
    st.tuples(
        st.just("state"),
        node_i,
        st.sampled_from([0.0, 40.0, 60.0, 100.0]),  # level
        st.sampled_from(["settled", "ramping"]),
        st.sampled_from(["current", "none", "stale"]),  # which cmd_id it reports
        st.sampled_from(["ok", "dead", "high"]),  # power drawn
        st.sampled_from([NodeMode.REMOTE, NodeMode.FALLBACK]),
        st.sampled_from([(), (NodeFault.DRIVER_FAILURE,), (NodeFault.SUPPLY_LOST,)]),
    ),
    st.tuples(st.just("availability"), node_i, st.booleans()),
    st.tuples(st.just("wait"), st.sampled_from([0.5, 2.0, 4.0, 6.0, 30.0, 45.0, 200.0])),
    st.tuples(st.just("override"), st.sampled_from(GROUPS), st.sampled_from([None, 0.0, 70.0])),
    st.tuples(st.just("reconnect")),
    st.tuples(st.just("step"), st.booleans()),  # with the inbox drained or not
)


def _state(core: LightingCore, ev: tuple[object, ...]) -> NodeState:
    _, i, level, ramp, which, power, mode, faults = ev
    assert isinstance(i, int) and isinstance(level, float)
    node, group, lamp_w = NODES[i]
    cmd = core.command_of(group)
    current = None if cmd is None else cmd.cmd_id
    cmd_id = {"current": current, "none": None, "stale": "0-old-1"}[str(which)]
    watts = LampPowerModel(rated_w=lamp_w).power_w(level)
    watts = {"ok": watts, "dead": 0.3, "high": watts * 2 + 20}[str(power)]
    return NodeState(
        node=node,
        group=group,
        ts=dt.datetime(2026, 11, 25, tzinfo=dt.UTC),
        level=level,
        target=level if ramp == "settled" else min(100.0, level + 30.0),
        cmd_id=cmd_id,
        mode=mode,  # type: ignore[arg-type]
        power_w=watts,
        energy_wh=0.0,
        burn_h=0.0,
        switches=0,
        faults=list(faults),  # type: ignore[call-overload]
    )


def _alarms(changed: dict[str, list[AlarmEntry]]) -> dict[str, list[tuple[str, dt.datetime, str]]]:
    return {n: [(a.kind, a.since, a.detail) for a in al] for n, al in changed.items()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event, min_size=1, max_size=60))
def test_incremental_work_equals_the_full_scan(events: list[tuple[object, ...]]) -> None:
    # The same boot id in both, so that their command ids are the same.
    with mock.patch("controller.lighting.core.secrets.token_hex", return_value="b007"):
        inc, ref = LightingCore(CFG), LightingCore(CFG)
    mono, connected, drained = 0.0, 0.0, 0.0
    overrides: dict[str, Override] = {}
    for ev in [*events, ("step", True)]:
        kind = ev[0]
        if kind == "state":
            for core in (inc, ref):
                core.on_node_state(_state(core, ev), mono)
        elif kind == "availability":
            node = NODES[int(ev[1])][0]  # type: ignore[call-overload]
            for core in (inc, ref):
                core.on_node_availability(node, bool(ev[2]), mono)
        elif kind == "wait":
            mono += float(ev[1])  # type: ignore[arg-type]
        elif kind == "override":
            group, level = str(ev[1]), ev[2]
            if level is None:
                overrides.pop(group, None)
            else:
                now = START + dt.timedelta(seconds=mono)
                overrides[group] = Override(
                    id=f"o-{group}",
                    groups=[group],
                    level=float(level),  # type: ignore[arg-type]
                    start=now,
                    until=now + dt.timedelta(hours=2),
                )
            for core in (inc, ref):
                core.set_overrides(overrides.values())
        elif kind == "reconnect":
            connected = mono
        else:
            if ev[1]:
                drained = mono
            now = START + dt.timedelta(seconds=mono)
            link_up = mono - connected
            out = []
            for core, full in ((inc, False), (ref, True)):
                cmds, retries = core.plan(
                    now, mono, refresh_s=60, retry_after_s=3, as_of=drained, full=full
                )
                changed = core.check_faults(now, mono, link_up_for_s=link_up, full=full)
                out.append(
                    (
                        [(c.group, c.command.cmd_id, c.command.level, c.reason) for c in cmds],
                        [(r.node, r.attempt, r.command.cmd_id) for r in retries],
                        _alarms(changed),
                    )
                )
            assert out[0] == out[1]
            assert _alarms(inc.faults.alarms()) == _alarms(ref.faults.alarms())


@pytest.fixture
def core() -> LightingCore:
    return LightingCore(CFG)


def test_a_silent_node_is_flagged_when_its_timer_runs_out_and_not_before(
    core: LightingCore,
) -> None:
    node, group, _ = NODES[0]
    stale = CFG.lighting.faults.stale_after_s
    now = START
    core.plan(now, 0.0, refresh_s=1e9, retry_after_s=3)
    core.on_node_state(
        _state(core, ("state", 0, 0.0, "settled", "current", "ok", NodeMode.REMOTE, ())), 1.0
    )
    core.check_faults(now, 1.0, link_up_for_s=1e9)
    # Exactly at the limit it is not yet silent (the diagnosis' own strict comparison).
    assert "node_offline" not in core.faults.active.get(node, {})
    assert core.check_faults(now, 1.0 + stale, link_up_for_s=1e9) == {}
    changed = core.check_faults(now, 1.0 + stale + 0.1, link_up_for_s=1e9)
    assert [a.kind for a in changed[node]] == ["node_offline"]
    # A report restarts the timer and clears the alarm; the group stays as it was.
    core.on_node_state(
        _state(core, ("state", 0, 0.0, "settled", "current", "ok", NodeMode.REMOTE, ())), 50.0
    )
    assert core.check_faults(now, 50.0, link_up_for_s=1e9) == {node: []}
    assert group == core.node_group(node)


def test_no_retry_while_the_acknowledgement_may_still_be_unread(core: LightingCore) -> None:
    now = START + dt.timedelta(hours=6)  # night: the groups are on
    cmds, _ = core.plan(now, 0.0, refresh_s=1e9, retry_after_s=3)
    node, group, _ = NODES[0]
    lagging = _state(core, ("state", 0, 0.0, "settled", "none", "ok", NodeMode.REMOTE, ()))
    assert any(c.group == group for c in cmds)
    core.on_node_availability(node, True, 0.0)
    core.on_node_state(lagging, 0.5)
    # 10 s after the command, but the inbox was last empty 1 s after it: no retry yet.
    _, retries = core.plan(now, 10.0, refresh_s=1e9, retry_after_s=3, as_of=1.0)
    assert retries == []
    # Once it has been read empty 3 s after the command, the node really missed it.
    _, retries = core.plan(now, 10.5, refresh_s=1e9, retry_after_s=3, as_of=3.0)
    assert [(r.node, r.attempt) for r in retries] == [(node, 1)]
    # The backoff (6 s) is judged the same way: from the send at 10.5.
    _, retries = core.plan(now, 20.0, refresh_s=1e9, retry_after_s=3, as_of=16.0)
    assert retries == []
    _, retries = core.plan(now, 20.0, refresh_s=1e9, retry_after_s=3, as_of=16.5)
    assert [(r.node, r.attempt) for r in retries] == [(node, 2)]


def test_a_group_that_settles_gets_its_nodes_judged_without_a_new_report(
    core: LightingCore,
) -> None:
    night = START + dt.timedelta(hours=6)
    cmds, _ = core.plan(night, 0.0, refresh_s=1e9, retry_after_s=3)
    node, group, _ = NODES[0]
    level = next(c.command.level for c in cmds if c.group == group)
    dead = ("state", 0, level, "settled", "current", "dead", NodeMode.REMOTE, ())
    core.on_node_state(_state(core, dead), 1.0)
    settle = CFG.lighting.faults.settle_s
    # The command is younger than settle_s: power is not judged yet.
    assert core.check_faults(night, 1.0, link_up_for_s=1e9) == {}
    # The node says nothing more; its group's command settling is what brings the alarm.
    changed = core.check_faults(night, settle + 0.1, link_up_for_s=1e9)
    assert [a.kind for a in changed[node]] == ["lamp_failure"]
