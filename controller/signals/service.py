"""The signal control loop's asyncio shell: one runner per intersection, over Modbus TCP.

Every ``signals.step_s`` (100 ms) each :class:`IntersectionRunner` reads its cabinet (status,
detectors), steps its pure :class:`~controller.signals.control.IntersectionControl` (strategy
asks, engine decides, safety monitor checks) and writes the outputs with the next heartbeat.
Once the cabinet acknowledges the write, engine and monitor time that output's changes from
the acknowledgement, not from the decision
(:meth:`~controller.signals.control.IntersectionControl.confirm`): a step that ran late under
load, followed by a prompt one, must not show the cabinet a short clearance or all-red.

**Who drives the heads.** A runner is *in control* only while the cabinet follows the outputs
it wrote. Its first good read may *adopt* what the cabinet shows; everything else is a
hand-over through all red, the way the cabinet's own rules (``docs/protocol.md`` §2) want it:

* **adoption** — the controller restarted within the heartbeat timeout, so the cabinet still
  follows the old process's outputs, and they are a state the engine can run from: a stage's
  greens, or a stage change on its way to one — yellows, pedestrian clearances, the all-red
  between (:func:`~controller.signals.engine.shown_state`). The runner takes them over at
  once: the engine starts there (:meth:`~controller.signals.control.IntersectionControl.adopt`:
  minimum and max green, walks and clearances count from now, every red as just cleared, the
  monitor takes the same state over) and the runner writes the very same outputs with its
  own heartbeat, continuing the old heartbeat's count, so nothing changes on the heads. Only
  when the status is believable: *follow*, no fault, and the holding registers read back
  (the commanded outputs, the command, heartbeat and commit) agree with what the status says
  is displayed and was last applied. Anything else — red-amber, flash codes, conflicting
  open groups, a combination that is no stage nor a change to one, a mismatch, a failed
  read-back — goes the local-plan way below. (All red needs no adoption: the hand-over below
  takes it within a step.)
* the cabinet is in start-up, in its local plan (it lost our heartbeat) or back from a
  heartbeat-loss flash: the runner writes all red with *follow*; the cabinet winds its plan down
  to all red and hands over; then the engine starts from its own all-red start-up;
* the cabinet follows somebody else's outputs that cannot be adopted: the runner first asks
  for the *local plan*, so the cabinet ends those greens properly, and then hands over as
  above. It does the same whenever its own last write still had greens, whatever the status
  says: a status register can lie, and all red sent to a cabinet that still follows would end
  the greens with no clearance;
* a write failed, or a read did: the engine is frozen (it never runs ahead of what the cabinet
  shows) and, once the link is back, the runner continues only if the cabinet still follows
  exactly what was last written; otherwise it hands over as above;
* the cabinet latched a monitor fault and flashes: the runner raises an alarm and waits for a
  person: :meth:`IntersectionRunner.reset_cabinet_fault` sends the reset, then the hand-over.

A violation caught by the controller's own monitor puts the intersection into flash (the
runner asks the cabinet to flash) until :meth:`IntersectionRunner.clear_flash`.

Given a recorder (``telemetry=``), a runner also records its event log, detector intervals,
decisions and state (:mod:`controller.signals.telemetry`, ``docs/telemetry.md``); without one
it spends nothing on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.aio import cancel_and_wait
from controller.diagnostics import DropCounter
from controller.signals.control import IntersectionControl, LocalTime
from controller.signals.engine import NotAdoptable
from controller.signals.model import DetectorKind, Intersection, Signal, SignalsSettings
from controller.signals.strategies import AdaptiveConfig
from controller.signals.telemetry import IntersectionTelemetry
from controller.telemetry.recorder import Recorder
from devices.cabinet import CabinetMode, CabinetStatus, Command, FaultCode, RegisterError
from devices.cameras import CameraCounts, camera_from_topic
from devices.lights import PayloadError, Topics, decode
from devices.modbus import CabinetError, CabinetLink
from devices.mqtt import LinkDown, MqttLink

__all__ = ["IntersectionRunner", "RunnerStats", "SignalsService", "link_for", "with_cabinets"]

log = logging.getLogger("cityctl.signals")

Sync = Literal["down", "handover", "control", "cabinet_fault", "flash"]
"""Where a runner stands with its cabinet (see the module docstring)."""

_ALL_RED = int(Signal.RED)


@dataclass
class RunnerStats:
    """Counters of one intersection, for logs, the status topic and tests."""

    steps: int = 0
    control_steps: int = 0
    writes: int = 0
    writes_skipped: int = 0  # control steps with nothing new, within refresh_s of the last write
    write_failures: int = 0
    reads: int = 0
    read_failures: int = 0
    register_errors: int = 0
    handovers: int = 0
    adoptions: int = 0
    adoptions_refused: int = 0
    resyncs: int = 0
    lost_control: int = 0
    cabinet_down_events: int = 0
    cabinet_faults: int = 0
    display_mismatches: int = 0
    camera_messages: int = 0
    max_step_lag_s: float = 0.0
    alarms_raised: int = 0
    by_sync: dict[str, int] = field(default_factory=dict)


def with_cabinets(
    xs: Sequence[Intersection], addresses: Mapping[str, tuple[str, int]]
) -> list[Intersection]:
    """The intersections with their cabinets moved to ``addresses`` (id → host, port)."""
    out = []
    for x in xs:
        if x.id not in addresses:
            out.append(x)
            continue
        host, port = addresses[x.id]
        cab = x.config.cabinet.model_copy(update={"host": host, "port": port})
        out.append(Intersection.build(x.config.model_copy(update={"cabinet": cab})))
    return out


def link_for(x: Intersection, *, name: str = "") -> CabinetLink:
    """The Modbus link to an intersection's cabinet, from its config."""
    cab = x.config.cabinet
    return CabinetLink(
        cab.host,
        cab.port,
        cab.unit,
        n_groups=x.n,
        n_channels=cab.channels,
        timeout_s=cab.timeout_s,
        poll_s=cab.poll_s,
        name=name or f"cabinet {x.id}",
    )


class IntersectionRunner:
    """Runs one intersection against its cabinet; see the module docstring."""

    def __init__(
        self,
        x: Intersection,
        settings: SignalsSettings,
        monotonic: Callable[[], float],
        link: CabinetLink,
        *,
        local_time: Callable[[], LocalTime],
        upstream_greens: Callable[[], Sequence[float]] | None = None,
        adaptive: AdaptiveConfig | None = None,
        telemetry: Recorder | None = None,
        detector_interval_s: float = 60.0,
        first_interval_s: float | None = None,
    ) -> None:
        self.x = x
        self.settings = settings
        self.monotonic = monotonic
        self.link = link
        self.local_time = local_time
        self.stats = RunnerStats()
        self.control = IntersectionControl(
            x, now=monotonic(), adaptive=adaptive, upstream_greens=upstream_greens
        )
        self.cabinet: CabinetStatus | None = None
        self.sync: Sync = "down"
        self.heartbeat = 0
        self.alarms: dict[str, str] = {}
        self._written: tuple[int, ...] | None = None
        self._written_command: Command | None = None
        self._written_t = -math.inf  # when the last write was acknowledged
        self._reset_pending = False
        #: Until the first good read: what the cabinet shows then may be adopted.
        self._adopt_pending = True
        self._camera_dets = [
            d for d in x.config.detectors if d.kind is DetectorKind.CAMERA and d.camera
        ]
        self._register_errors_in_row = 0
        #: Recording (``docs/telemetry.md``); None: nothing is recorded and nothing is spent.
        self.telemetry: IntersectionTelemetry | None = (
            IntersectionTelemetry(
                x, telemetry, interval_s=detector_interval_s, first_interval_s=first_interval_s
            )
            if telemetry is not None
            else None
        )

    # -- operator actions -------------------------------------------------------------------
    def reset_cabinet_fault(self) -> None:
        """Ask the cabinet to clear its latched fault (a person decided it is safe)."""
        self._reset_pending = True
        log.warning("%s: cabinet fault reset requested", self.x.id)

    def clear_flash(self) -> None:
        """Leave a flash caused by the controller's own monitor (after a person looked)."""
        if self.sync == "flash":
            self._set_sync("handover")
            self._clear("safety_violation")

    # -- one step ---------------------------------------------------------------------------
    async def step(self) -> None:
        """Read, decide, check, write (see the module docstring)."""
        self.stats.steps += 1
        status = await self._read()
        # Decide at the answer's time: a read that took long must not make the decision (and
        # the detector readings) older than what the cabinet said.
        now = self.monotonic()
        tel = self.telemetry
        if tel is not None:
            tel.read(status, now)
        if status is None:
            if not self.link.up:
                if self.sync == "control":
                    self.stats.lost_control += 1
                self._set_sync("down")
                # Also when a failed write already set "down" (a cut cable usually shows there
                # first): the alarm belongs to the link being down, once per outage.
                if "cabinet_down" not in self.alarms:
                    self.stats.cabinet_down_events += 1
                    self._alarm(
                        "cabinet_down", "no answer from the cabinet; it runs its local plan"
                    )
            if self.sync == "control" and self.cabinet is not None:
                # A value we cannot trust: write on (the heartbeat must not stop), decide on
                # the detectors we have.
                await self._control_step(now)
            if tel is not None:
                tel.after_step(self, now)
            return
        self._clear("cabinet_down")
        if self._adopt_pending:
            await self._try_adopt(status, now)
        self._judge(status, now)
        if self.sync == "control":
            await self._control_step(now)
        elif self.sync == "flash":
            await self._write(tuple(int(s) for s in self.control.output.signals), Command.FLASH)
        else:
            await self._handover_step(status, now)
        if tel is not None:
            tel.after_step(self, now)

    async def _control_step(self, now: float) -> None:
        self.stats.control_steps += 1
        tel = self.telemetry
        if tel is None:
            st = self.control.step(now, self.local_time())
        else:
            seen, max_outs = self.control.output, self.control.stats.max_outs
            st = self.control.step(now, self.local_time())
            tel.control_step(self.control, st, seen, self.control.stats.max_outs > max_outs, now)
        if st.violations:
            text = "; ".join(f"{v.kind} {'/'.join(v.groups)}: {v.detail}" for v in st.violations)
            log.error("%s: SAFETY VIOLATION — flashing: %s", self.x.id, text)
            self._alarm("safety_violation", text)
            self._set_sync("flash")
            await self._write(st.signals, Command.FLASH)
            return
        if (
            st.signals == self._written
            and self._written_command is Command.FOLLOW
            and now - self._written_t < self.settings.refresh_s
        ):
            # Nothing new for the heads: the cabinet shows these already (the read said so),
            # and its watchdog only needs a heartbeat every refresh_s (a third of its timeout
            # at most). Most steps are such steps; skipping them halves the Modbus traffic.
            self.stats.writes_skipped += 1
            return
        if not await self._write(st.signals, Command.FOLLOW):
            # The cabinet did not get this step: the engine is now ahead of the heads.
            self.stats.lost_control += 1
            self._set_sync("down")
            return
        # The cabinet applied the outputs before it answered: their changes date from now,
        # not from the decision (under load a step can run a second late; see confirm).
        self.control.confirm(self.monotonic())

    async def _handover_step(self, status: CabinetStatus, now: float) -> None:
        """Not in control: write all red with the command that brings the cabinet to us."""
        all_red = (_ALL_RED,) * self.x.n
        # The detectors still see traffic under the cabinet's plan: keep the bank current.
        self.control.detectors.update_signals([int(c) for c in status.displayed], now)
        if (
            self._reset_pending
            and status.mode is CabinetMode.FLASH
            and status.fault
            not in (
                FaultCode.NONE,
                FaultCode.HEARTBEAT_LOST,
            )
        ):
            self._reset_pending = False
            await self._write(all_red, Command.RESET_FAULT)
            return
        ours_open = self._written is not None and any(s != _ALL_RED for s in self._written)
        if (status.mode is CabinetMode.FOLLOWING and not status.all_red) or ours_open:
            # Following outputs that are not ours (or no longer): the cabinet's local plan
            # ends those greens through their clearances first. (All red to all red is a
            # hand-over already: the cabinet's monitor keeps its all-red timers.) Also when
            # our last write was not all red, whatever the status says: a status can be
            # wrong (a garbled but in-range register), and all red written to a cabinet that
            # still follows us would end our greens with no clearance.
            await self._write(all_red, Command.LOCAL_PLAN)
            return
        await self._write(all_red, Command.FOLLOW)

    async def _try_adopt(self, status: CabinetStatus, now: float) -> None:
        """At the first good read: take over what the cabinet shows, if it is safe to.

        See the module docstring (*adoption*). On success the runner is in control and the
        step writes the same outputs; otherwise nothing changes and the hand-over follows.
        """
        self._adopt_pending = False
        if status.mode is not CabinetMode.FOLLOWING or status.all_red:
            return  # start-up, local plan, flash, all red: the ordinary hand-over serves
        shown = tuple(int(c) for c in status.displayed)
        why = ""
        if status.fault is not FaultCode.NONE or status.fault_groups:
            why = f"the status says following with fault {status.fault.name}"
        else:
            try:
                frame = await self.link.read_outputs()
            except (CabinetError, RegisterError) as exc:
                why = f"the commanded outputs could not be read back ({exc})"
            else:
                # The status must agree with the holding registers: a display that differs
                # from what was commanded, or a commit the status does not report as applied,
                # is a register (or a writer) not to be trusted with the heads.
                if frame.command != int(Command.FOLLOW) or not frame.committed:
                    why = f"the last command is {frame.command} (commit {frame.commit})"
                elif frame.outputs != shown:
                    why = f"displayed {list(shown)} but commanded {list(frame.outputs)}"
                elif (frame.heartbeat, frame.commit) != (
                    status.last_heartbeat,
                    status.last_commit,
                ):
                    why = (
                        f"heartbeat/commit {frame.heartbeat}/{frame.commit} written, "
                        f"{status.last_heartbeat}/{status.last_commit} reported"
                    )
                else:
                    try:
                        state = self.control.adopt(now, shown)
                    except NotAdoptable as exc:
                        why = str(exc)
                    else:
                        # Our first heartbeat follows the old count: a change the watchdog sees.
                        self.heartbeat = frame.heartbeat
                        self.stats.adoptions += 1
                        self._set_sync("control")
                        log.info(
                            "%s: cabinet still follows the previous controller's outputs, "
                            "%s %s: adopted as shown",
                            self.x.id,
                            "stage" if state.phase == "green" else "changing to stage",
                            state.stage,
                        )
                        return
        self.stats.adoptions_refused += 1
        log.info(
            "%s: cabinet follows outputs that are not ours; not adopted (%s): "
            "handing over through its local plan",
            self.x.id,
            why,
        )

    def _judge(self, status: CabinetStatus, now: float) -> None:
        """Decide from the cabinet's status whether we (still) drive the heads."""
        mode = status.mode
        latched = mode is CabinetMode.FLASH and status.fault not in (
            FaultCode.NONE,
            FaultCode.HEARTBEAT_LOST,
        )
        if latched:
            if self.sync != "cabinet_fault":
                self.stats.cabinet_faults += 1
                groups = ", ".join(self.x.groups[g].id for g in status.fault_groups)
                detail = f"cabinet latched {status.fault.name}" + (f" ({groups})" if groups else "")
                log.error("%s: %s — the cabinet flashes until a reset", self.x.id, detail)
                self._alarm("cabinet_fault", detail)
                if self.sync == "control":
                    self.stats.lost_control += 1
                self._set_sync("cabinet_fault")
            return
        self._clear("cabinet_fault")
        if self.sync == "cabinet_fault":
            # The fault was reset (by a person, here or at the cabinet): hand over again.
            log.info(
                "%s: cabinet fault cleared (%s): handing over through all red", self.x.id, mode.name
            )
            self._set_sync("handover")
        if self.sync == "flash":
            return
        if self.sync == "control":
            if mode is not CabinetMode.FOLLOWING:
                self.stats.lost_control += 1
                log.warning(
                    "%s: cabinet left our outputs (%s): handing over again", self.x.id, mode.name
                )
                self._alarm("cabinet_fallback", f"cabinet went to {mode.name}")
                self._set_sync("handover")
            elif self._written is not None and status.displayed != self._written:
                # Read before write: the heads show what we wrote last step. (Signal codes are
                # IntEnums: the tuple compares equal to the codes written, without a copy.)
                self.stats.display_mismatches += 1
            return
        if self.sync == "down":
            # Back in touch: carry on only if the cabinet still shows exactly our last outputs
            # and the engine has not moved past them; otherwise hand over.
            shown = tuple(int(c) for c in status.displayed)
            ours = tuple(int(s) for s in self.control.output.signals)
            if (
                mode is CabinetMode.FOLLOWING
                and self._written is not None
                and shown == self._written == ours
            ):
                log.info("%s: cabinet back, still following our outputs", self.x.id)
                self._set_sync("control")
                return
            self.stats.resyncs += 1
            log.info(
                "%s: cabinet reachable (%s): handing over through all red", self.x.id, mode.name
            )
            self._set_sync("handover")
        if self.sync == "handover" and mode is CabinetMode.FOLLOWING and status.all_red:
            committed_red = self._written == (_ALL_RED,) * self.x.n
            if committed_red:
                self.stats.handovers += 1
                self.control.restart(now, "hand-over")
                log.info("%s: cabinet handed over: starting from all red", self.x.id)
                self._clear("cabinet_fallback")
                self._set_sync("control")

    # -- I/O -------------------------------------------------------------------------------
    async def _read(self) -> CabinetStatus | None:
        sent = self.monotonic()
        try:
            status = await self.link.read_status()
        except RegisterError as exc:
            self.stats.register_errors += 1
            self._register_errors_in_row += 1
            if self._register_errors_in_row >= 3:
                self._alarm("register_error", str(exc))
            return None
        except CabinetError:
            self.stats.read_failures += 1
            return None
        self.stats.reads += 1
        self._register_errors_in_row = 0
        self._clear("register_error")
        self.cabinet = status
        now = self.monotonic()
        self.control.loop_readings(status.detectors, now, sent=sent)
        self._detector_alarms()
        return status

    async def _write(self, signals: tuple[int, ...], command: Command) -> bool:
        self.heartbeat = (self.heartbeat + 1) & 0xFFFF
        try:
            await self.link.write_outputs(signals, self.heartbeat, int(command))
        except (CabinetError, RegisterError):
            self.stats.write_failures += 1
            return False
        self.stats.writes += 1
        self._written = signals
        self._written_command = command
        self._written_t = self.monotonic()
        return True

    # -- detectors, cameras, alarms ---------------------------------------------------------
    def _detector_alarms(self) -> None:
        for ev in self.control.detectors.take_events():
            if self.telemetry is not None:
                self.telemetry.detector_alarm(ev)
            key = f"detector:{ev.alarm.detector}"
            if ev.active:
                self._alarm(key, f"{ev.alarm.kind}: {ev.alarm.detail} (constant call)")
            else:
                self._clear(key)

    def on_camera(self, msg: CameraCounts, now: float) -> int:
        """Feed a camera message; returns how many lanes matched a configured camera zone."""
        matched = 0
        for d in self._camera_dets:
            if d.camera != msg.camera:
                continue
            for lane in msg.lanes:
                if lane.lane == d.lane and (lane.group is None or lane.group == d.group):
                    self.control.camera_reading(d.id, lane.count, lane.queue, msg.interval_s, now)
                    matched += 1
        self.stats.camera_messages += 1
        self._detector_alarms()
        return matched

    def _set_sync(self, sync: Sync) -> None:
        if sync != self.sync:
            self.sync = sync
            self.stats.by_sync[sync] = self.stats.by_sync.get(sync, 0) + 1

    def _alarm(self, key: str, detail: str) -> None:
        if self.alarms.get(key) != detail:
            if key not in self.alarms:
                self.stats.alarms_raised += 1
            self.alarms[key] = detail
            log.warning("%s: alarm %s: %s", self.x.id, key, detail)

    def _clear(self, key: str) -> None:
        if self.alarms.pop(key, None) is not None:
            log.info("%s: alarm %s cleared", self.x.id, key)

    def status(self) -> dict[str, Any]:
        """JSON-able status for the MQTT status topic and the logs."""
        out = self.control.output
        cab = self.cabinet
        view = self.control.view
        return {
            "intersection": self.x.id,
            "sync": self.sync,
            "cabinet": {
                "up": self.link.up,
                "mode": cab.mode.name if cab else None,
                "fault": cab.fault.name if cab and cab.fault else None,
            },
            "phase": out.phase,
            "stage": out.stage,
            "strategy": self.control.strategies.current(self.local_time()).name,
            "signals": self.control.signal_names(),
            "queues": (
                {g.group: round(g.queue, 1) for g in view.groups if g.kind.value == "vehicle"}
                if view
                else {}
            ),
            "detectors": {k: v["status"] for k, v in self.control.detectors.diagnostics().items()},
            "alarms": dict(self.alarms),
            "stats": {k: v for k, v in vars(self.stats).items() if not isinstance(v, dict)},
            "control": {
                k: v for k, v in vars(self.control.stats).items() if not isinstance(v, dict)
            },
        }


class SignalsService:
    """All intersections of the controller: runners, the step loop, camera feeds, status.

    ``monotonic`` must be real time (cabinets keep real-time heartbeat watchdogs);
    ``local_time`` gives the local time of day for the strategy schedules. ``foreign`` are
    the intersections other instances of a district-sharded city run (``docs/scaling.md``):
    their camera messages are counted in :attr:`foreign` and otherwise ignored.
    """

    def __init__(
        self,
        settings: SignalsSettings,
        intersections: list[Intersection],
        monotonic: Callable[[], float],
        links: dict[str, CabinetLink] | None = None,
        *,
        mqtt: MqttLink | None,
        topics: Topics,
        local_time: Callable[[], dt.datetime],
        adaptive: AdaptiveConfig | None = None,
        summary_s: float = 60.0,
        telemetry: Recorder | None = None,
        detector_interval_s: float = 60.0,
        foreign: Collection[str] = frozenset(),
    ) -> None:
        self.settings = settings
        self.summary_s = summary_s
        self.foreign_intersections = frozenset(foreign)
        #: Camera messages for other districts' intersections, ignored (not bad input).
        self.foreign = 0
        self.monotonic = monotonic
        self.mqtt = mqtt
        self.topics = topics
        links = dict(links or {})
        self.runners: dict[str, IntersectionRunner] = {}
        by_id = {x.id: x for x in intersections}
        n = max(1, len(intersections))
        for k, x in enumerate(intersections):
            link = links.get(x.id) or link_for(x)
            coord = x.config.coordination
            feed = None
            if coord is not None and coord.upstream in by_id:
                feed = self._feed(coord.upstream)
            self.runners[x.id] = IntersectionRunner(
                x,
                settings,
                monotonic,
                link,
                local_time=local_time,
                upstream_greens=feed,
                adaptive=adaptive,
                telemetry=telemetry,
                detector_interval_s=detector_interval_s,
                # Intervals end spread over the interval, not all at one step: at a hundred
                # intersections one step of everybody's interval points (≈1,200 of them and
                # their commit) held the loop for tens of milliseconds once a minute.
                first_interval_s=detector_interval_s * (k + 1) / n,
            )
        self.drops = DropCounter(log, "camera payload")
        self._last_status = float("-inf")
        if mqtt is not None:
            mqtt.subscribe(f"{topics.root}/signals/+/camera/+/counts", self._on_camera)

    def _feed(self, upstream: str) -> Callable[[], Sequence[float]]:
        def greens() -> Sequence[float]:
            r = self.runners.get(upstream)
            return r.control.arterial_greens() if r is not None else ()

        return greens

    def _on_camera(self, topic: str, payload: bytes, retained: bool) -> None:
        ids = camera_from_topic(self.topics, topic)
        if not payload or retained:
            return  # a retained count is an old interval: counting it again would double it
        if ids is None:  # an empty intersection or camera id: the subscription's + matches it
            self.drops.drop(topic, "topic outside the protocol")
            return
        runner = self.runners.get(ids[0])
        if runner is None:
            if ids[0] in self.foreign_intersections:
                self.foreign += 1
            return  # another controller's intersection
        try:
            msg = decode(CameraCounts, payload)
            if (msg.intersection, msg.camera) != ids:
                raise PayloadError("camera", "intersection/camera do not match the topic")
        except PayloadError as exc:
            self.drops.drop(topic, str(exc))
            return
        if runner.on_camera(msg, self.monotonic()) == 0:
            self.drops.drop(topic, f"camera {msg.camera!r} has no configured lane on {ids[0]}")

    async def run(self) -> None:
        """Step every intersection every ``step_s`` until cancelled.

        Each intersection has its own loop, so a cabinet whose requests time out slows only
        its own steps, never another cabinet's heartbeat.
        """
        tasks = [
            asyncio.create_task(self._run_one(r), name=f"signals {xid}")
            for xid, r in self.runners.items()
        ]
        last_summary = self.monotonic()
        try:
            while True:
                await asyncio.sleep(1.0)
                await self._publish_status()
                if self.monotonic() - last_summary >= self.summary_s:
                    last_summary = self.monotonic()
                    self._log_summary()
                for t in tasks:
                    if t.done() and not t.cancelled() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
        finally:
            await cancel_and_wait(tasks)
            for r in self.runners.values():
                with contextlib.suppress(Exception):
                    await r.link.close()

    def _log_summary(self) -> None:
        """One line per intersection: who drives, the stage, queues, changes, safety."""
        for xid, r in self.runners.items():
            out = r.control.output
            view = r.control.view
            queues = ""
            if view is not None:
                waiting = [
                    f"{g.group} {g.queue:.0f}"
                    for g in view.groups
                    if g.kind.value == "vehicle" and g.queue >= 0.5
                ]
                queues = ", ".join(waiting) or "none"
            cab = r.cabinet
            log.info(
                "signals %s: %s, %s %s (%s), queues: %s; %d stage changes, %d violations, "
                "cabinet %s%s",
                xid,
                r.sync,
                out.phase,
                out.stage or "-",
                r.control.strategies.current(r.local_time()).name,
                queues,
                r.control.stats.stage_changes,
                r.control.stats.violations,
                cab.mode.name if cab else "unknown",
                f" fault {cab.fault.name}" if cab and cab.fault else "",
            )

    async def _run_one(self, r: IntersectionRunner) -> None:
        step = self.settings.step_s
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await r.step()
            next_at += step
            lag = loop.time() - next_at
            if lag > 0:
                r.stats.max_step_lag_s = max(r.stats.max_step_lag_s, lag)
                if lag > 1.0:
                    next_at = loop.time()  # fell far behind (a dead link): do not burst
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(-lag)

    async def _publish_status(self) -> None:
        mono = self.monotonic()
        if self.mqtt is None or mono - self._last_status < 1.0 or not self.mqtt.connected:
            return
        self._last_status = mono
        root = self.topics.root
        statuses = [
            (f"{root}/signals/{xid}/status", json.dumps(r.status(), ensure_ascii=False).encode())
            for xid, r in self.runners.items()
        ]
        # One batch, not awaited: QoS 0 status is best effort (the next second's replaces
        # it). Awaiting a publish each cost ≈5 event-loop turns (aiomqtt waits for paho's
        # write): a hundred intersections' status took ≈500 turns a second. Building them
        # holds the loop ≈9 ms once a second (py-spy, full size); ten per turn instead
        # measured no better (docs/benchmarks.md, eighth round).
        with contextlib.suppress(LinkDown):
            self.mqtt.send_many(statuses, qos=0, retain=True)
