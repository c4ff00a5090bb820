"""cityctl against SUMO's own signal controllers, on any SUMO scenario.

:func:`run_sumo_bench` runs one scenario (a ``.sumocfg``) with one controller:

* a cityctl strategy (``fixed``, ``actuated``, ``adaptive``): every traffic light of the network
  is imported (:mod:`controller.sumo_import`) and run by the controller's real signal stack
  (:class:`~controller.signals.control.IntersectionControl`: detector bank, strategy, phase
  engine, safety monitor) in lock-step with SUMO — each simulation step, the detectors'
  registers and the camera messages go in, the checked signal outputs come out as SUMO state
  strings. Simulation time is the controller's clock, so an hour runs in seconds. The controller
  sees only what the detectors placed in the network measured (:mod:`simulator.sumo.field`).
* a SUMO baseline (``sumo-static``, ``sumo-actuated``, ``sumo-delay_based``): the network's own
  program, re-typed (:mod:`simulator.sumo.baselines`), run by SUMO.

The figures are SUMO's own, from its output files, so anyone can recompute them (``--keep``):

* ``mean_delay_s``: over **every** vehicle of the tripinfo file written with
  ``--tripinfo-output.write-unfinished`` and ``--tripinfo-output.write-undeparted``, the mean of
  ``timeLoss + max(0, departDelay)`` — a controller cannot look good by keeping vehicles out;
* ``safety``: the states SUMO displayed (``SaveTLSStates``) checked by an independent checker
  (:mod:`simulator.sumo.safety`) against the imported conflict matrix and clearances: conflicting
  greens, short yellows, short all-reds, cut minimum greens. The same rules hold every controller
  (a baseline's own program defines its minimum greens and sequence gaps; the floors — yellow
  ≥ 3 s, all-red ≥ 1 s — hold for all).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from controller.signals.model import ALL_RED_FLOOR_S, Intersection, StrategyConfig
from controller.signals.strategies import AdaptiveConfig
from controller.sumo_import import ImportedLight, ImportResult, import_lights

__all__ = [
    "BASELINES",
    "CONTROLLERS",
    "STRATEGIES",
    "link_rules",
    "run_sumo_bench",
    "sumo_binary",
]

STRATEGIES: tuple[str, ...] = ("fixed", "actuated", "adaptive")
BASELINES: tuple[str, ...] = ("sumo-static", "sumo-actuated", "sumo-delay_based")
CONTROLLERS: tuple[str, ...] = STRATEGIES + BASELINES
CAMERA_INTERVAL_S = 10.0

Progress = Callable[[float, float], None]


def sumo_binary(name: str = "sumo") -> str:
    """Path of a SUMO binary from the ``eclipse-sumo`` wheel (or the PATH)."""
    try:
        import sumo  # the eclipse-sumo wheel

        path = Path(sumo.SUMO_HOME) / "bin" / name
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"SUMO's {name!r} was not found: install the extra `pip install cityctl[sumo]`"
        )
    return found


def _libsumo() -> Any:
    try:
        import libsumo
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "libsumo is not installed: install the extra `pip install cityctl[sumo]`"
        ) from exc
    return libsumo


def link_rules(light: ImportedLight) -> Any:
    """The rules SUMO's displayed states of this light are checked against (see module)."""
    from simulator.sumo.safety import LinkRules

    x = light.intersection
    m = light.mapping
    n = m.n_links
    yellow = [0.0] * n
    min_green = [0.0] * n
    monitored: set[int] = set()
    owner: dict[int, int] = {}
    for gi, links in enumerate(m.group_links):
        g = x.groups[gi]
        for idx in links:
            owner[idx] = gi
            monitored.add(idx)
            yellow[idx] = 0.0 if m.pedestrian[gi] else x.clearance[gi]
            min_green[idx] = min(g.min_green_total_s, light.program_min_green_s[gi])
    conflicts: set[tuple[int, int]] = set()
    all_red: dict[tuple[int, int], float] = {}
    for i in monitored:
        for j in monitored:
            gi, gj = owner[i], owner[j]
            if i == j or not x.conflict[gi][gj]:
                continue
            conflicts.add((min(i, j), max(i, j)))
            prog = light.program_gap_s.get((gi, gj), math.inf)
            model = x.intergreen[gi][gj] if m.pedestrian[gi] else x.all_red(gi, gj)
            all_red[(i, j)] = max(ALL_RED_FLOOR_S, min(model, prog))
    return LinkRules(
        n=n,
        conflicts=frozenset(conflicts),
        yellow_min_s=tuple(yellow),
        all_red_min_s=all_red,
        min_green_s=tuple(min_green),
        monitored=frozenset(monitored),
    )


class CoreLink:
    """The in-process transport: the cabinet's core called directly, registers and all.

    It speaks the same register images as :class:`devices.modbus.CabinetLink` (the input
    registers decoded by :func:`devices.cabinet.decode_status`, the outputs encoded by
    :func:`devices.cabinet.encode_outputs`), without the socket.
    """

    def __init__(self, core: Any, n_groups: int, n_channels: int, clock: Callable[[], float]):
        self.core = core
        self.n_groups = n_groups
        self.n_channels = n_channels
        self.clock = clock
        self.up = True

    async def read_status(self) -> Any:
        """Decode the core's input registers as a poll would."""
        from devices.cabinet import decode_status

        return decode_status(
            self.core.input_registers(self.clock()), self.n_groups, self.n_channels
        )

    async def write_outputs(self, signals: Any, heartbeat: int, command: int = 0) -> None:
        """Write one output frame (heartbeat, command, commit, outputs) at address 0."""
        from devices.cabinet import encode_outputs

        self.core.write_holding(self.clock(), 0, encode_outputs(signals, heartbeat, command))

    async def read_outputs(self) -> Any:
        """Read back the holding registers (what the cabinet holds as commanded)."""
        from devices.cabinet import parse_output_frame

        return parse_output_frame(self.core.holding_registers(), self.n_groups)

    async def close(self) -> None:
        """Nothing to close."""


class _FieldSource:
    """A light's loops and buttons as its cabinet's detector source (cumulative readings)."""

    def __init__(self, field: Any, light: ImportedLight, button_key: Callable[[int], str]):
        self.field = field
        self.by_channel: dict[int, tuple[str, str]] = {}
        for lp in light.loops:
            for ch in lp.channels:
                self.by_channel[ch] = ("loop", lp.id)
        for b in light.buttons:
            self.by_channel[b.channel] = ("button", button_key(b.channel))

    def step(self, t: float, dt: float, shown: Any) -> None:
        """SUMO moves the traffic; nothing to do here."""

    def detector(self, channel: int) -> tuple[int, float, bool]:
        """``(count, occupied seconds, presence)`` of a channel, cumulative."""
        kind, key = self.by_channel.get(channel, ("", ""))
        if kind == "loop":
            st = self.field.loops[key]
            return st.count, st.occupancy_ds / 10.0, st.presence
        if kind == "button":
            return self.field.presses[key], 0.0, self.field.waiting[key]
        return 0, 0.0, False


@dataclass
class _Light:
    light: ImportedLight
    runner: Any
    core: Any
    ids: list[str]
    detectors: dict[str, Any]


def _with_strategy(x: Intersection, name: str) -> Intersection:
    cfg = x.config.model_copy(update={"strategy": StrategyConfig(default=name, fixed_plan="sumo")})
    return Intersection.build(cfg)


def _start(ls: Any, cmd: list[str]) -> None:
    try:
        ls.start(cmd)
    except Exception as exc:  # libsumo's TraCIException; SUMO printed the reason on stderr
        raise RuntimeError(
            f"SUMO could not start {cmd[2] if len(cmd) > 2 else ''}: {exc} (see SUMO's "
            "'Error:' line above)"
        ) from exc


def _describe(ls: Any, run_cfg: Path) -> tuple[list[Any], float, float]:
    from simulator.sumo.network import describe_traffic_lights

    _start(ls, [sumo_binary(), "-c", str(run_cfg), "--no-step-log", "--no-warnings"])
    try:
        descs = describe_traffic_lights(ls)
        dt = float(ls.simulation.getDeltaT())
        t0 = float(ls.simulation.getTime())
    finally:
        ls.close()
    return descs, dt, t0


def run_sumo_bench(
    sumocfg: str | Path,
    controller: str,
    *,
    begin: float | None = None,
    end: float | None = None,
    seed: int | None = None,
    keep: str | Path | None = None,
    adaptive: AdaptiveConfig | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    transport: str = "inprocess",
) -> dict[str, Any]:
    """Run one scenario with one controller and return the figures (see module)."""
    from simulator.sumo.baselines import BASELINE_PROGRAM_ID, BaselineKind, baseline_additional
    from simulator.sumo.config import read_sumocfg, write_run_config
    from simulator.sumo.field import AreaSite, ButtonSite, LoopSite, SumoField, detectors_additional
    from simulator.sumo.outputs import read_tls_states, read_tripinfo, tls_states_additional
    from simulator.sumo.safety import SafetyCounts, check_displayed

    if controller not in CONTROLLERS:
        raise ValueError(f"controller: unknown {controller!r}; one of {', '.join(CONTROLLERS)}")
    say = log or (lambda _m: None)
    cfg = read_sumocfg(sumocfg)
    work = Path(keep) if keep is not None else Path(tempfile.mkdtemp(prefix="cityctl-sumo-"))
    work.mkdir(parents=True, exist_ok=True)
    ls = _libsumo()
    started = time.perf_counter()

    opts: dict[str, str] = {}
    if begin is not None:
        opts["begin"] = f"{begin:g}"
    if end is not None:
        opts["end"] = f"{end:g}"
    if seed is not None:
        opts["seed"] = str(seed)
    t_begin = cfg.time("begin", 0.0) if begin is None else begin
    t_end = cfg.time("end", math.inf) if end is None else end
    if t_end <= t_begin:
        raise ValueError(f"end {t_end:g} s is not after begin {t_begin:g} s")
    # The probe only reads the traffic lights: no routes, so it loads in a blink.
    probe_cfg = write_run_config(
        cfg, work / "probe.sumocfg", set_options=opts, drop_options=("route-files",)
    )
    descs, dt, t0 = _describe(ls, probe_cfg)
    imported: ImportResult = import_lights(descs)
    lights = list(imported.lights)
    for tid, why in imported.refused.items():
        say(f"traffic light {tid} keeps its own program: {why}")

    extra: list[Path] = []
    states_file = work / "tls-states.xml"
    states_add = work / "tls-states.add.xml"
    states_add.write_text(tls_states_additional([lt.mapping.tls_id for lt in lights], states_file))
    extra.append(states_add)
    is_baseline = controller.startswith("sumo-")
    loop_sites: list[LoopSite] = []
    area_sites: list[AreaSite] = []
    button_sites: list[ButtonSite] = []
    if is_baseline:
        kind = cast(BaselineKind, controller.removeprefix("sumo-"))
        base_add = work / f"baseline-{kind}.add.xml"
        base_add.write_text(
            baseline_additional(
                [(d, lt.program) for lt in lights for d in descs if d.id == lt.mapping.tls_id],
                kind,
            )
        )
        extra.append(base_add)
    else:
        for lt in lights:
            loop_sites += [
                LoopSite(lp.id, lp.lane, lp.pos_m, count_on_exit=lp.kind == "stopline")
                for lp in lt.loops
            ]
            area_sites += [AreaSite(a.id, a.lane, a.start_m, a.end_m) for a in lt.areas]
            button_sites += [
                ButtonSite(f"{lt.config.id}#{b.channel}", b.crossing, b.walkingareas)
                for b in lt.buttons
            ]
        det_add = work / "detectors.add.xml"
        det_add.write_text(detectors_additional(loop_sites, area_sites))
        extra.append(det_add)
    tripinfo = work / "tripinfo.xml"
    run_opts = dict(opts)
    run_opts.update(
        {
            "tripinfo-output": str(tripinfo),
            "tripinfo-output.write-unfinished": "true",
            "tripinfo-output.write-undeparted": "true",
        }
    )
    run_cfg = write_run_config(
        cfg,
        work / "run.sumocfg",
        extra_additional=extra,
        set_options=run_opts,
        drop_options=("statistic-output", "summary-output", "tripinfo-output"),
    )
    setup_s = time.perf_counter() - started

    _start(
        ls,
        [
            sumo_binary(),
            "-c",
            str(run_cfg),
            "--no-step-log",
            "--no-warnings",
            "--duration-log.disable",
        ],
    )
    try:
        field = SumoField(ls, loop_sites, area_sites, button_sites)
        if is_baseline:
            for lt in lights:
                ls.trafficlight.setProgram(lt.mapping.tls_id, BASELINE_PROGRAM_ID[kind])
        loop = _Lockstep(field, lights, controller, transport, t_begin, t_end, adaptive, progress)
        asyncio.run(loop.run(not is_baseline))
    finally:
        ls.close()
    now = loop.now
    wall = time.perf_counter() - started
    trips = read_tripinfo(tripinfo)
    shown = read_tls_states(states_file) if states_file.exists() else {}
    safety = SafetyCounts()
    per_light: list[dict[str, Any]] = []
    for lt in lights:
        tid = lt.mapping.tls_id
        counts = check_displayed(shown.get(tid, []), link_rules(lt), now)
        safety = safety + counts
        row: dict[str, Any] = {"tls": tid, "safety": counts.as_dict()}
        run_of = next((r for r in loop.lights if r.light is lt), None)
        if run_of is not None:
            st = run_of.runner.control.stats
            cab = run_of.core.stats
            row.update(
                stage_changes=st.stage_changes,
                controller_violations=st.violations,
                flashes=st.flashes,
                detector_alarms=len(run_of.runner.control.detectors.alarms()),
                cabinet_monitor_faults=cab.faults,
                handovers=run_of.runner.stats.handovers,
            )
        per_light.append(row)
    sumo_s, ctl_s = loop.sumo_s, loop.ctl_s
    if progress is not None:
        progress(now - t_begin, now - t_begin)
    return {
        "controller": controller,
        "transport": transport if not controller.startswith("sumo-") else "sumo",
        "sumocfg": str(Path(sumocfg)),
        "begin": t_begin,
        "end": now,
        "seed": seed,
        "step_s": dt,
        "vehicles": trips.vehicles,
        "arrived": trips.arrived,
        "mean_delay_s": round(trips.mean_delay_s, 3),
        "mean_wait_s": round(trips.mean_wait_s, 3),
        "mean_time_loss_s": round(trips.mean_time_loss_s, 3),
        "wall_s": round(wall, 3),
        "sumo_step_s": round(sumo_s, 3),
        "controller_s": round(ctl_s, 3),
        "setup_s": round(setup_s, 3),
        "safety": safety.as_dict(),
        "safety_details": list(safety.details),
        "lights": len(descs),
        "lights_controlled": len(lights),
        "refused": dict(imported.refused),
        "per_light": per_light,
        "kept": str(work) if keep is not None else None,
        "sumo_version": _sumo_version(),
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "t0": t0,
    }


class _Lockstep:
    """SUMO and the controller, one simulation step each in turn (simulation time is the clock).

    Per step: SUMO advances; every cabinet ticks at the new time (its detectors take the loops'
    readings); every runner reads its cabinet, decides and writes — over the transport, exactly
    as :class:`~controller.signals.service.IntersectionRunner` does in the field; every camera
    interval the camera zones' counts go to the runners as camera messages; and SUMO shows what
    each cabinet's heads show.
    """

    def __init__(
        self,
        field: Any,
        lights: list[ImportedLight],
        controller: str,
        transport: str,
        t_begin: float,
        t_end: float,
        adaptive: AdaptiveConfig | None,
        progress: Progress | None,
    ) -> None:
        self.field = field
        self.imported = lights
        self.controller = controller
        self.transport = transport
        self.t_begin = t_begin
        self.t_end = t_end
        self.adaptive = adaptive
        self.progress = progress
        self.now = float(field.t)
        self.lights: list[_Light] = []
        self.sumo_s = 0.0
        self.ctl_s = 0.0
        self._servers: list[Any] = []
        self._links: list[Any] = []
        self._cam_last: dict[str, int] = {}

    async def run(self, controlled: bool) -> None:
        """Run to the end (or until the demand is served when there is no end)."""
        try:
            if controlled:
                await self._start()
            await self._loop()
        finally:
            for link in self._links:
                await link.close()
            for server in self._servers:
                await server.stop()

    async def _start(self) -> None:
        from controller.signals.model import SignalsSettings
        from controller.signals.service import IntersectionRunner
        from controller.sim_signals import cabinet_spec
        from simulator.cabinet import CabinetCore, SimulatedCabinet

        settings = SignalsSettings()
        for lt in self.imported:
            x = _with_strategy(lt.intersection, self.controller)
            spec = cabinet_spec(x, settings, tick_hz=1.0 / max(self.field.dt, 0.01))
            tag = lt.config.id
            source = _FieldSource(self.field, lt, _button_key(tag))
            link: Any
            if self.transport == "modbus":
                from devices.modbus import CabinetLink

                server = SimulatedCabinet(
                    spec, "127.0.0.1", 0, traffic=source, clock=self._clock, tick_hz=0.2
                )
                await server.start()
                self._servers.append(server)
                core = server.core
                link = CabinetLink(
                    "127.0.0.1",
                    server.port,
                    n_groups=x.n,
                    n_channels=spec.n_channels,
                    timeout_s=5.0,
                    name=f"cabinet {tag}",
                )
            else:
                core = CabinetCore(spec, self.now, source)
                link = CoreLink(core, x.n, spec.n_channels, self._clock)
            self._links.append(link)
            runner = IntersectionRunner(
                x,
                settings,
                self._clock,
                link,
                local_time=lambda: _minutes(self.now),
                adaptive=self.adaptive,
            )
            self.lights.append(
                _Light(
                    lt,
                    runner,
                    core,
                    [g.id for g in x.groups],
                    {d.id: d for d in x.config.detectors},
                )
            )
        await self._control()

    def _clock(self) -> float:
        return self.now

    async def _loop(self) -> None:
        field = self.field
        cam_every = max(1, round(CAMERA_INTERVAL_S / field.dt))
        k = 0
        last_report = time.perf_counter()
        while self.now + 1e-9 < self.t_end:
            if not math.isfinite(self.t_end) and field.expected_vehicles() <= 0:
                break
            a = time.perf_counter()
            self.now = field.step()
            b = time.perf_counter()
            self.sumo_s += b - a
            k += 1
            if self.lights:
                for lt in self.lights:
                    lt.core.tick(self.now)
                if k % cam_every == 0:
                    self._cameras()
                await self._control()
                self.ctl_s += time.perf_counter() - b
            if self.progress is not None and time.perf_counter() - last_report > 0.5:
                total = (self.t_end if math.isfinite(self.t_end) else self.now) - self.t_begin
                self.progress(self.now - self.t_begin, total)
                last_report = time.perf_counter()
        if self.progress is not None:
            self.progress(self.now - self.t_begin, self.now - self.t_begin)

    async def _control(self) -> None:
        for lt in self.lights:
            await lt.runner.step()
            out = lt.runner.control.output
            stage = out.stage if lt.runner.sync == "control" else None
            self.field.show(lt.light.mapping.tls_id, lt.light.mapping.state(lt.core.shown, stage))

    def _cameras(self) -> None:
        from devices.cameras import CameraCounts, LaneCount

        ts = _EPOCH + dt.timedelta(seconds=self.now)
        for lt in self.lights:
            lanes: list[LaneCount] = []
            for area in lt.light.areas:
                total = self.field.loops[area.stopline_loop].count
                crossed = total - self._cam_last.get(area.id, 0)
                self._cam_last[area.id] = total
                queue = min(500, self.field.area_queue(area.id))
                for did in area.detectors:
                    d = lt.detectors[did]
                    lanes.append(
                        LaneCount(
                            lane=d.lane, group=d.group, count=min(crossed, 10_000), queue=queue
                        )
                    )
            camera = next(
                (d.camera for d in lt.light.config.detectors if d.camera is not None), None
            )
            if camera is None:
                continue
            for i in range(0, len(lanes), 16):
                msg = CameraCounts(
                    intersection=lt.light.config.id,
                    camera=camera,
                    ts=ts,
                    interval_s=CAMERA_INTERVAL_S,
                    lanes=lanes[i : i + 16],
                )
                lt.runner.on_camera(msg, self.now)


_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _button_key(tag: str) -> Callable[[int], str]:
    def key(channel: int) -> str:
        return f"{tag}#{channel}"

    return key


def _minutes(t: float) -> float:
    return (t % 86_400.0) / 60.0


def _sumo_version() -> str:
    try:
        import sumo

        return str(getattr(sumo, "__version__", "") or Path(sumo.SUMO_HOME).name)
    except ImportError:  # pragma: no cover
        return ""


def _eprint(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
