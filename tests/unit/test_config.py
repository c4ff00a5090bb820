"""Config validation: the shipped config is valid; every mistake names its path and reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from controller.cli import main
from controller.config import ConfigError, expand_node_ids, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config.yaml"


def shipped() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def errors_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(yaml.safe_dump(data, allow_unicode=True))
    return [str(i) for i in exc.value.issues if i.severity == "error"]


def test_shipped_config_is_a_believable_district() -> None:
    cfg = load_config(SHIPPED)
    nodes = list(cfg.nodes())
    assert 180 <= len(nodes) <= 260
    assert len({n for _, n, _, _ in nodes}) == len(nodes)
    assert len(cfg.lighting.groups) >= 5
    assert any(g.never_dim for g in cfg.lighting.groups)
    assert any(g.dims_with_traffic for g in cfg.lighting.groups)
    city = next(c for c in cfg.lighting.calendars if c.name == "city")
    assert any("Tết" in r.name for r in city.rules)
    # per-node details override the group's defaults
    lamp = {n: w for _, n, w, _ in nodes}
    assert lamp["QL-001"] == 300 and lamp["QL-002"] == 250


def test_unknown_program_is_reported_with_its_path_and_a_hint() -> None:
    data = shipped()
    data["lighting"]["groups"][5]["program"] = "parkk"
    errs = errors_of(data)
    assert any(
        e.startswith("lighting.groups[5].program") and "unknown program 'parkk'" in e for e in errs
    ), errs
    assert any("did you mean 'park'" in e for e in errs)


def test_every_error_is_reported_not_only_the_first() -> None:
    data = shipped()
    data["site"]["timezone"] = "Asia/Hanoi-ish"
    data["lighting"]["groups"][0]["lighting_class"] = "M9"
    data["lighting"]["programs"][0]["steps"][1]["level"] = 140
    data["mqtt"]["url"] = "http://broker"
    errs = errors_of(data)
    paths = {e.split(":")[0].split(" (line")[0] for e in errs}
    assert {
        "site.timezone",
        "lighting.groups[0].lighting_class",
        "lighting.programs[0].steps[1].level",
        "mqtt.url",
    } <= paths, errs


def test_errors_carry_line_numbers() -> None:
    text = SHIPPED.read_text().replace("program: park", "program: nigth", 1)
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    issue = next(i for i in exc.value.issues if i.path.endswith(".program"))
    assert issue.line is not None
    assert "nigth" in text.splitlines()[issue.line - 1]


@pytest.mark.parametrize(
    ("mutate", "path", "words"),
    [
        (
            lambda d: d["lighting"]["groups"][1].update(nodes=["QL-001"]),
            "lighting.groups[1].nodes",
            "already in group",
        ),
        (
            lambda d: d["lighting"]["groups"][0].update(calendar="nope"),
            "lighting.groups[0].calendar",
            "unknown calendar",
        ),
        (
            lambda d: d["lighting"]["groups"][0].update(program="arterial"),
            "lighting.groups[0]",
            "exactly one of program or calendar",
        ),
        (
            lambda d: d["lighting"]["groups"][0].update(lowest_class="M1"),
            "lighting.groups[0]",
            "brighter than",
        ),
        (
            lambda d: d["lighting"]["groups"][0].update(nodes=["QL-040..QL-001"]),
            "lighting.groups[0].nodes",
            "backwards",
        ),
        (
            lambda d: d["lighting"]["groups"][0].update(colour="red"),
            "lighting.groups[0].colour",
            "unknown field",
        ),
        (
            lambda d: d["lighting"]["programs"][0]["steps"][0].update(at="sunsett"),
            "lighting.programs[0].steps[0].at",
            "cannot read start time",
        ),
        (
            lambda d: d["lighting"]["programs"][0]["steps"][1].update(at="25:00"),
            "lighting.programs[0].steps[1].at",
            "out of range",
        ),
        (
            lambda d: d["lighting"]["overrides"][0].update(groups=["nowhere"]),
            "lighting.overrides[0].groups[0]",
            "unknown group",
        ),
        (
            lambda d: d["lighting"]["overrides"][0].update(until="2026-12-24T17:00:00"),
            "lighting.overrides[0]",
            "not after start",
        ),
        (lambda d: d["lighting"].update(refresh_s=600), "lighting", "at most a third"),
        (
            lambda d: d["signals"].update(refresh_s=1.0),
            "signals",
            "refresh_s: 1 s is more than a third of heartbeat_timeout_s",
        ),
        (
            lambda d: d["lighting"]["calendars"][0]["rules"][0].update(program="fest"),
            "lighting.calendars[0].rules[0].program",
            "unknown program",
        ),
        (lambda d: d["mqtt"].update(password_env="X", password_file="/f"), "mqtt", "not both"),
        (lambda d: d["site"].update(latitude=95), "site.latitude", "less than or equal"),
        (lambda d: d["site"].update(timezone="America"), "site.timezone", "unknown IANA time zone"),
        (lambda d: d.pop("site"), "site", "required field is missing"),
    ],
)
def test_mistakes_name_their_field_and_reason(mutate, path, words) -> None:  # type: ignore[no-untyped-def]
    data = shipped()
    mutate(data)
    errs = errors_of(data)
    assert any(e.split(" (line")[0].split(":")[0] == path and words in e for e in errs), errs


def test_a_program_whose_steps_cross_is_rejected() -> None:
    data = shipped()
    # 18:00 is before sunset+10min on many summer days in Phu Ly: a person's mistake
    data["lighting"]["programs"][0]["steps"][1]["at"] = "18:00"
    errs = errors_of(data)
    assert any(e.startswith("lighting.programs[0].steps[1].at") for e in errs), errs


def test_node_ranges() -> None:
    assert expand_node_ids("LL-008..LL-011") == ["LL-008", "LL-009", "LL-010", "LL-011"]
    assert expand_node_ids("x7") == ["x7"]
    for bad in ("A-1..B-3", "A-3..A-1", "bad id"):
        with pytest.raises(ValueError):
            expand_node_ids(bad)


def test_password_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = shipped()
    data["mqtt"]["password_env"] = "CITYCTL_TEST_PW"
    cfg, _ = parse_config(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(ConfigError, match="CITYCTL_TEST_PW is not set"):
        cfg.mqtt.password()
    monkeypatch.setenv("CITYCTL_TEST_PW", "s3cret")
    assert cfg.mqtt.settings("c").password == "s3cret"
    pw = tmp_path / "pw"
    pw.write_text("fromfile\n")
    data["mqtt"].pop("password_env")
    data["mqtt"]["password_file"] = str(pw)
    data["mqtt"]["url"] = "mqtts://broker.example:8884"
    cfg, _ = parse_config(yaml.safe_dump(data, allow_unicode=True))
    s = cfg.mqtt.settings("c")
    assert (s.password, s.host, s.port, s.tls is not None) == (
        "fromfile",
        "broker.example",
        8884,
        True,
    )


def test_cli_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(SHIPPED)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(SHIPPED.read_text().replace("program: park", "program: nigth", 1))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "lighting.groups[5].program" in err and "unknown program 'nigth'" in err
    assert "1 error(s)" in err
    (tmp_path / "notyaml.yaml").write_text("site: [unclosed")
    assert main(["validate", str(tmp_path / "notyaml.yaml")]) == 1
    assert "not valid YAML" in capsys.readouterr().err


def test_cli_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["type"] == "object"
    assert {"site", "mqtt", "lighting"} <= set(schema["properties"])


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        [],
        ["validate"],
        ["config"],
        ["config", "schema"],
        ["schedule"],
        ["schedule", "preview"],
        ["run"],
        ["demo"],
        ["sim"],
        ["sim", "lights"],
        ["sim", "fault"],
        ["bench"],
        ["bench", "lighting"],
    ):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--help"])
        assert exc.value.code == 0
        assert "usage: cityctl" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mutate", "path", "words"),
    [
        (
            lambda x: x["stages"][0]["groups"].append("E_T"),
            "signals.intersections[0].stages[0]",
            "conflict",
        ),
        (
            lambda x: x.update(intergreens={"N_T": {"E_T": 2.0}}),
            "signals.intersections[0].intergreens.N_T.E_T",
            "below the floor",
        ),
        (
            lambda x: x.update(intergreens={"N_T": {"S_T": 6.0}}),
            "signals.intersections[0].intergreens.N_T.S_T",
            "do not conflict",
        ),
        (
            lambda x: x["conflicts"].append(["N_T", "X_9"]),
            "signals.intersections[0].conflicts[48][1]",
            "unknown group",
        ),
        (
            lambda x: x["groups"][0].update(yellow_s=2.5),
            "signals.intersections[0].groups[0].yellow_s",
            "greater than or equal to 3",
        ),
        (
            lambda x: x["groups"][0].update(all_red_s=0.5),
            "signals.intersections[0].groups[0].all_red_s",
            "greater than or equal to 1",
        ),
        (
            lambda x: x["detectors"][1].update(channel=0),
            "signals.intersections[0].detectors[1].channel",
            "already",
        ),
        (
            lambda x: x["strategy"].update(fixed_plan="evening"),
            "signals.intersections[0].strategy.fixed_plan",
            "unknown fixed plan",
        ),
        (lambda x: x["stages"].pop(3), "signals.intersections[0].groups[6]", "in no stage"),
    ],
)
def test_intersection_mistakes_name_their_field(mutate, path, words) -> None:  # type: ignore[no-untyped-def]
    data = shipped()
    mutate(data["signals"]["intersections"][0])
    errs = errors_of(data)
    assert any(e.split(" (line")[0].split(":")[0] == path and words in e for e in errs), errs
