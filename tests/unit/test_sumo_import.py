"""SUMO traffic lights → cityctl intersections (pure: hand-written descriptions, no SUMO)."""

from __future__ import annotations

import itertools

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.signals.engine import PhaseEngine, Request
from controller.signals.model import DetectorKind, GroupKind, Intersection, IntersectionConfig
from controller.sumo_import import ImportResult, import_light, import_lights, to_yaml
from simulator.sumo.network import (
    LaneInfo,
    TlsDescription,
    TlsLink,
    TlsPhase,
    TlsProgram,
    choose_program,
)

# A four-arm junction like SUMO's "cross": per arm a through+right lane and a left lane.
# Index: 0 N right/through, 1 N left, 2 E r/t, 3 E left, 4 S r/t, 5 S left, 6 W r/t, 7 W left.
ARMS = ("N", "E", "S", "W")


def _lane(lid: str, length: float = 100.0, speed: float = 13.89) -> LaneInfo:
    edge = lid.rsplit("_", 1)[0]
    return LaneInfo(lid, edge, length, speed, 3.2)


def cross(
    phases: list[tuple[str, float]],
    *,
    extra_links: list[TlsLink] | None = None,
    lanes: dict[str, LaneInfo] | None = None,
    programs: list[TlsProgram] | None = None,
    active: str = "0",
) -> TlsDescription:
    links: list[tuple[TlsLink, ...]] = []
    lane_info: dict[str, LaneInfo] = {}
    for k, arm in enumerate(ARMS):
        tl = f"{arm}in_0"
        ll = f"{arm}in_1"
        lane_info[tl] = _lane(tl)
        lane_info[ll] = _lane(ll)
        lane_info[f":J_{2 * k}_0"] = _lane(f":J_{2 * k}_0", 18.0)
        links.append((TlsLink(2 * k, tl, f"out{k}_0", f":J_{2 * k}_0", "s"),))
        links.append((TlsLink(2 * k + 1, ll, f"outl{k}_0", f":J_{2 * k + 1}_0", "l"),))
    for lk in extra_links or []:
        links.append((lk,))
    lane_info.update(lanes or {})
    prog = TlsProgram("0", "static", 0.0, tuple(TlsPhase(s, d) for s, d in phases))
    return TlsDescription(
        id="J",
        links=tuple(links),
        programs=tuple(programs or [prog]),
        active_program=active,
        lanes=lane_info,
        junctions=("J",),
    )


# NS through (G) with permitted lefts (g), then protected NS lefts, then the same for EW;
# yellow 3 s and all-red 2 s after every green.
STANDARD = [
    ("GgrrGgrr", 30.0),
    ("yyrryyrr", 3.0),
    ("rrrrrrrr", 2.0),
    ("rGrrrGrr", 8.0),
    ("ryrrryrr", 3.0),
    ("rrrrrrrr", 2.0),
    ("rrGgrrGg", 30.0),
    ("rryyrryy", 3.0),
    ("rrrrrrrr", 2.0),
    ("rrrGrrrG", 8.0),
    ("rrryrrry", 3.0),
    ("rrrrrrrr", 2.0),
]


def _ids(light_cfg: IntersectionConfig) -> list[str]:
    return [g.id for g in light_cfg.groups]


def test_groups_conflicts_and_stages_follow_the_program() -> None:
    light = import_light(cross(STANDARD))
    cfg = light.config
    assert _ids(cfg) == ["Nin_T", "Nin_L", "Ein_T", "Ein_L", "Sin_T", "Sin_L", "Win_T", "Win_L"]
    x = light.intersection
    c = {frozenset(p) for p in cfg.conflicts}
    # Permitted left with the opposing through: shown green together, so allowed.
    assert frozenset(("Nin_L", "Sin_T")) not in c
    # Crossing streets never share a green: conflicting.
    assert frozenset(("Nin_T", "Ein_T")) in c
    assert frozenset(("Nin_L", "Ein_L")) in c
    # Every green phase is a stage; phases with y are transitions.
    assert [(s.id, s.groups) for s in cfg.stages] == [
        ("p0", ["Nin_T", "Nin_L", "Sin_T", "Sin_L"]),
        ("p3", ["Nin_L", "Sin_L"]),
        ("p6", ["Ein_T", "Ein_L", "Win_T", "Win_L"]),
        ("p9", ["Ein_L", "Win_L"]),
    ]
    # The program's 3 s yellow and 2 s all-red.
    nt = x.index["Nin_T"]
    et = x.index["Ein_T"]
    assert x.clearance[nt] == 3.0
    assert x.all_red(x.index["Nin_L"], et) == pytest.approx(2.0)
    # Protected stage shows G, the permitted left in p0 shows g.
    assert light.mapping.stage_chars["p0"][1] == "g"
    assert light.mapping.stage_chars["p3"][1] == "G"
    # Minimum green at most 5 s, maximum at least 60 s.
    assert all(g.min_green_s == 5.0 for g in cfg.groups)
    assert all(g.max_green_s >= 60.0 for g in cfg.groups)
    # Fixed plan from the program.
    plan = cfg.fixed_plans[0]
    assert plan.greens == {"p0": 30.0, "p3": 8.0, "p6": 30.0, "p9": 8.0}
    assert plan.cycle_s == pytest.approx(sum(d for _, d in STANDARD))


def test_mapping_shows_stage_characters_yellow_and_fixed_links() -> None:
    free = TlsLink(8, "Nin_0", "free_0", ":J_8_0", "r")
    phases = [(s + "G", d) for s, d in STANDARD]
    light = import_light(cross(phases, extra_links=[free]))
    m = light.mapping
    assert m.fixed == {8: "G"}  # always green: not a group, shown as the program shows it
    x = light.intersection
    sig = [1] * x.n
    for gid in ("Nin_T", "Nin_L", "Sin_T", "Sin_L"):
        sig[x.index[gid]] = 3
    assert m.state(sig, "p0") == "GgrrGgrrG"
    sig[x.index["Nin_T"]] = 4
    sig[x.index["Sin_T"]] = 4
    assert m.state(sig, "p0") == "ygrrygrrG"
    # A green outside the stage's phase yields: 'g' is the safe character.
    assert m.state([3] + [1] * (x.n - 1), "p6")[0] == "g"


def test_yellow_and_all_red_floors_apply_where_the_program_has_less() -> None:
    short = [
        ("GgrrGgrr", 30.0),
        ("yyrryyrr", 2.0),
        ("rrGgrrGg", 30.0),
        ("rryyrryy", 2.0),
    ]
    light = import_light(cross(short))
    x = light.intersection
    for i, g in enumerate(x.groups):
        assert x.clearance[i] == 3.0, g.id  # 2 s in the program, the floor is 3 s
    # Through and left of an arm are green in the same phases: one group per arm.
    nt, et = x.index["Nin_TL"], x.index["Ein_TL"]
    assert x.all_red(nt, et) == pytest.approx(1.0)  # none in the program, the floor is 1 s
    assert light.program_gap_s[(nt, et)] == pytest.approx(0.0)


def test_no_yellow_in_the_program_uses_the_ite_yellow_from_the_lane_speed() -> None:
    phases = [("GGrrGGrr", 30.0), ("rrGGrrGG", 30.0)]
    lanes = {f"{a}in_{k}": _lane(f"{a}in_{k}", speed=22.2) for a in ARMS for k in (0, 1)}
    light = import_light(cross(phases, lanes=lanes))
    g = light.config.groups[0]
    assert g.yellow_s is None and g.speed_kmh == pytest.approx(79.9)
    assert light.intersection.clearance[0] == pytest.approx(4.7)  # ITE at 80 km/h


def test_longer_program_intergreen_is_kept_per_pair() -> None:
    phases = [
        ("GGrrGGrr", 30.0),
        ("yyrryyrr", 4.0),
        ("rrrrrrrr", 3.0),
        ("rrGGrrGG", 30.0),
        ("rryyrryy", 3.0),
        ("rrrrrrrr", 1.0),
    ]
    light = import_light(cross(phases))
    x = light.intersection
    nt, et = x.index["Nin_TL"], x.index["Ein_TL"]
    assert x.clearance[nt] == 4.0 and x.all_red(nt, et) == pytest.approx(3.0)
    assert x.clearance[et] == 3.0 and x.all_red(et, nt) == pytest.approx(1.0)


def test_pedestrian_crossing_gets_a_group_a_walk_and_a_push_button() -> None:
    ped = TlsLink(8, ":J_w0_0", ":J_c0_0", "", "s", pedestrian=True)
    lanes = {":J_c0_0": _lane(":J_c0_0", 14.0), ":J_w0_0": _lane(":J_w0_0", 5.0)}
    phases = [(s + ("G" if s.startswith("rrGg") and d == 30.0 else "r"), d) for s, d in STANDARD]
    light = import_light(cross(phases, extra_links=[ped], lanes=lanes))
    cfg = light.config
    pg = next(g for g in cfg.groups if g.kind is GroupKind.PEDESTRIAN)
    assert pg.crossing_m == 14.0 and pg.walk_s == 30.0
    btn = [d for d in cfg.detectors if d.kind is DetectorKind.PUSHBUTTON]
    assert len(btn) == 1 and btn[0].group == pg.id
    assert light.buttons[0].crossing == ":J_c0_0"
    assert light.buttons[0].walkingareas == (":J_w0_0",)
    # The crossing is green with EW: it conflicts with NS through, not with EW through.
    c = {frozenset(p) for p in cfg.conflicts}
    assert frozenset((pg.id, "Nin_T")) in c
    assert frozenset((pg.id, "Ein_T")) not in c
    # A clearing crossing shows red in SUMO (nobody may start), never yellow.
    x = light.intersection
    sig = [1] * x.n
    sig[x.index[pg.id]] = 6
    assert light.mapping.state(sig, None)[8] == "r"


def test_detectors_on_every_incoming_lane_and_shared_lanes_feed_each_group() -> None:
    # Lane Nin_0 carries two groups (through and a right turn with its own arrow).
    right = TlsLink(8, "Nin_0", "outr_0", ":J_8_0", "r")
    phases = [(s + ("G" if s[0] == "G" or s[1] == "G" else "r"), d) for s, d in STANDARD]
    light = import_light(cross(phases, extra_links=[right]))
    cfg = light.config
    stop = [d for d in cfg.detectors if d.kind is DetectorKind.STOPLINE]
    up = [d for d in cfg.detectors if d.kind is DetectorKind.UPSTREAM]
    cams = [d for d in cfg.detectors if d.kind is DetectorKind.CAMERA]
    assert len(stop) == 9 and len(up) == 9 and len(cams) == 9
    shared = next(lp for lp in light.loops if lp.lane == "Nin_0" and lp.kind == "stopline")
    assert len(shared.channels) == 2
    assert len({d.channel for d in stop + up}) == 18
    assert cfg.cabinet.channels == 18
    up_loop = next(lp for lp in light.loops if lp.lane == "Nin_0" and lp.kind == "upstream")
    assert up_loop.pos_m == pytest.approx(50.0)
    area = next(a for a in light.areas if a.lane == "Nin_0")
    assert area.start_m == pytest.approx(20.0) and area.end_m == pytest.approx(99.5)


def test_too_many_channels_drops_upstream_loops_first() -> None:
    extra = []
    lanes = {}
    for k in range(30):
        lid = f"X{k % 3}in_{k // 3}"  # three wide approaches, ten lanes each
        lanes[lid] = _lane(lid)
        extra.append(TlsLink(8 + k, lid, f"xo{k}_0", "", "s"))
    phases = [(s + ("G" if s[0] == "G" else "r") * 30, d) for s, d in STANDARD]
    light = import_light(cross(phases, extra_links=extra, lanes=lanes))
    kinds = {d.kind for d in light.config.detectors}
    assert DetectorKind.UPSTREAM not in kinds
    assert any("no upstream loops" in n for n in light.notes)
    assert light.config.cabinet.channels <= 64


def test_refusals_say_why() -> None:
    res = import_lights(
        [
            TlsDescription("rail", ((TlsLink(0, "a_0", "b_0", "", "s"),),), (), "0"),
            TlsDescription(
                "meter",
                ((TlsLink(0, "a_0", "b_0", "", "s"),),),
                (TlsProgram("0", "static", 0, (TlsPhase("G", 30), TlsPhase("r", 30))),),
                "0",
                {"a_0": _lane("a_0")},
            ),
            cross(STANDARD),
        ]
    )
    assert isinstance(res, ImportResult)
    assert [lt.config.id for lt in res.lights] == ["J"]
    assert "no phases" in res.refused["rail"]
    assert "fewer than two signal groups" in res.refused["meter"]


def test_manual_programs_are_shortened_and_single_green_programs_joined() -> None:
    manual = [(s, 10_000.0 if d == 30.0 else d) for s, d in STANDARD]
    prog = TlsProgram("manual", "static", 0, tuple(TlsPhase(s, d) for s, d in manual))
    light = import_light(cross(STANDARD, programs=[prog], active="manual"))
    assert light.program.program_id == "manual:manual"
    assert max(p.duration for p in light.program.phases) == 30.0
    # The game's "bs3d": one program per stage; joined in order into one cycle.
    progs = [
        TlsProgram(str(k), "static", 0, (TlsPhase(a, 4), TlsPhase(b, 1000)))
        for k, (a, b) in enumerate([("yyrryyrr", "rrGGrrGG"), ("rryyrryy", "GGrrGGrr")])
    ]
    desc = cross(STANDARD, programs=progs, active="0")
    joined = choose_program(desc)
    assert joined.program_id == "joined" and len(joined.phases) == 4
    assert import_light(desc).config.stages[0].id == "p1"


def test_yaml_fragment_reads_back_as_valid_intersections() -> None:
    res = import_lights([cross(STANDARD)])
    text = to_yaml(res, source="cross.net.xml")
    assert text.startswith("# Imported from cross.net.xml")
    data = yaml.safe_load(text)
    cfg = IntersectionConfig.model_validate(data["signals"]["intersections"][0])
    x = Intersection.build(cfg)
    assert x.conflict == res.lights[0].intersection.conflict
    assert x.intergreen == res.lights[0].intersection.intergreen


# -- property: any program imports into a safe model --------------------------------------------

N_LINKS = 6


@st.composite
def programs(draw: st.DrawFn) -> list[tuple[str, float]]:
    # Random green sets over 6 links; a conflict-free set is not required of SUMO programs —
    # the import derives the conflicts from them.
    n = draw(st.integers(2, 5))
    sets = draw(
        st.lists(
            st.lists(st.sampled_from("Gg"), min_size=N_LINKS, max_size=N_LINKS).map(lambda cs: cs),
            min_size=n,
            max_size=n,
        )
    )
    masks = draw(
        st.lists(
            st.lists(st.booleans(), min_size=N_LINKS, max_size=N_LINKS).filter(any),
            min_size=n,
            max_size=n,
        )
    )
    out: list[tuple[str, float]] = []
    for chars, mask in zip(sets, masks, strict=True):
        green = "".join(c if m else "r" for c, m in zip(chars, mask, strict=True))
        out.append((green, float(draw(st.integers(5, 40)))))
        out.append(("".join("y" if c != "r" else "r" for c in green), 3.0))
        if draw(st.booleans()):
            out.append(("r" * N_LINKS, float(draw(st.integers(1, 3)))))
    return out


def _desc6(phases: list[tuple[str, float]]) -> TlsDescription:
    lanes = {f"a{k}_0": _lane(f"a{k}_0") for k in range(N_LINKS)}
    links = tuple((TlsLink(k, f"a{k}_0", f"b{k}_0", "", "s"),) for k in range(N_LINKS))
    prog = TlsProgram("0", "static", 0, tuple(TlsPhase(s, d) for s, d in phases))
    return TlsDescription("P", links, (prog,), "0", lanes)


@settings(max_examples=150, deadline=None)
@given(programs(), st.lists(st.integers(0, 10), min_size=30, max_size=60), st.data())
def test_any_program_imports_into_a_model_whose_outputs_never_show_a_program_conflict(
    phases: list[tuple[str, float]], choices: list[int], data: st.DataObject
) -> None:
    desc = _desc6(phases)
    try:
        light = import_light(desc)
    except ValueError as exc:
        assert "fewer than two" in str(exc)
        return
    together = set()
    for s, _d in phases:
        on = [k for k, c in enumerate(s) if c in "Gg"]
        together |= {frozenset(p) for p in itertools.combinations(on, 2)}
    x = light.intersection
    engine = PhaseEngine(x, now=0.0)
    stages = [sid for sid, _ in x.stages]
    t = 0.0
    for c in choices:
        req = Request(next_stage=stages[c % len(stages)], end_green=c % 3 == 0)
        for _ in range(data.draw(st.integers(1, 80), label="ticks")):
            t += 0.5
            out = engine.step(t, req)
            state = light.mapping.state([int(s) for s in out.signals], out.stage)
            green = [k for k, ch in enumerate(state) if ch in "Gg"]
            for pair in itertools.combinations(green, 2):
                # Two links green together were green together somewhere in the program.
                assert frozenset(pair) in together, (state, phases)
