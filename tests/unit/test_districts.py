"""Scale-out by district: the config's ``districts``, each instance's view, foreign messages.

The shipped config.yaml carries a commented ``districts:`` example; these tests uncomment it,
so the example stays valid as the config changes.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli import main
from controller.clock import ManualClock
from controller.config import DISTRICT_ENV, CityConfig, ConfigError, parse_config
from controller.runtime import Controller
from devices.cameras import camera_topic
from devices.lights import Topics

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config.yaml"
DEPLOY = ROOT / "deploy" / "mosquitto"
T0 = dt.datetime(2026, 11, 25, 20, 0, tzinfo=dt.UTC)


def shipped_example() -> dict[str, Any]:
    """The shipped config with its commented ``districts:`` example uncommented."""
    text = SHIPPED.read_text()
    lines = text.splitlines()
    start = lines.index("# districts:")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    data = yaml.safe_load(text)
    assert "districts" not in data, "the shipped config runs as one instance (the demo runs it)"
    data.update(yaml.safe_load("\n".join(block)))
    return data


def parse(data: dict[str, Any]) -> tuple[CityConfig, list[str]]:
    cfg, warnings = parse_config(yaml.safe_dump(data, allow_unicode=True))
    return cfg, [str(w) for w in warnings]


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(yaml.safe_dump(data, allow_unicode=True))
    return [str(i) for i in exc.value.issues if i.severity == "error"]


def test_the_shipped_example_is_valid_and_splits_the_city() -> None:
    cfg, warnings = parse(shipped_example())
    assert list(cfg.districts) == ["north", "south"]
    groups = [g for d in cfg.districts.values() for g in d.groups]
    assert sorted(groups) == sorted(g.id for g in cfg.lighting.groups)
    xs = [x for d in cfg.districts.values() for x in d.intersections]
    assert sorted(xs) == sorted(x.id for x in cfg.signals.intersections)
    # QL1A × Lê Công Thanh takes its offset from QL1A × Trần Hưng Đạo, now in another
    # district: said, not an error.
    assert any("coordination.upstream" in w and "uncoordinated" in w for w in warnings), warnings


def test_for_district_keeps_only_its_own_and_gives_the_instance_its_identity() -> None:
    data = shipped_example()
    data["mqtt"].update(client_id="phuly-mqtt", username="cityctl-controller")
    data["telemetry"]["outbox"]["path"] = "/var/lib/cityctl/outbox.sqlite"
    cfg, _ = parse(data)
    north = cfg.for_district("north")
    assert [g.id for g in north.lighting.groups] == [
        "ql1a",
        "le-cong-thanh",
        "lam-ha",
        "junction-ql1a-lct",
    ]
    node_ids = [n for _, n, _, _ in north.nodes()]
    assert len(node_ids) == 48 + 40 + 30 + 8 and "QL-001" in node_ids and "THD-001" not in node_ids
    assert [n.id for n in north.lighting.nodes] == ["QL-001", "QL-048"]  # per-node details kept
    # the night-market override names le-cong-thanh (north) and tran-hung-dao (south)
    assert [o.groups for o in north.lighting.overrides] == [["le-cong-thanh"]]
    south = cfg.for_district("south")
    assert [o.groups for o in south.lighting.overrides] == [["tran-hung-dao"]]
    assert [x.id for x in north.signals.intersections] == ["ql1a-lct"]
    assert [x.id for x in south.signals.intersections] == ["ql1a-thd"]
    # programs and calendars stay whole: any of them may be assigned to the district's groups
    assert north.lighting.programs == cfg.lighting.programs
    # its own identity on the broker and on disk
    assert north.controller.id == "phuly-edge-01.north"
    assert north.controller.state_dir == cfg.controller.state_dir / "north"
    assert (north.mqtt.client_id, north.mqtt.username) == (
        "phuly-mqtt.north",
        "cityctl-controller-north",
    )
    assert north.telemetry.outbox.path == Path("/var/lib/cityctl/north/outbox.sqlite")
    assert (north.api.port, south.api.port) == (8081, 8082)
    # an ordinary single-instance config: no districts left, so it cannot be split twice
    assert north.districts == {} and north.controller.district is None
    assert north.instance() is north
    # nothing of the two views overlaps
    assert not {n for _, n, _, _ in north.nodes()} & {n for _, n, _, _ in south.nodes()}
    assert north.controller.id != south.controller.id
    assert north.controller.state_dir != south.controller.state_dir


def test_a_district_view_passes_the_schedule_workbench() -> None:
    from controller.workbench.schedules import document_of, validate_document

    cfg, _ = parse(shipped_example())
    north = cfg.for_district("north")
    checked = validate_document(north, document_of(north))
    assert [g.id for g in checked.config.lighting.groups] == [g.id for g in north.lighting.groups]
    assert checked.config.controller.id == "phuly-edge-01.north"


def test_without_districts_nothing_changes() -> None:
    cfg, _ = parse(yaml.safe_load(SHIPPED.read_text()))
    assert cfg.districts == {} and cfg.instance() is cfg and cfg.whole_city() is cfg
    with pytest.raises(ConfigError) as exc:
        cfg.instance("north")
    assert "no districts are declared" in str(exc.value)


def test_which_district_an_instance_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _ = parse(shipped_example())
    with pytest.raises(ConfigError) as exc:
        cfg.instance()  # running every district next to the district instances: refused
    issue = exc.value.issues[0]
    assert issue.path == "controller.district" and "--district" in issue.message
    assert cfg.instance("south").controller.id == "phuly-edge-01.south"
    with pytest.raises(ConfigError) as exc:
        cfg.instance("west")
    assert "unknown district 'west' (known: north, south)" in str(exc.value)
    # the file names it, the environment overrides the file, --district overrides both
    data = shipped_example()
    data["controller"]["district"] = "north"
    cfg, _ = parse(data)
    assert cfg.instance().controller.id == "phuly-edge-01.north"
    monkeypatch.setenv(DISTRICT_ENV, "south")
    cfg, _ = parse(data)
    assert cfg.controller.district == "south"
    assert cfg.instance().controller.id == "phuly-edge-01.south"
    assert cfg.instance("north").controller.id == "phuly-edge-01.north"
    # the demo runs the whole city in one process
    whole = cfg.whole_city()
    assert whole.districts == {} and whole.instance() is whole
    assert len(whole.lighting.groups) == 8


def test_a_mistyped_district_variable_is_reported_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISTRICT_ENV, "nort")
    errs = errors_of(shipped_example())
    assert any(
        e.startswith("controller.district") and "did you mean 'north'" in e and DISTRICT_ENV in e
        for e in errs
    ), errs
    monkeypatch.setenv(DISTRICT_ENV, "north")
    errs = errors_of(yaml.safe_load(SHIPPED.read_text()))  # no districts in the file
    assert any(e.startswith("controller.district") and "no districts" in e for e in errs), errs


def _north(d: dict[str, Any]) -> dict[str, Any]:
    north: dict[str, Any] = d["districts"]["north"]
    return north


@pytest.mark.parametrize(
    ("mutate", "path", "words"),
    [
        (
            lambda d: _north(d)["groups"].append("ql1b"),
            "districts.north.groups[4]",
            "unknown group 'ql1b' (did you mean 'ql1a'?)",
        ),
        (
            lambda d: _north(d)["groups"].append("bien-hoa"),
            "districts.south.groups[1]",
            "group 'bien-hoa' is already in district 'north'",
        ),
        (
            lambda d: _north(d)["groups"].append("ql1a"),
            "districts.north.groups[4]",
            "group 'ql1a' is already in this district",
        ),
        (
            lambda d: _north(d)["groups"].remove("lam-ha"),
            "lighting.groups[4]",
            "group 'lam-ha' is in no district",
        ),
        (
            lambda d: _north(d)["intersections"].append("ql1a-thd"),
            "districts.south.intersections[0]",
            "intersection 'ql1a-thd' is already in district 'north'",
        ),
        (
            lambda d: _north(d).update(intersections=[]),
            "signals.intersections[0]",
            "intersection 'ql1a-lct' is in no district",
        ),
        (
            lambda d: _north(d)["intersections"].append("ql1a-xyz"),
            "districts.north.intersections[1]",
            "unknown intersection 'ql1a-xyz'",
        ),
        (
            lambda d: d["districts"].update(east={"intersections": []}),
            "districts.east.groups",
            "at least one lighting group",
        ),
        (lambda d: d["controller"].update(district="west"), "controller.district", "unknown"),
        (lambda d: _north(d).update(api_port=70000), "districts.north.api_port", "less than"),
        (lambda d: _north(d).update(colour="red"), "districts.north.colour", "unknown field"),
        (
            lambda d: d["districts"].update({"north side": d["districts"].pop("north")}),
            "districts.north side.[key]",
            "should match pattern",
        ),
        (
            lambda d: d["controller"].update(id="x" * 60),
            "districts.north",
            "longer than 64",
        ),
    ],
)
def test_district_mistakes_name_their_field(mutate, path, words) -> None:  # type: ignore[no-untyped-def]
    data = shipped_example()
    mutate(data)
    errs = errors_of(data)
    assert any(e.split(" (line")[0].split(":")[0] == path and words in e for e in errs), errs


def test_a_misspelt_group_is_found_even_when_the_file_has_other_errors() -> None:
    data = shipped_example()
    _north(data)["groups"][0] = "ql1b"
    data["site"]["latitude"] = 95  # a field error: the cross-checks do not run
    errs = errors_of(data)
    assert any(e.startswith("districts.north.groups[0]") and "ql1b" in e for e in errs), errs


def test_cli_validate_shows_the_districts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "city.yaml"
    path.write_text(yaml.safe_dump(shipped_example(), allow_unicode=True))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 districts" in out
    assert "district north: controller phuly-edge-01.north, 4 groups, 126 nodes" in out
    bad = shipped_example()
    _north(bad)["groups"].append("bien-hoa")
    path.write_text(yaml.safe_dump(bad, allow_unicode=True))
    assert main(["validate", str(path)]) == 1
    assert "already in district 'north'" in capsys.readouterr().err


def test_cli_run_refuses_to_run_no_district_or_an_unknown_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "city.yaml"
    path.write_text(yaml.safe_dump(shipped_example(), allow_unicode=True))
    assert main(["run", "--config", str(path)]) == 2
    assert "choose the one this instance runs" in capsys.readouterr().err
    assert main(["run", "--config", str(path), "--district", "west"]) == 2
    assert "unknown district 'west'" in capsys.readouterr().err
    flag = ["--cabinet", "ql1a-thd=127.0.0.1:5020"]
    assert main(["run", "--config", str(path), "--district", "north", *flag]) == 2
    assert "no intersection 'ql1a-thd' in district north" in capsys.readouterr().err


def test_a_district_controller_runs_its_own_and_counts_the_others_as_foreign() -> None:
    cfg, _ = parse(shipped_example())
    ctl = Controller(cfg, clock=ManualClock(T0), district="north")
    try:
        assert ctl.district == "north"
        assert ctl.cfg.controller.id == "phuly-edge-01.north"
        assert ctl.link.settings.client_id == "phuly-edge-01.north"
        assert ctl.link.settings.will is not None
        assert ctl.link.settings.will.topic.endswith("/controller/phuly-edge-01.north/availability")
        assert ctl.cfg.controller.state_dir.name == "north"
        assert (ctl.cfg.controller.state_dir / "workbench.sqlite").exists()
        assert {g.id for g in ctl.lighting.core.groups} == set(cfg.districts["north"].groups)
        assert ctl.signals is not None and list(ctl.signals.runners) == ["ql1a-lct"]
        t = Topics(cfg.mqtt.prefix)
        light = ctl.lighting
        # another district's node: counted as foreign, not a drop, nothing logged or changed
        light._on_node_message(t.node_state("THD-001"), b'{"v": 1}', False)
        light._on_node_message(t.node_availability("BH-003"), b"offline", True)
        light._on_node_message(t.node_ack("PX-001"), b"garbage", False)
        # another district's road counter
        light._on_count(t.traffic_count("bien-hoa"), b'{"v": 1}', False)
        assert light.stats.foreign == 4 and light.drops.total == 0
        assert not light.core.knows_node("THD-001")
        # a node nobody owns is still bad input
        light._on_node_message(t.node_state("XX-001"), b'{"v": 1}', False)
        assert light.drops.total == 1
        # another district's camera
        payload = json.dumps(
            {
                "v": 1,
                "intersection": "ql1a-thd",
                "camera": "cam-thd-s",
                "ts": "2026-11-25T20:00:00+00:00",
                "interval_s": 10,
                "lanes": [{"lane": 1, "count": 3, "queue": 2}],
            }
        ).encode()
        ctl.signals._on_camera(camera_topic(t, "ql1a-thd", "cam-thd-s"), payload, False)
        assert ctl.signals.foreign == 1 and ctl.signals.drops.total == 0
        health = ctl._health()
        assert health["foreign_messages"] == 5 and health["dropped_payloads"] == 1
    finally:
        ctl.close()


def test_a_controller_without_districts_reports_no_foreign_messages() -> None:
    cfg, _ = parse(yaml.safe_load(SHIPPED.read_text()))
    ctl = Controller(cfg, clock=ManualClock(T0), signals=False)
    try:
        assert ctl.district is None and ctl.cfg.controller.id == "phuly-edge-01"
        assert "foreign_messages" not in ctl._health()
    finally:
        ctl.close()


def _make_acl() -> Any:
    sys.path.insert(0, str(DEPLOY))
    try:
        import make_acl
    finally:
        sys.path.remove(str(DEPLOY))
    return make_acl


def test_acl_gives_each_district_instance_its_own_user_and_only_its_own_topics() -> None:
    make_acl = _make_acl()
    cfg, _ = parse(shipped_example())
    text = make_acl.build_acl(cfg)
    blocks = {b.split("\n")[0]: b for b in text.split("\nuser ")[1:]}
    assert "cityctl-controller" not in blocks  # no all-powerful controller user any more
    users = make_acl.usernames(cfg)
    assert users[:2] == ["cityctl-controller-north", "cityctl-controller-south"]
    assert len(blocks) == len(users)
    t = Topics(cfg.mqtt.prefix)
    for d in cfg.districts:
        own = cfg.for_district(d)
        lines = {
            ln for ln in blocks[f"cityctl-controller-{d}"].split("\n") if ln.startswith("topic")
        }
        writes = {ln.removeprefix("topic write ") for ln in lines if ln.startswith("topic write")}
        reads = {ln.removeprefix("topic read ") for ln in lines if ln.startswith("topic read")}
        assert reads == {
            t.node_state("+"),
            t.node_ack("+"),
            t.node_availability("+"),
            t.traffic_count("+"),
            camera_topic(t, "+", "+"),
        }
        for g in cfg.lighting.groups:
            mine = g.id in cfg.districts[d].groups
            assert (t.group_set(g.id) in writes) is mine
            assert (t.group_fallback(g.id) in writes) is mine
            for n in g.node_ids():
                assert (t.node_set(n) in writes) is mine and (t.node_alarms(n) in writes) is mine
        for x in cfg.signals.intersections:
            mine = x.id in cfg.districts[d].intersections
            assert (f"{t.root}/signals/{x.id}/status" in writes) is mine
        assert t.controller_availability(own.controller.id) in writes
        assert not [w for w in writes if "#" in w or "+" in w]  # writes are exact topics
    assert not [ln for ln in text.split("\n") if ln.startswith("pattern") or "%" in ln]
