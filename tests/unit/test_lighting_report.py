"""The compact record of a node's last state (:mod:`controller.lighting.report`).

It must keep every fact of the state it was given (the API rebuilds the state from it), say
exactly when a state differs from the one held (telemetry records only those), and — its
reason to exist — leave nothing new for the garbage collector when a known node reports again.
"""

from __future__ import annotations

import datetime as dt
import gc
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from controller.config import load_config
from controller.lighting.core import LightingCore
from controller.lighting.report import NodeReport
from devices.lights import NodeFault, NodeMode, NodeState, decode, encode

ROOT = Path(__file__).resolve().parents[2]

states = st.builds(
    NodeState,
    node=st.just("QL-001"),
    group=st.sampled_from(["ql1a-north", "ql1a-south"]),
    ts=st.datetimes(
        min_value=dt.datetime(2026, 1, 1),
        max_value=dt.datetime(2027, 1, 1),
        timezones=st.just(dt.UTC),
    ),
    level=st.sampled_from([0.0, 40.0, 100.0]),
    target=st.sampled_from([0.0, 40.0, 100.0]),
    cmd_id=st.sampled_from([None, "a-1", "a-2"]),
    mode=st.sampled_from(list(NodeMode)),
    power_w=st.sampled_from([0.0, 61.5]),
    energy_wh=st.sampled_from([0.0, 12.25]),
    burn_h=st.sampled_from([0.0, 3.5]),
    switches=st.sampled_from([0, 7, 2**63 - 1]),
    faults=st.lists(st.sampled_from(list(NodeFault)), max_size=2, unique=True),
)


@given(states, states)
def test_a_report_keeps_every_fact_and_says_when_a_state_differs(
    a: NodeState, b: NodeState
) -> None:
    report = NodeReport(a, a.group, a.cmd_id)
    assert report.to_state("QL-001") == a
    assert report.update(a, a.group, a.cmd_id) is False  # the same state again
    assert report.update(b, b.group, b.cmd_id) is (a != b)
    assert report.to_state("QL-001") == b
    # What the API serialises is what came in.
    assert encode(report.to_state("QL-001")) == encode(b)


def test_a_known_node_reporting_again_leaves_no_new_object_for_the_collector() -> None:
    cfg = load_config(ROOT / "config.yaml")
    core = LightingCore(cfg)
    nodes = [(g.id, n) for g, n, _, _ in cfg.nodes()]

    def payload(node: str, group: str, i: int) -> bytes:
        return (
            f'{{"node": "{node}", "group": "{group}", "ts": "2026-12-03T18:00:{i % 60:02d}+00:00", '
            f'"level": {i % 100}.5, "target": 50.0, "cmd_id": "c-{i}", "mode": "remote", '
            f'"power_w": {i}.25, "energy_wh": {i}.5, "burn_h": 1.5, "switches": {i}, "faults": []}}'
        ).encode()

    for k, (group, node) in enumerate(nodes):
        core.on_node_state(decode(NodeState, payload(node, group, k)), float(k))
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        rounds = 1_000
        for i in range(rounds):
            group, node = nodes[i % len(nodes)]
            assert core.on_node_state(decode(NodeState, payload(node, group, i + 1)), 1e4 + i)
        grown = len(gc.get_objects()) - before
    finally:
        gc.enable()
    # A pydantic state kept per report was four tracked objects each (4,000 here).
    assert grown < 20, f"{grown} new tracked objects after {rounds} states"


def test_the_report_shares_the_strings_the_controller_holds() -> None:
    cfg = load_config(ROOT / "config.yaml")
    core = LightingCore(cfg)
    group = cfg.lighting.groups[0].id
    node = core.nodes_of(group)[0]
    now = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
    core.plan(now, 0.0, refresh_s=120, retry_after_s=3)  # the groups' first commands
    cmd = core.command_of(group)
    assert cmd is not None
    raw = encode(
        NodeState(
            node=node,
            group=group,
            ts=now,
            level=cmd.level,
            target=cmd.level,
            cmd_id=cmd.cmd_id,
            power_w=0.0,
            energy_wh=0.0,
            burn_h=0.0,
            switches=0,
        )
    )
    state = decode(NodeState, raw)  # fresh strings, as off the wire
    assert state.group is not group and state.cmd_id is not cmd.cmd_id
    core.on_node_state(state, 1.0)
    report = core._nodes[node].state
    assert report is not None
    assert report.group is core.node_group(node)
    assert report.cmd_id is cmd.cmd_id
    assert core.node_cmd_id(node) == cmd.cmd_id
