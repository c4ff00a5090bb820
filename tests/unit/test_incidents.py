"""Incidents: faults and reports as cases (controller/incidents)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.clock import ManualClock
from controller.config import load_config
from controller.incidents import (
    AlreadyAcknowledged,
    BadReport,
    Directory,
    EventKind,
    FaultKey,
    FaultSnapshot,
    FaultStillActive,
    Incident,
    IncidentClosed,
    IncidentEngine,
    IncidentError,
    IncidentEvent,
    IncidentSettings,
    IncidentStore,
    Place,
    Severity,
    State,
    UnknownIncident,
    haversine_m,
    intersection_faults,
    lighting_faults,
    open_incidents,
    runtime_faults,
    severity_of,
    telemetry_faults,
)
from devices.cabinet import CabinetMode, FaultCode
from devices.lights import AlarmEntry

if TYPE_CHECKING:
    from controller.runtime import Controller

T0 = dt.datetime(2025, 1, 6, 18, 0, tzinfo=dt.UTC)
ROOT = Path(__file__).resolve().parents[2]

G1 = (20.5452, 105.9128)  # group g1's location (N2, N3 have none of their own)
N1 = (20.5471, 105.9122)  # N1's own location, ~220 m north of G1
X1 = (20.5431, 105.9150)  # intersection X1, ~330 m from G1
FAR = (21.0285, 105.8542)  # Hà Nội: nothing configured near


@dataclass(frozen=True)
class CabinetStatusLike:
    """The part of a CabinetStatus runtime_faults reads."""

    flashing: bool
    mode: CabinetMode
    fault: FaultCode


def _directory() -> Directory:
    return Directory(
        [
            Place("group", "g1", G1),
            Place("node", "N1", N1, "g1"),
            Place("node", "N2", None, "g1"),
            Place("node", "N3", None, "g1"),
            Place("intersection", "X1", X1),
            Place("controller", "edge-1"),
        ]
    )


def _north(p: tuple[float, float], metres: float) -> tuple[float, float]:
    return (p[0] + metres / 111_195.0, p[1])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def engine(clock: ManualClock) -> IncidentEngine:
    return IncidentEngine(_directory(), now=clock.now)


def _at(s: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=s)


def _kinds(e: IncidentEngine, inc: Incident) -> list[str]:
    return [ev.kind.value for ev in e.history(inc.id)]


# -- faults ---------------------------------------------------------------------------------


def test_a_fault_opens_an_incident_with_the_severity_of_its_kind(engine: IncidentEngine) -> None:
    inc = engine.observe("node", "N1", "lamp_failure", True, "drawing 2 W", _at(0))
    assert inc is not None
    assert (inc.state, inc.origin, inc.severity) == (State.OPEN, "fault", Severity.MAJOR)
    assert (inc.device_kind, inc.device_id, inc.fault_kind) == ("node", "N1", "lamp_failure")
    assert inc.detail == "drawing 2 W" and inc.fault_active and inc.location == N1
    assert _kinds(engine, inc) == ["opened"]
    x = engine.observe("intersection", "X1", "cabinet_fault", True, "latched", _at(1))
    d = engine.observe("intersection", "X1", "detector:D4", True, "stuck", _at(2))
    assert x is not None and x.severity is Severity.CRITICAL
    assert d is not None and d.severity is Severity.MINOR and d.kind == "detector"
    assert severity_of("something_new") is Severity.MAJOR


def test_the_same_fault_again_is_idempotent(engine: IncidentEngine) -> None:
    first = engine.observe("node", "N1", "lamp_failure", True, "dark", _at(0))
    assert engine.observe("node", "N1", "lamp_failure", True, "dark again", _at(60)) is None
    assert len(engine.incidents()) == 1
    assert first is not None and engine.get(first.id) == first
    assert len(engine.history(first.id)) == 1
    # A clear of a fault nobody reported changes nothing either.
    assert engine.observe("node", "N2", "lamp_failure", False, at=_at(60)) is None


def test_the_fault_clearing_closes_the_incident_with_time_to_resolve(
    engine: IncidentEngine,
) -> None:
    inc = engine.observe("node", "N1", "node_offline", True, "last will", _at(0))
    assert inc is not None
    done = engine.observe("node", "N1", "node_offline", False, at=_at(300))
    assert done is not None and done.id == inc.id
    assert (done.state, done.resolution, done.closed_by) == (
        State.CLEARED,
        "fault cleared",
        "system",
    )
    assert done.closed_at == _at(300) and done.time_to_resolve_s == 300
    assert not done.fault_active and not done.is_open
    assert _kinds(engine, done) == ["opened", "cleared"]


def test_a_flapping_fault_reopens_its_incident_within_the_window(engine: IncidentEngine) -> None:
    a = engine.observe("node", "N1", "lamp_failure", True, "dark", _at(0))
    assert a is not None
    engine.acknowledge(a.id, "lan", at=_at(30))
    engine.observe("node", "N1", "lamp_failure", False, at=_at(100))
    back = engine.observe("node", "N1", "lamp_failure", True, "dark", _at(100 + 600))
    assert back is not None and back.id == a.id
    assert back.state is State.ACKNOWLEDGED and back.reopened == 1 and back.closed_at is None
    assert back.fault_active
    engine.observe("node", "N1", "lamp_failure", False, at=_at(1000))
    assert engine.get(a.id).time_to_resolve_s == 1000  # to the final closing
    later = engine.observe("node", "N1", "lamp_failure", True, "dark", _at(1000 + 601))
    assert later is not None and later.id != a.id and later.state is State.OPEN
    assert _kinds(engine, engine.get(a.id)) == ["opened", "acked", "cleared", "reopened", "cleared"]


def test_the_reopen_window_is_a_setting(clock: ManualClock) -> None:
    e = IncidentEngine(_directory(), now=clock.now, settings=IncidentSettings(reopen_window_s=0))
    a = e.observe("node", "N1", "lamp_failure", True, "dark", _at(0))
    e.observe("node", "N1", "lamp_failure", False, at=_at(10))
    b = e.observe("node", "N1", "lamp_failure", True, "dark", _at(11))
    assert a is not None and b is not None and a.id != b.id
    with pytest.raises(ValueError, match="reopen_window_s"):
        IncidentSettings(reopen_window_s=-1)


def test_observe_rejects_bad_input(engine: IncidentEngine) -> None:
    with pytest.raises(ValueError, match="device_kind"):
        engine.observe("lamp", "N1", "lamp_failure", True)
    with pytest.raises(ValueError, match="empty"):
        engine.observe("node", "", "lamp_failure", True)
    with pytest.raises(ValueError, match="timezone"):
        engine.observe("node", "N1", "lamp_failure", True, at=dt.datetime(2025, 1, 1))
    assert engine.incidents() == []


# -- people ---------------------------------------------------------------------------------


def test_acknowledge_rules(engine: IncidentEngine, clock: ManualClock) -> None:
    inc = engine.observe("node", "N1", "lamp_failure", True, "dark", _at(0))
    assert inc is not None
    clock.advance(120)
    acked = engine.acknowledge(inc.id, "lan", "crew sent")
    assert (acked.state, acked.acked_by, acked.time_to_acknowledge_s) == (
        State.ACKNOWLEDGED,
        "lan",
        120,
    )
    assert engine.history(inc.id)[-1].note == "crew sent"
    with pytest.raises(AlreadyAcknowledged, match="lan"):
        engine.acknowledge(inc.id, "minh")
    with pytest.raises(UnknownIncident):
        engine.acknowledge("INC-999999", "lan")
    with pytest.raises(IncidentError, match="who"):
        engine.acknowledge(inc.id, " ")
    engine.observe("node", "N1", "lamp_failure", False, at=_at(300))
    with pytest.raises(IncidentClosed, match="cleared"):
        engine.acknowledge(inc.id, "minh")


def test_resolving_while_the_fault_persists_is_refused_unless_forced(
    engine: IncidentEngine,
) -> None:
    inc = engine.observe("intersection", "X1", "cabinet_fault", True, "latched CONFLICT", _at(0))
    assert inc is not None
    with pytest.raises(FaultStillActive, match="still reports cabinet_fault"):
        engine.resolve(inc.id, "minh", "looked at it", at=_at(60))
    assert engine.get(inc.id).is_open
    with pytest.raises(IncidentError, match="note"):
        engine.resolve(inc.id, "minh", "", force=True, at=_at(60))
    done = engine.resolve(inc.id, "minh", "cabinet replaced", force=True, at=_at(120))
    assert (done.state, done.closed_by, done.resolution) == (
        State.RESOLVED,
        "minh",
        "cabinet replaced",
    )
    assert done.fault_active and done.acked_by == "minh" and done.acked_at == _at(120)
    assert "forced" in engine.history(inc.id)[-1].note
    with pytest.raises(IncidentClosed, match="resolved"):
        engine.resolve(inc.id, "lan", "again")
    # The fault goes on: no new incident for it; when it clears, that is recorded…
    snap = FaultSnapshot({FaultKey("intersection", "X1", "cabinet_fault"): "latched"})
    assert engine.sync(snap, _at(200)) == []
    assert engine.observe("intersection", "X1", "cabinet_fault", False, at=_at(300)) is not None
    assert engine.get(inc.id).state is State.RESOLVED
    assert _kinds(engine, inc)[-1] == "fault_cleared"
    # … and the fault coming back much later is a new incident.
    again = engine.observe("intersection", "X1", "cabinet_fault", True, "latched", _at(5000))
    assert again is not None and again.id != inc.id


# -- reports --------------------------------------------------------------------------------


def test_a_report_by_node_id_joins_the_open_incident(engine: IncidentEngine) -> None:
    inc = engine.observe("node", "N1", "lamp_failure", True, "dark", _at(0))
    assert inc is not None
    out = engine.report(None, "N1", "lamp out in front of no. 12", "hotline-17", kind="dark_lamp")
    assert out.joined and out.incident.id == inc.id and out.incident.reports == 1
    assert out.matched == Place("node", "N1", N1, "g1")
    out2 = engine.report(None, "node:N1", "still dark", "hotline-18", kind="dark_lamp")
    assert out2.incident.id == inc.id and out2.incident.reports == 2
    assert _kinds(engine, inc) == ["opened", "reported", "reported"]
    # The incident still closes with its fault.
    engine.observe("node", "N1", "lamp_failure", False, at=_at(500))
    assert engine.get(inc.id).state is State.CLEARED


def test_a_report_by_location_matches_the_nearest_place_and_links_the_fault_later(
    engine: IncidentEngine,
) -> None:
    here = _north(X1, 60)
    out = engine.report(
        here, None, "all red for 5 minutes", "police", kind="stuck_signal", at=_at(0)
    )
    assert not out.joined and out.matched is not None and out.matched.id == "X1"
    assert out.distance_m is not None and out.distance_m == pytest.approx(60, abs=1)
    inc = out.incident
    assert (inc.origin, inc.device_id, inc.fault_kind, inc.severity) == (
        "reported",
        "X1",
        None,
        Severity.MAJOR,
    )
    assert inc.location == here and inc.kind == "report:stuck_signal"
    # The cabinet's fault explains it: it joins the report instead of opening its own.
    linked = engine.observe("intersection", "X1", "cabinet_fault", True, "latched", _at(60))
    assert linked is not None and linked.id == inc.id
    assert linked.fault_kind == "cabinet_fault" and linked.severity is Severity.CRITICAL
    assert len(engine.incidents()) == 1
    closed = engine.observe("intersection", "X1", "cabinet_fault", False, at=_at(600))
    assert closed is not None and closed.state is State.CLEARED and closed.time_to_resolve_s == 600
    assert _kinds(engine, inc) == ["reported", "linked", "cleared"]


def test_a_fault_that_does_not_fit_the_report_opens_its_own_incident(
    engine: IncidentEngine,
) -> None:
    rep = engine.report(_north(N1, 10), None, "dark", "resident", kind="dark_lamp", at=_at(0))
    assert rep.matched is not None and rep.matched.id == "N1"
    burner = engine.observe("node", "N1", "day_burner", True, "lit at noon", _at(10))
    assert burner is not None and burner.id != rep.incident.id
    lamp = engine.observe("node", "N1", "lamp_failure", True, "2 W", _at(20))
    assert lamp is not None and lamp.id == rep.incident.id


def test_a_report_near_a_group_links_the_fault_of_a_node_without_its_own_location(
    engine: IncidentEngine,
) -> None:
    out = engine.report(_north(G1, -40), None, "two lamps dark", "resident", kind="dark_lamp")
    assert out.matched is not None and (out.matched.kind, out.matched.id) == ("group", "g1")
    assert (out.incident.device_kind, out.incident.device_id) == ("group", "g1")
    linked = engine.observe("node", "N2", "node_offline", True, "last will", _at(30))
    assert linked is not None and linked.id == out.incident.id
    assert (linked.device_kind, linked.device_id) == ("node", "N2")


def test_a_report_near_a_group_joins_an_open_incident_of_one_of_its_nodes(
    engine: IncidentEngine,
) -> None:
    inc = engine.observe("node", "N3", "supply_lost", True, "no mains", _at(0))
    assert inc is not None
    out = engine.report(G1, None, "street dark", "resident", kind="dark_lamp", at=_at(10))
    assert out.joined and out.incident.id == inc.id


def test_the_report_hint_steers_the_match(engine: IncidentEngine) -> None:
    # Between G1 and X1 but nearer G1: a signal report still goes to the intersection when
    # it is within the radius, a lamp report to the lights.
    e = IncidentEngine(_directory(), now=lambda: T0, settings=IncidentSettings(match_radius_m=400))
    mid = (20.5445, 105.9136)
    assert haversine_m(mid, G1) < haversine_m(mid, X1)
    sig = e.report(mid, None, "flashing yellow", "taxi", kind="flashing_signal")
    lamp = e.report(mid, None, "dark", "taxi", kind="dark_lamp")
    assert sig.matched is not None and sig.matched.id == "X1"
    assert lamp.matched is not None and lamp.matched.id == "g1"


def test_an_unmatched_report_is_kept_without_a_device(engine: IncidentEngine) -> None:
    out = engine.report(FAR, None, "lamp dark on Tràng Tiền", "visitor", kind="dark_lamp")
    assert out.matched is None and out.distance_m is None and not out.joined
    inc = out.incident
    assert inc.device_kind is None and inc.is_open and inc.location == FAR
    # A second one at the same spot is its own incident (nothing to join by device).
    again = engine.report(FAR, None, "same lamp", "visitor 2", kind="dark_lamp")
    assert again.incident.id != inc.id
    done = engine.resolve(inc.id, "lan", "forwarded to Hà Nội", at=_at(3600))
    assert done.state is State.RESOLVED and done.time_to_resolve_s == 3600


def test_a_report_on_a_healthy_device_stays_open_for_a_person(engine: IncidentEngine) -> None:
    out = engine.report(None, "N1", "lamp leans over the road", "resident", at=_at(0))
    assert out.incident.fault_kind is None and out.incident.hint == "other"
    assert engine.sync(FaultSnapshot({}), _at(1000)) == []
    assert engine.get(out.incident.id).is_open
    # A second report on the same device joins it.
    assert engine.report(None, "N1", "really leaning", "resident 2").incident.id == out.incident.id
    done = engine.resolve(out.incident.id, "crew", "pole straightened", at=_at(2000))
    assert done.state is State.RESOLVED


def test_a_report_on_a_fault_closed_by_force_binds_to_it_and_closes_with_it(
    engine: IncidentEngine,
) -> None:
    inc = engine.observe("node", "N1", "lamp_failure", True, "dark", _at(0))
    assert inc is not None
    engine.resolve(inc.id, "lan", "work order 42", force=True, at=_at(10))
    out = engine.report(None, "N1", "still dark", "resident", kind="dark_lamp", at=_at(20))
    assert not out.joined and out.incident.id != inc.id
    assert out.incident.fault_kind == "lamp_failure" and out.incident.fault_active
    assert not engine.get(inc.id).fault_active  # one incident carries a fault
    assert list(engine.active_faults().values()) == [out.incident.id]
    engine.observe("node", "N1", "lamp_failure", False, at=_at(900))
    assert engine.get(out.incident.id).state is State.CLEARED


def test_bad_reports_are_refused_and_change_nothing(engine: IncidentEngine) -> None:
    with pytest.raises(BadReport, match="location"):
        engine.report(None, None, "dark", "resident")
    with pytest.raises(BadReport, match="kind"):
        engine.report(G1, None, "dark", "resident", kind="broken")
    with pytest.raises(BadReport, match="lat"):
        engine.report((95.0, 105.0), None, "dark", "resident")
    with pytest.raises(BadReport, match="no node"):
        engine.report(None, "ZZ-1", "dark", "resident")
    with pytest.raises(BadReport, match="reporter"):
        engine.report(G1, None, "dark", "")
    amb = Directory([Place("node", "A"), Place("intersection", "A")])
    e = IncidentEngine(amb, now=lambda: T0)
    with pytest.raises(BadReport, match="ambiguous"):
        e.report(None, "A", "dark", "resident")
    assert e.report(None, "intersection:A", "dark", "resident").matched == Place(
        "intersection", "A"
    )
    assert engine.incidents() == []


# -- sync from the alarm snapshots ----------------------------------------------------------


def test_sync_opens_and_clears_the_differences(engine: IncidentEngine) -> None:
    lamp = FaultKey("node", "N1", "lamp_failure")
    cab = FaultKey("intersection", "X1", "cabinet_down")
    db = FaultKey("controller", "edge-1", "database_down")
    changed = engine.sync(FaultSnapshot({lamp: "dark", cab: "no answer", db: "60 s"}), _at(0))
    assert {i.fault_kind for i in changed} == {"lamp_failure", "cabinet_down", "database_down"}
    assert engine.sync(FaultSnapshot({lamp: "dark", cab: "no answer", db: "60 s"}), _at(1)) == []
    # The signal loop does not run in this snapshot: its fault is left alone.
    partial = FaultSnapshot({lamp: "dark"}, frozenset({"node", "controller"}))
    changed = engine.sync(partial, _at(2))
    assert [i.fault_kind for i in changed] == ["database_down"]
    assert set(engine.active_faults()) == {lamp, cab}


def test_a_restart_keeps_carried_faults_until_the_sources_had_time_to_judge(
    tmp_path: Path,
) -> None:
    lamp = FaultKey("node", "N1", "lamp_failure")
    off = FaultKey("node", "N2", "node_offline")
    e, store = open_incidents(tmp_path, _directory(), now=lambda: T0)
    e.sync(FaultSnapshot({lamp: "dark", off: "silent"}), _at(0))
    store.close()  # (a SIGKILL would not close it: see the persistence test)
    e2, store2 = open_incidents(
        tmp_path, _directory(), now=lambda: T0, settings=IncidentSettings(restart_grace_s=240)
    )
    assert set(e2.active_faults()) == {lamp, off}
    # Just restarted: the lighting loop has not judged anything yet.
    assert e2.sync(FaultSnapshot({}), _at(1000)) == []
    # The lamp is seen again (a live fault now); the node comes back online.
    assert e2.sync(FaultSnapshot({lamp: "dark"}), _at(1100)) == []
    # Grace over: the node's fault was never seen again, so it is cleared.
    changed = e2.sync(FaultSnapshot({lamp: "dark"}), _at(1240))
    assert [(i.device_id, i.state) for i in changed] == [("N2", State.CLEARED)]
    # A live fault clears at once.
    changed = e2.sync(FaultSnapshot({}), _at(1241))
    assert [(i.device_id, i.state) for i in changed] == [("N1", State.CLEARED)]
    store2.close()


def test_adapters_turn_alarm_dicts_into_fault_keys() -> None:
    entry = AlarmEntry(kind="lamp_failure", since=T0, detail="2 W")
    assert lighting_faults({"N1": {"lamp_failure": entry}}) == {
        FaultKey("node", "N1", "lamp_failure"): "2 W"
    }
    alarms = {"cabinet_down": "no answer", "detector:D4": "stuck (constant call)"}
    assert intersection_faults("X1", alarms) == {
        FaultKey("intersection", "X1", "cabinet_down"): "no answer",
        FaultKey("intersection", "X1", "detector:D4"): "stuck (constant call)",
    }
    flash = intersection_faults("X1", {}, cabinet_flashing="cabinet in FLASH (HEARTBEAT_LOST)")
    assert list(flash) == [FaultKey("intersection", "X1", "cabinet_flash")]
    # A latched fault already says why it flashes: no second incident.
    latched = intersection_faults("X1", {"cabinet_fault": "x"}, cabinet_flashing="FLASH")
    assert list(latched) == [FaultKey("intersection", "X1", "cabinet_fault")]
    assert telemetry_faults("edge-1", {"outbox_full": "dropped"}) == {
        FaultKey("controller", "edge-1", "outbox_full"): "dropped"
    }


def test_runtime_faults_reads_every_loop_of_a_controller() -> None:
    entry = AlarmEntry(kind="node_offline", since=T0, detail="last will")
    cab = CabinetStatusLike(flashing=True, mode=CabinetMode.FLASH, fault=FaultCode.HEARTBEAT_LOST)
    runner = SimpleNamespace(
        cabinet=cab, link=SimpleNamespace(up=True), sync="handover", alarms={"detector:D2": "x"}
    )
    ctrl = SimpleNamespace(
        lighting=SimpleNamespace(
            core=SimpleNamespace(faults=SimpleNamespace(active={"N1": {"node_offline": entry}}))
        ),
        signals=SimpleNamespace(runners={"X1": runner}),
        telemetry=SimpleNamespace(alarms={"database_down": "60 s"}),
        cfg=SimpleNamespace(controller=SimpleNamespace(id="edge-1")),
    )
    snap = runtime_faults(cast("Controller", ctrl))
    assert snap.faults == {
        FaultKey("node", "N1", "node_offline"): "last will",
        FaultKey("intersection", "X1", "detector:D2"): "x",
        FaultKey("intersection", "X1", "cabinet_flash"): "cabinet in FLASH (HEARTBEAT_LOST)",
        FaultKey("controller", "edge-1", "database_down"): "60 s",
    }
    assert {"node", "intersection", "controller"} <= snap.covers
    ctrl.signals = None
    ctrl.telemetry = None
    snap = runtime_faults(cast("Controller", ctrl))
    assert "intersection" not in snap.covers and "controller" not in snap.covers


def test_the_directory_from_the_shipped_config() -> None:
    cfg = load_config(ROOT / "config.yaml")
    d = Directory.from_config(cfg)
    x = d.get("intersection", "ql1a-lct")
    assert x is not None and x.location == (20.5431, 105.9150)
    n = d.get("node", "QL-001")
    assert n is not None and n.location == (20.5471, 105.9122) and n.group is not None
    assert d.get("node", "QL-002") is not None and d.get("node", "QL-002").location is None  # type: ignore[union-attr]
    e = IncidentEngine(d, now=lambda: T0)
    out = e.report(_north((20.5431, 105.9150), 30), None, "stuck", "police", kind="stuck_signal")
    assert out.matched is not None and out.matched.id == "ql1a-lct"


# -- figures --------------------------------------------------------------------------------


def _timeline(e: IncidentEngine) -> None:
    """A: lamp 0 → acked 600 → cleared 3600; B: offline 1200 → cleared 3000;
    C: cabinet fault 1800 → acked 1860 → resolved (forced) 9000; D: detector 4000, open;
    E: unmatched report 5000, open."""
    a = e.observe("node", "N1", "lamp_failure", True, "dark", _at(0))
    assert a is not None
    e.acknowledge(a.id, "lan", at=_at(600))
    e.observe("node", "N2", "node_offline", True, "silent", _at(1200))
    c = e.observe("intersection", "X1", "cabinet_fault", True, "latched", _at(1800))
    assert c is not None
    e.acknowledge(c.id, "minh", at=_at(1860))
    e.observe("node", "N2", "node_offline", False, at=_at(3000))
    e.observe("node", "N1", "lamp_failure", False, at=_at(3600))
    e.observe("intersection", "X1", "detector:D4", True, "stuck", _at(4000))
    e.report(FAR, None, "dark", "visitor", kind="dark_lamp", at=_at(5000))
    e.resolve(c.id, "minh", "cabinet replaced", force=True, at=_at(9000))


def test_stats_on_a_hand_made_timeline(engine: IncidentEngine) -> None:
    _timeline(engine)
    s = engine.stats(_at(0), _at(10_000))
    t = s.total
    assert (t.opened, t.closed, t.cleared, t.resolved) == (5, 3, 2, 1)
    assert t.resolution_rate == pytest.approx(0.6)
    assert (t.median_ttr_s, t.p90_ttr_s) == (3600, 7200)  # of 1800, 3600, 7200
    assert (t.acknowledged, t.mean_tta_s) == (2, 330)  # 600 and 60
    assert s.open_at_until == 2
    assert s.by_kind["lamp_failure"].median_ttr_s == 3600
    assert s.by_kind["node_offline"].resolution_rate == 1.0
    assert s.by_kind["detector"].resolution_rate == 0.0
    assert s.by_kind["report:dark_lamp"].opened == 1
    assert list(s.by_severity) == ["critical", "major", "minor"]
    assert s.by_severity["critical"].resolved == 1

    # As it stood at 5000: C not yet resolved, E not yet reported.
    s = engine.stats(_at(0), _at(5000))
    t = s.total
    assert (t.opened, t.closed, t.resolution_rate) == (4, 2, 0.5)
    assert (t.median_ttr_s, t.p90_ttr_s) == (2700, 3600)  # of 1800, 3600
    assert s.open_at_until == 2

    # A later window: closings count whenever the incident was opened.
    s = engine.stats(_at(3500), _at(10_000))
    t = s.total
    assert (t.opened, t.closed, t.resolution_rate, t.acknowledged) == (2, 2, 0.0, 0)
    assert t.mean_tta_s is None
    assert s.as_json()["total"]["closed"] == 2
    with pytest.raises(ValueError, match="before"):
        engine.stats(_at(10), _at(0))


def test_stats_follow_reopenings_through_the_history(engine: IncidentEngine) -> None:
    engine.observe("node", "N1", "lamp_failure", True, "dark", _at(0))
    engine.observe("node", "N1", "lamp_failure", False, at=_at(100))
    engine.observe("node", "N1", "lamp_failure", True, "dark", _at(200))
    engine.observe("node", "N1", "lamp_failure", False, at=_at(400))
    assert engine.stats(_at(0), _at(150)).total.median_ttr_s == 100
    assert engine.stats(_at(0), _at(300)).total.closed == 0
    assert engine.stats(_at(0), _at(300)).open_at_until == 1
    assert engine.stats(_at(0), _at(500)).total.median_ttr_s == 400


# -- persistence ----------------------------------------------------------------------------


def test_every_incident_and_event_survives_a_reopen(tmp_path: Path) -> None:
    e, store = open_incidents(tmp_path, _directory(), now=lambda: T0)
    _timeline(e)
    e.report(None, "N1", "leaning pole", "resident", at=_at(9100))
    before = {i.id: i for i in e.incidents()}
    hist = {i: e.history(i) for i in before}
    # No close(): what a SIGKILL leaves behind must already be on disk.
    e2, store2 = open_incidents(tmp_path, _directory(), now=lambda: T0)
    assert {i.id: i for i in e2.incidents()} == before
    assert {i: e2.history(i) for i in before} == hist
    assert e2.active_faults() == e.active_faults()
    assert e2.stats(_at(0), _at(10_000)) == e.stats(_at(0), _at(10_000))
    new = e2.observe("node", "N3", "lamp_failure", True, "dark", _at(9200))
    assert new is not None and new.id not in before
    store.close()
    store2.close()
    # The file is shared with the other workbench stores.
    tables = {
        r[0]
        for r in sqlite3.connect(tmp_path / "workbench.sqlite").execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
    }
    assert {"incidents", "incident_events"} <= tables


class _FailingJournal:
    def save(self, incidents: Sequence[Incident], events: Sequence[IncidentEvent]) -> None:
        raise OSError("disk full")


def test_a_change_the_store_refuses_leaves_everything_as_it_was() -> None:
    store = IncidentStore(":memory:")
    e = IncidentEngine(_directory(), now=lambda: T0, journal=store)
    inc = e.observe("node", "N1", "lamp_failure", True, "dark", _at(0))
    assert inc is not None
    e.journal = _FailingJournal()
    with pytest.raises(OSError, match="disk full"):
        e.acknowledge(inc.id, "lan", at=_at(10))
    with pytest.raises(OSError):
        e.sync(FaultSnapshot({FaultKey("node", "N2", "lamp_failure"): "dark"}), _at(20))
    assert e.get(inc.id) == inc and len(e.incidents()) == 1 and len(e.history(inc.id)) == 1
    e.journal = store
    assert e.acknowledge(inc.id, "lan", at=_at(30)).state is State.ACKNOWLEDGED
    loaded, events = store.load()
    assert loaded == [e.get(inc.id)]
    assert [ev.kind for ev in events] == [EventKind.OPENED, EventKind.ACKED]


# -- properties -----------------------------------------------------------------------------

_DEVICES = [("node", "N1"), ("node", "N2"), ("intersection", "X1")]
_FAULTS = {
    "node": ["lamp_failure", "node_offline", "day_burner"],
    "intersection": ["cabinet_fault", "detector:D1"],
}
_REPORT_PLACES: list[tuple[tuple[float, float] | None, str | None]] = [
    (None, "N1"),
    (None, "N2"),
    (G1, None),
    (_north(X1, 20), None),
    (FAR, None),
]
_HINTS = ["dark_lamp", "lamp_on_in_daytime", "stuck_signal", "other"]

#: (action, a, b, flag, subset): one shape for every action, each using what it needs.
_Op = tuple[str, int, int, bool, frozenset[int]]
_op: st.SearchStrategy[_Op] = st.tuples(
    st.sampled_from(["fault", "fault", "ack", "resolve", "report", "sync"]),
    st.integers(0, 30),
    st.integers(0, 3),
    st.booleans(),
    st.frozensets(st.integers(0, 7), max_size=4),
)


def _all_keys() -> list[FaultKey]:
    return [FaultKey(dk, did, f) for dk, did in _DEVICES for f in _FAULTS[dk]]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(_op, st.integers(0, 900)), max_size=40))
def test_any_sequence_keeps_one_open_incident_per_fault(ops: list[tuple[_Op, int]]) -> None:
    clock = ManualClock(T0)
    store = IncidentStore(":memory:")
    e = IncidentEngine(_directory(), now=clock.now, journal=store)
    active: set[FaultKey] = set()
    keys = _all_keys()
    for (action, a, b, flag, subset), step in ops:
        clock.advance(step)
        try:
            if action == "fault":
                dk, did = _DEVICES[a % len(_DEVICES)]
                kinds = _FAULTS[dk]
                key = FaultKey(dk, did, kinds[b % len(kinds)])
                e.observe(*key, flag, "detail")
                (active.add if flag else active.discard)(key)
            elif action in ("ack", "resolve"):
                ids = [i.id for i in e.incidents()]
                if not ids:
                    continue
                iid = ids[a % len(ids)]
                if action == "ack":
                    e.acknowledge(iid, "lan")
                else:
                    e.resolve(iid, "lan", "done", force=flag)
            elif action == "report":
                loc, dev = _REPORT_PLACES[a % len(_REPORT_PLACES)]
                e.report(loc, dev, "seen", "resident", kind=_HINTS[b])
            else:
                chosen = {keys[i] for i in subset}
                e.sync(FaultSnapshot(dict.fromkeys(chosen, "detail")))
                active = chosen
        except IncidentError:
            pass
        incs = e.incidents()
        open_keys = [
            (i.device_kind, i.device_id, i.fault_kind)
            for i in incs
            if i.is_open and i.device_kind is not None
        ]
        assert len(open_keys) == len(set(open_keys)), "two open incidents for one fault"
        for i in incs:
            if i.closed_at is not None and not i.is_open:
                assert i.closed_at >= i.opened_at
            if i.is_open and i.fault_kind is not None:
                assert i.fault_active, "an open fault incident whose fault is gone"
            if i.acked_at is not None:
                assert i.acked_at >= i.opened_at
        carriers = [i.fault_key for i in incs if i.fault_active]
        assert len(carriers) == len(set(carriers)), "one fault carried by two incidents"
        assert set(e.active_faults()) == active
    # What the store holds is exactly what the engine holds.
    loaded, events = store.load()
    again = IncidentEngine(_directory(), now=clock.now, incidents=loaded, events=events)
    assert again.incidents() == e.incidents()
    assert again.active_faults() == e.active_faults()
