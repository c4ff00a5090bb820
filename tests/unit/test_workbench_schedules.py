"""Versioned schedules: versions, conflicts, rollback, diffs, bootstrap, validation, live apply."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.clock import ManualClock
from controller.config import CityConfig, ConfigError, load_config, parse_config
from controller.lighting.core import LightingCore
from controller.lighting.service import LightingService
from controller.workbench.overrides import OverrideStore
from controller.workbench.schedules import (
    Change,
    ScheduleDocument,
    ScheduleInUse,
    ScheduleStore,
    UnknownSchedule,
    UnknownVersion,
    VersionConflict,
    apply_document,
    diff_documents,
    document_of,
    validate_document,
)
from devices.lights import LightCommand, Topics, decode
from tests.unit.test_lighting_core import at, state

ROOT = Path(__file__).resolve().parents[2]
START = dt.datetime(2026, 11, 25, 5, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def cfg() -> CityConfig:
    return load_config(ROOT / "config.yaml")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "workbench.sqlite"


@pytest.fixture
def store(path: Path, clock: ManualClock, cfg: CityConfig) -> ScheduleStore:
    s = ScheduleStore(path, clock)
    s.bootstrap(cfg)
    return s


def data_of(store: ScheduleStore, version: int | None = None) -> dict[str, Any]:
    v = store.current() if version is None else store.get(version)
    return v.document.to_data()


def program(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in data["programs"] if p["name"] == name)


def issues(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return {i.path: i.message for i in exc.value.issues if i.severity == "error"}


# ---- the document --------------------------------------------------------------------------


def test_document_round_trips_through_canonical_json_and_applies_to_the_config(
    cfg: CityConfig,
) -> None:
    doc = document_of(cfg)
    assert ScheduleDocument.from_json(doc.canonical_json()) == doc
    data = doc.to_data()
    assert program(data, "arterial")["steps"][0] == {
        "at": "sunset+10min",
        "level": 100.0,
        "ramp_s": 60.0,
    }
    assert data["assignments"]["nam-cao-park"] == {"program": "park"}
    assert data["assignments"]["ql1a"] == {"calendar": "city"}
    assert apply_document(cfg, doc) == cfg
    assert "- {at: '23:00', level: 30, ramp_s: 600}" in doc.to_yaml()


def test_apply_document_gives_a_config_with_the_new_schedule(cfg: CityConfig) -> None:
    data = document_of(cfg).to_data()
    program(data, "park")["steps"][1]["level"] = 50
    data["assignments"]["lam-ha"] = {"program": "park"}
    new = apply_document(cfg, data)
    assert new.group("lam-ha").program == "park" and new.group("lam-ha").calendar is None
    assert new.program_map()["park"].steps[1].level == 50
    assert new.lighting.nodes == cfg.lighting.nodes and new.site == cfg.site


# ---- versions --------------------------------------------------------------------------------


def test_first_bootstrap_stores_the_config_as_version_1(
    store: ScheduleStore, cfg: CityConfig
) -> None:
    v = store.current()
    assert (v.version, v.author, v.source) == (1, "config.yaml", "config")
    assert v.created_at == START
    assert v.document == document_of(cfg)


def test_every_change_is_a_new_version_with_author_time_and_comment(
    store: ScheduleStore, clock: ManualClock
) -> None:
    data = data_of(store)
    program(data, "park")["steps"][1]["level"] = 40
    clock.advance(60)
    a = store.propose(1, data, "lan", "park brighter after 23:00")
    assert a.created and a.version.version == 2
    assert (a.version.author, a.version.comment, a.version.source) == (
        "lan",
        "park brighter after 23:00",
        "api",
    )
    assert a.version.created_at == START + dt.timedelta(seconds=60)
    assert a.config.program_map()["park"].steps[1].level == 40
    clock.advance(60)
    b = store.assign("lam-ha", program="park", base_version=2, author="minh")
    assert b.version.version == 3 and b.version.comment == "group lam-ha → program park"
    assert [v.version for v in store.history()] == [3, 2, 1]
    assert [v.version for v in store.history(limit=1, before=3)] == [2]
    assert store.get(2).document.program("park").steps[1].level == 40
    assert store.get(1).document.program("park").steps[1].level == 30
    with pytest.raises(UnknownVersion, match="no schedule version 9"):
        store.get(9)


def test_the_same_document_again_stores_nothing(store: ScheduleStore) -> None:
    a = store.propose(1, data_of(store), "lan", "no change")
    assert not a.created and a.version.version == 1
    assert [v.version for v in store.history()] == [1]


def test_a_second_writer_with_a_stale_base_gets_a_conflict_and_nothing_is_lost(
    path: Path, clock: ManualClock, cfg: CityConfig, store: ScheduleStore
) -> None:
    other = ScheduleStore(path, clock)  # another process on the same file
    other.bootstrap(cfg)
    # both engineers open version 1
    mine, theirs = data_of(store), data_of(other)
    program(mine, "park")["steps"][1]["level"] = 40
    program(theirs, "residential")["steps"][1]["level"] = 40
    assert store.propose(1, mine, "lan", "park").version.version == 2
    with pytest.raises(VersionConflict) as exc:
        other.propose(1, theirs, "minh", "residential")
    assert exc.value.current.version == 2 and exc.value.current.author == "lan"
    assert "version 1 is no longer current" in str(exc.value)
    # the conflicting write stored nothing; the first one is intact
    assert other.current().version == 2
    assert other.current().document.program("park").steps[1].level == 40
    # the second writer reloads and makes the edit again on top: both changes are kept
    again = data_of(other, 2)
    program(again, "residential")["steps"][1]["level"] = 40
    v3 = other.propose(2, again, "minh", "residential").version
    assert v3.document.program("park").steps[1].level == 40
    assert v3.document.program("residential").steps[1].level == 40
    # convenience operations check the base too
    with pytest.raises(VersionConflict):
        store.assign("lam-ha", program="park", base_version=2, author="lan")


def test_rollback_is_a_new_version_equal_to_the_old_document(store: ScheduleStore) -> None:
    data = data_of(store)
    program(data, "park")["steps"][1]["level"] = 40
    store.propose(1, data, "lan", "brighter")
    store.assign("nam-cao-park", program="dusk-to-dawn", base_version=2, author="lan")
    back = store.rollback(1, base_version=3, author="minh", comment="")
    assert back.created and back.version.version == 4
    assert back.version.document == store.get(1).document
    assert (back.version.source, back.version.comment) == ("rollback", "rollback to version 1")
    assert [v.version for v in store.history()] == [4, 3, 2, 1]
    assert back.config.group("nam-cao-park").program == "park"
    # rolling back to what is current already stores nothing
    assert not store.rollback(1, base_version=4, author="minh").created


# ---- diffs -----------------------------------------------------------------------------------


def test_diff_names_programs_steps_rules_and_assignments(store: ScheduleStore) -> None:
    data = data_of(store)
    program(data, "park")["steps"][1]["level"] = 40
    program(data, "arterial")["steps"].insert(3, {"at": "02:00", "level": 50, "ramp_s": 300})
    data["programs"].append(
        {"name": "market", "steps": [{"at": "sunset", "level": 100}, {"at": "sunrise", "level": 0}]}
    )
    city = next(c for c in data["calendars"] if c["name"] == "city")
    del city["rules"][6]  # weekend nights
    data["assignments"]["nam-cao-park"] = {"program": "market"}
    store.propose(1, data, "lan", "market nights")
    changes = store.diff(1, 2)
    assert {(c.path, c.kind) for c in changes} == {
        ("programs[park].steps[1].level", "changed"),
        ("programs[arterial].steps[3]", "added"),
        ("programs[market]", "added"),
        ("calendars[city].rules[6]", "removed"),
        ("assignments.nam-cao-park.program", "changed"),
    }
    level = next(c for c in changes if c.path == "programs[park].steps[1].level")
    assert (level.old, level.new) == (30.0, 40.0)
    assert str(level) == "programs[park].steps[1].level: 30.0 → 40.0"
    removed = next(c for c in changes if c.kind == "removed")
    assert removed.old["program"] == "arterial-weekend"
    assert store.diff(2, 2) == []
    # the other way round: the same changes, mirrored
    back = {(c.path, c.kind) for c in store.diff(2, 1)}
    assert ("programs[market]", "removed") in back and ("calendars[city].rules[6]", "added") in back
    text = store.diff_text(1, 2)
    assert text.startswith("--- version 1\n+++ version 2\n")
    assert "\n-  - {at: '23:00', level: 30, ramp_s: 600}\n" in text
    assert "\n+  - {at: '23:00', level: 40, ramp_s: 600}\n" in text
    assert "\n+  - {at: '02:00', level: 50, ramp_s: 300}\n" in text


def test_diff_reports_a_reordering(cfg: CityConfig) -> None:
    doc = document_of(cfg)
    data = doc.to_data()
    data["programs"].reverse()
    other = ScheduleDocument.model_validate(data)
    assert diff_documents(doc, other) == [
        Change(
            ("programs",),
            "changed",
            old=[p.name for p in doc.programs],
            new=[p.name for p in reversed(doc.programs)],
        )
    ]


# ---- bootstrap -------------------------------------------------------------------------------


def test_api_edits_survive_a_restart_when_the_file_is_unchanged(
    path: Path, clock: ManualClock, cfg: CityConfig, store: ScheduleStore
) -> None:
    data = data_of(store)
    program(data, "park")["steps"][1]["level"] = 40
    store.propose(1, data, "lan", "brighter")
    store.close()
    again = ScheduleStore(path, clock)
    boot = again.bootstrap(cfg)
    assert not boot.created and boot.version.version == 2 and boot.version.author == "lan"
    # what the controller should run is the stored version, on the file's config
    assert boot.config.program_map()["park"].steps[1].level == 40
    assert boot.config.controller == cfg.controller


def test_an_edited_file_wins_and_is_imported_by_config_yaml(
    path: Path, clock: ManualClock, cfg: CityConfig, store: ScheduleStore
) -> None:
    data = data_of(store)
    program(data, "park")["steps"][1]["level"] = 40
    store.propose(1, data, "lan", "brighter")
    # someone edits config.yaml: the residential program changes
    edited = document_of(cfg).to_data()
    program(edited, "residential")["steps"][1]["level"] = 45
    file_cfg = apply_document(cfg, edited)
    clock.advance(3600)
    again = ScheduleStore(path, clock)
    boot = again.bootstrap(file_cfg)
    assert boot.created and boot.version.version == 3
    assert (boot.version.author, boot.version.source) == ("config.yaml", "config")
    assert boot.version.document == document_of(file_cfg)
    assert boot.config.program_map()["residential"].steps[1].level == 45
    # the API's version stays in the history, one rollback away
    assert store.get(2).document.program("park").steps[1].level == 40
    # the next start with the same file keeps what is current
    clock.advance(60)
    assert not ScheduleStore(path, clock).bootstrap(file_cfg).created
    # and reverting the file to the first text is an edit of the file as well
    assert ScheduleStore(path, clock).bootstrap(cfg).version.version == 4


# ---- validation -----------------------------------------------------------------------------


def test_validation_errors_name_the_field_in_the_document(store: ScheduleStore) -> None:
    data = data_of(store)
    program(data, "park")["steps"][0]["level"] = 150
    with pytest.raises(ConfigError) as exc:
        store.propose(1, data, "lan", "too bright")
    assert issues(exc) == {
        "programs[4].steps[0].level": "Input should be less than or equal to 100"
    }

    with pytest.raises(ConfigError) as exc:
        store.upsert_program(
            "park",
            {"steps": [{"at": "sunset", "level": 100, "ramp": 5}]},
            base_version=1,
            author="lan",
        )
    assert "programs[4].steps[0].ramp" in issues(exc)

    # a program that calendars still name, removed from the document
    data = data_of(store)
    data["programs"] = [p for p in data["programs"] if p["name"] != "festival"]
    with pytest.raises(ConfigError) as exc:
        store.propose(1, data, "lan", "no more festivals")
    found = issues(exc)
    assert "calendars[0].rules[0].program" in found
    assert "unknown program 'festival'" in found["calendars[0].rules[0].program"]
    assert "calendars[1].rules[0].program" in found

    with pytest.raises(ConfigError) as exc:
        store.assign("ql1a", program="arterail", base_version=1, author="lan")
    assert issues(exc) == {
        "assignments.ql1a.program": "unknown program 'arterail' (did you mean 'arterial'?)"
    }
    with pytest.raises(ConfigError) as exc:
        store.assign("nowhere", program="park", base_version=1, author="lan")
    assert list(issues(exc)) == ["assignments.nowhere"]

    data = data_of(store)
    del data["assignments"]["lam-ha"]
    data["assignments"]["ql1a"] = {"program": "park", "calendar": "city"}
    data["colour"] = "blue"
    with pytest.raises(ConfigError) as exc:
        store.propose(1, data, "lan", "")
    assert set(issues(exc)) == {"colour", "assignments.lam-ha", "assignments.ql1a"}
    # nothing of it was stored
    assert [v.version for v in store.history()] == [1]


def test_deleting_a_program_or_calendar_in_use_is_refused_naming_the_users(
    store: ScheduleStore,
) -> None:
    with pytest.raises(ScheduleInUse) as exc:
        store.delete_program("festival", base_version=1, author="lan")
    assert exc.value.users == ["calendar city", "calendar neighbourhood"]
    assert exc.value.issues[0].path == "programs[2]"
    with pytest.raises(ScheduleInUse) as exc:
        store.delete_program("park", base_version=1, author="lan")
    assert exc.value.users == ["group nam-cao-park"]
    with pytest.raises(ScheduleInUse) as exc:
        store.delete_calendar("neighbourhood", base_version=1, author="lan")
    assert exc.value.users == ["group lam-ha"]
    assert "group lam-ha" in str(exc.value)
    with pytest.raises(UnknownSchedule, match="no program 'nope'"):
        store.delete_program("nope", base_version=1, author="lan")
    # once nothing uses them they go
    store.assign("nam-cao-park", program="residential", base_version=1, author="lan")
    v3 = store.delete_program("park", base_version=2, author="lan").version
    assert [p.name for p in v3.document.programs] == [
        "arterial",
        "arterial-weekend",
        "festival",
        "residential",
        "dusk-to-dawn",
    ]
    store.assign("lam-ha", program="residential", base_version=3, author="lan")
    v5 = store.delete_calendar("neighbourhood", base_version=4, author="lan").version
    assert [c.name for c in v5.document.calendars] == ["city"]


def test_upsert_adds_or_replaces_in_place(store: ScheduleStore) -> None:
    new = {"steps": [{"at": "sunset", "level": 90}, {"at": "sunrise", "level": 0}]}
    a = store.upsert_program("market", new, base_version=1, author="lan")
    assert a.version.document.programs[-1].name == "market"
    assert [w.path for w in a.warnings] == ["programs[6]"]  # not used (yet): a warning only
    replaced = store.current().document.program("park").model_copy(update={"description": "x"})
    b = store.upsert_program("park", replaced, base_version=2, author="lan")
    assert b.version.document.programs[4].description == "x"
    cal = {"default": "park", "rules": [{"program": "festival", "weekdays": ["sat"]}]}
    c = store.upsert_calendar("parks", cal, base_version=3, author="lan")
    assert c.version.document.calendar("parks").default == "park"
    with pytest.raises(ConfigError) as exc:
        store.upsert_program("park", {**new, "name": "other"}, base_version=4, author="lan")
    assert list(issues(exc)) == ["programs[4].name"]


# ---- persistence and applying ---------------------------------------------------------------


def test_versions_persist_across_reopen_in_a_wal_file_shared_with_other_stores(
    path: Path, clock: ManualClock, cfg: CityConfig, store: ScheduleStore
) -> None:
    overrides = OverrideStore(path, clock.now)  # the same file holds other tables
    data = data_of(store)
    program(data, "park")["steps"][1]["level"] = 40
    store.propose(1, data, "lan", "brighter")
    before = store.history()
    store.close()
    overrides.close()
    again = ScheduleStore(path, clock)
    assert again.history() == before
    assert again.current().document.program("park").steps[1].level == 40
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"schedule_versions", "overrides"} <= tables
    db.close()


def test_a_change_that_fails_to_apply_is_not_stored(store: ScheduleStore) -> None:
    applied: list[CityConfig] = []

    def apply(new: CityConfig) -> None:
        if new.program_map()["park"].steps[1].level == 99:
            raise ValueError("the lights refuse")
        applied.append(new)

    store.on_apply = apply
    data = data_of(store)
    program(data, "park")["steps"][1]["level"] = 99
    with pytest.raises(ValueError, match="refuse"):
        store.propose(1, data, "lan", "")
    assert store.current().version == 1 and applied == []
    program(data, "park")["steps"][1]["level"] = 40
    store.propose(1, data, "lan", "")
    assert store.current().version == 2
    assert [c.program_map()["park"].steps[1].level for c in applied] == [40]


def test_reconfigure_with_a_broken_config_keeps_the_old_schedule(cfg: CityConfig) -> None:
    core = LightingCore(cfg)
    now = at("2026-11-25T23:30")
    cmds, _ = core.plan(now, 0.0, refresh_s=120, retry_after_s=3)
    assert {c.group: c.command.level for c in cmds}["nam-cao-park"] == 30.0
    # a calendar that names a program nobody defined (never validated: built by hand)
    broken_lt = cfg.lighting.model_copy(
        update={"programs": [p for p in cfg.lighting.programs if p.name != "festival"]}
    )
    with pytest.raises(ValueError, match="festival"):
        core.reconfigure(cfg.model_copy(update={"lighting": broken_lt}))
    no_calendar = cfg.lighting.model_copy(update={"calendars": []})
    with pytest.raises(ValueError, match="unknown calendar"):
        core.reconfigure(cfg.model_copy(update={"lighting": no_calendar}))
    other_nodes = cfg.lighting.model_copy(update={"groups": cfg.lighting.groups[:-1]})
    with pytest.raises(ValueError, match="needs a restart"):
        core.reconfigure(cfg.model_copy(update={"lighting": other_nodes}))
    assert core.cfg is cfg
    cmds, _ = core.plan(now + dt.timedelta(seconds=10), 10.0, refresh_s=120, retry_after_s=3)
    assert cmds == []  # nothing changed
    assert core.schedule("nam-cao-park").programs["park"].steps[1].level == 30


def test_reconfigure_with_a_good_config_changes_the_wanted_level_at_once(cfg: CityConfig) -> None:
    core = LightingCore(cfg)
    now = at("2026-11-25T23:30")
    cmds, _ = core.plan(now, 0.0, refresh_s=120, retry_after_s=3)
    first = {c.group: c.command for c in cmds}
    core.on_node_availability("NC-001", True, 0.0)
    core.on_node_state(state("NC-001", "nam-cao-park", 30.0, cmd=first["nam-cao-park"].cmd_id), 1.0)
    assert len(core.fallback_programs(now)) == len(cfg.lighting.groups)  # the service sends them
    assert core.fallback_programs(now) == []  # tonight's already handed out
    data = document_of(cfg).to_data()
    program(data, "park")["steps"][1]["level"] = 50
    core.reconfigure(apply_document(cfg, data))
    cmds, _ = core.plan(now + dt.timedelta(seconds=1), 1.0, refresh_s=120, retry_after_s=3)
    assert [(c.group, c.command.level, c.reason) for c in cmds] == [
        ("nam-cao-park", 50.0, "change")
    ]
    # what the nodes said is kept; the new fallback program goes out again
    assert core.node_state("NC-001") is not None and core.node_online("NC-001")
    fallback = {f.group: f for f in core.fallback_programs(now)}
    assert [s.level for s in fallback["nam-cao-park"].steps if s.level not in (0.0, 70.0)] == [50.0]


class _Link:
    """Just enough of an MQTT link for the lighting service."""

    connected = True

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def subscribe(
        self, pattern: str, handler: Callable[[str, bytes, bool], None], qos: int = 1
    ) -> None:
        pass

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.published.append((topic, payload))

    def inbox_empty(self) -> bool:
        return True


def test_the_service_applies_a_new_schedule_without_a_restart(path: Path, cfg: CityConfig) -> None:
    clock = ManualClock(at("2026-11-25T23:30"))
    link = _Link()
    topics = Topics("t")
    service = LightingService(cfg, link, clock, topics=topics)  # type: ignore[arg-type]
    store = ScheduleStore(path, clock, on_apply=service.apply_config)
    store.bootstrap(cfg)
    asyncio.run(service.step())

    def park_levels() -> list[float]:
        topic = topics.group_set("nam-cao-park")
        return [decode(LightCommand, p).level for t, p in link.published if t == topic]

    assert park_levels() == [30.0]
    store.upsert_program(
        "park",
        {
            "steps": [
                {"at": "sunset+5min", "level": 70},
                {"at": "22:00", "level": 45},
                {"at": "sunrise-15min", "level": 0},
            ]
        },
        base_version=1,
        author="lan",
    )
    assert service.cfg.program_map()["park"].steps[1].level == 45
    assert service._wake.is_set()
    asyncio.run(service.step())
    assert park_levels() == [30.0, 45.0]
    # a wrong version is refused before anything runs: the running schedule stays
    wrong = document_of(cfg).to_data()
    with pytest.raises(ConfigError):
        store.propose(2, {**wrong, "calendars": []}, "lan", "")
    assert store.current().version == 2 and service.cfg.program_map()["park"].steps[1].level == 45


# ---- property: the history is what was proposed ---------------------------------------------

SMALL = """
site: {name: Test, latitude: 21.0, longitude: 105.8, timezone: Asia/Ho_Chi_Minh}
lighting:
  programs:
    - name: night
      steps:
        - {at: sunset, level: 100}
        - {at: "23:00", level: 60}
        - {at: sunrise, level: 0}
  groups:
    - {id: a, road: A, lighting_class: M3, program: night, lamp_w: 100, nodes: [A-1]}
    - {id: b, road: B, lighting_class: M3, program: night, lamp_w: 100, nodes: [B-1]}
"""

_edit = st.one_of(
    st.tuples(st.just("level"), st.integers(0, 5), st.integers(10, 100)),
    st.tuples(st.just("add"), st.integers(10, 100)),
    st.tuples(st.just("assign"), st.sampled_from(["a", "b"]), st.integers(0, 5)),
    st.tuples(st.just("rollback"), st.integers(1, 20)),
    st.tuples(st.just("stale"), st.integers(10, 100)),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(_edit, min_size=1, max_size=6))
def test_every_version_holds_what_was_proposed_and_the_last_is_current(
    edits: list[tuple[Any, ...]],
) -> None:
    small, _ = parse_config(SMALL)
    clock = ManualClock(START)
    store = ScheduleStore(":memory:", clock)
    store.bootstrap(small)
    expected = {1: document_of(small)}
    for edit in edits:
        clock.advance(1)
        cur = store.current().version
        data = copy.deepcopy(expected[cur].to_data())
        names = [p["name"] for p in data["programs"]]
        kind = edit[0]
        if kind == "rollback":
            target = 1 + edit[1] % len(expected)
            result = store.rollback(target, base_version=cur, author="p")
            data = expected[target].to_data()
        elif kind == "stale":
            if cur == 1:
                continue
            with pytest.raises(VersionConflict):
                store.propose(cur - 1, data, "p", "stale")
            continue
        else:
            if kind == "level":
                p = data["programs"][edit[1] % len(names)]
                p["steps"][-2]["level"] = edit[2]  # the last step (0 at sunrise) stays
            elif kind == "add":
                data["programs"].append(
                    {
                        "name": f"p{len(names)}",
                        "steps": [
                            {"at": "sunset", "level": edit[1]},
                            {"at": "sunrise", "level": 0},
                        ],
                    }
                )
            else:
                data["assignments"][edit[1]] = {"program": names[edit[2] % len(names)]}
            result = store.propose(cur, data, "p", kind)
        proposed = ScheduleDocument.model_validate(data)
        if result.created:
            assert result.version.version == cur + 1
            expected[cur + 1] = proposed
        else:
            assert proposed == expected[cur]
        assert store.current().version == max(expected)
    for number, doc in expected.items():
        assert store.get(number).document == doc
    assert [v.version for v in store.history(limit=100)] == sorted(expected, reverse=True)
    assert validate_document(small, store.current().document).document == expected[max(expected)]
    store.close()
