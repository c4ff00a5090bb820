"""The controller process: one MQTT link, the lighting loop, the signal loops, and an orderly
start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from controller.aio import cancel_and_wait
from controller.api.app import ApiContext, create_app
from controller.api.audit import AuditLog
from controller.api.auth import Role, TokenBook
from controller.api.server import ApiServer
from controller.clock import Clock, SystemClock
from controller.config import CityConfig
from controller.incidents import Directory, IncidentError, open_incidents, runtime_faults
from controller.lighting.service import LightingService
from controller.signals.service import SignalsService, with_cabinets
from controller.systemd import Notifier, watchdog_loop
from controller.telemetry.lineproto import FieldValue
from controller.telemetry.service import TelemetryService
from controller.workbench.overrides import OverrideStore
from controller.workbench.schedules import ScheduleStore
from devices.lights import OFFLINE, Topics
from devices.mqtt import LinkDown, MqttLink, MqttSettings, Will

__all__ = ["Controller"]

log = logging.getLogger("cityctl")


class Controller:
    """Owns the runtime pieces of one edge controller.

    ``mqtt`` overrides the broker settings from the config (the demo and tests point the
    controller at their own broker); the last will and client id are always the controller's.
    ``cabinets`` moves intersections' cabinets to other addresses (id → host, port: simulated
    cabinets, a bench cabinet); ``signals=False`` leaves the intersections alone.

    The signal loops always run on the machine's monotonic clock, whatever ``clock`` is: the
    cabinets' heartbeat watchdogs count real seconds. ``clock`` gives them the local time of
    day for the strategy schedules.
    """

    def __init__(
        self,
        cfg: CityConfig,
        *,
        clock: Clock | None = None,
        mqtt: MqttSettings | None = None,
        cabinets: Mapping[str, tuple[str, int]] | None = None,
        signals: bool = True,
        api_tokens: Mapping[str, tuple[str, str]] | None = None,
        api_port: int | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        # The schedule that runs is the store's current version: edits made over the API
        # survive restarts, and an edited config file wins (a new version "config.yaml").
        wb = cfg.controller.state_dir / "workbench.sqlite"
        self.schedules = ScheduleStore(wb, self.clock)
        accepted = self.schedules.bootstrap(cfg)
        if accepted.created:
            log.info("schedule version %d: %s", accepted.version.version, accepted.version.comment)
        cfg = accepted.config
        self.cfg = cfg
        self.topics = Topics(cfg.mqtt.prefix)
        client_id = cfg.mqtt.client_id or cfg.controller.id
        will = Will(self.topics.controller_availability(cfg.controller.id), OFFLINE.encode())
        if mqtt is None:
            settings = cfg.mqtt.settings(client_id, will)
        else:
            settings = MqttSettings(
                host=mqtt.host,
                port=mqtt.port,
                client_id=client_id,
                username=mqtt.username,
                password=mqtt.password,
                tls=mqtt.tls,
                keepalive_s=mqtt.keepalive_s,
                will=will,
                reconnect_min_s=mqtt.reconnect_min_s,
                reconnect_max_s=mqtt.reconnect_max_s,
            )
        self.link = MqttLink(settings, name=f"controller {cfg.controller.id}")
        # Telemetry first: the loops record into it from their first step.
        self.telemetry: TelemetryService | None = None
        if cfg.telemetry.enabled:
            self.telemetry = TelemetryService(
                cfg.telemetry,
                state_dir=cfg.controller.state_dir,
                controller_id=cfg.controller.id,
                now=lambda: self.clock.now().timestamp(),
                health=self._health,
            )
        recorder = self.telemetry.recorder if self.telemetry is not None else None
        self.lighting = LightingService(
            cfg, self.link, self.clock, topics=self.topics, telemetry=recorder
        )
        self.link.on_connect = self.lighting.on_connect
        self.signals: SignalsService | None = None
        xs = cfg.intersections()
        if signals and xs:
            xs = with_cabinets(xs, cabinets or {})
            tz = cfg.location.tz
            self.signals = SignalsService(
                cfg.signals,
                xs,
                time.monotonic,
                mqtt=self.link,
                topics=self.topics,
                local_time=lambda: self.clock.now().astimezone(tz),
                telemetry=recorder,
                detector_interval_s=cfg.telemetry.intervals.detector_s,
            )
        self._tasks: list[asyncio.Task[None]] = []
        self._last_steps: dict[str, int] = {}
        # The workbench state (overrides made over the API, the audit log) and the API.
        self.schedules.on_apply = self._apply_schedule
        self.overrides = OverrideStore(wb, self.clock.now)
        # Incidents are people's cases: timed in real time, like the audit log.
        self.incidents, self._incident_store = open_incidents(
            cfg.controller.state_dir,
            Directory.from_config(cfg),
            now=lambda: dt.datetime.now(dt.UTC),
        )
        self.api: ApiServer | None = None
        self.api_context: ApiContext | None = None
        if cfg.api.enabled:
            self._build_api(wb, api_tokens or {}, api_port)

    def _build_api(self, wb: Path, extra: Mapping[str, tuple[str, str]], port: int | None) -> None:
        """The API, when someone can use it: tokens configured, given, or open reads."""
        tokens = TokenBook.from_config(self.cfg.api.tokens)
        for name, (role, secret) in extra.items():
            tokens.add(name, Role.parse(role), secret)
        if not len(tokens) and not self.cfg.api.open_reads:
            log.info("API not started: no api.tokens configured and api.open_reads is off")
            return
        self.api_context = ApiContext(
            cfg=lambda: self.cfg,
            clock=self.clock,
            lighting=self.lighting,
            tokens=tokens,
            # People's actions are logged in real time, whatever clock the controller runs on.
            audit=AuditLog(wb, lambda: dt.datetime.now(dt.UTC)),
            overrides=self.overrides,
            on_overrides_changed=self.apply_overrides,
            signals=self.signals,
            telemetry=self.telemetry,
            incidents=self.incidents,
            schedules=self.schedules,
            open_reads=self.cfg.api.open_reads,
        )
        self.api = ApiServer(
            create_app(self.api_context),
            self.cfg.api.host,
            self.cfg.api.port if port is None else port,
        )

    def _apply_schedule(self, cfg: CityConfig) -> None:
        """A new schedule version runs now (called inside its store transaction: raising
        keeps the version out of the store and the old schedule running)."""
        self.lighting.apply_config(cfg)
        self.cfg = cfg
        log.info("a new schedule version runs now")

    def apply_overrides(self) -> None:
        """The config's overrides and the stored ones (API), applied now."""
        stored = [r.override for r in self.overrides.active()]
        self.lighting.set_overrides([*self.cfg.lighting.overrides, *stored])

    async def start(self) -> None:
        """Start the link and the loops; returns at once."""
        s = self.link.settings
        log.info(
            "controller %s starting: %d groups, %d nodes, %d intersections, broker %s:%d",
            self.cfg.controller.id,
            len(self.cfg.lighting.groups),
            sum(1 for _ in self.cfg.nodes()),
            len(self.signals.runners) if self.signals else 0,
            s.host,
            s.port,
        )
        if self.telemetry is not None:
            await self.telemetry.start()
        self.apply_overrides()  # overrides made over the API survive restarts
        self._tasks = [
            asyncio.create_task(self.link.run(), name="mqtt-link"),
            asyncio.create_task(self.lighting.run(), name="lighting-loop"),
        ]
        if self.signals is not None:
            self._tasks.append(asyncio.create_task(self.signals.run(), name="signal-loops"))
        if self.telemetry is not None:
            self._tasks.append(
                asyncio.create_task(self._telemetry_status(), name="telemetry-status")
            )
        self._tasks.append(asyncio.create_task(self._incident_loop(), name="incidents"))
        if self.api is not None:
            # After the control loops: a cabinet's heartbeat watchdog counts from its start,
            # and uvicorn's first start-up (imports, sockets) must not delay the first write.
            await self.api.start()

    async def stop(self) -> None:
        """Say goodbye (retained offline) and stop every task."""
        await self.link.close(
            goodbye=(self.topics.controller_availability(self.cfg.controller.id), OFFLINE.encode())
        )
        if self.api is not None:
            await self.api.stop()
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self.telemetry is not None:
            await self.telemetry.stop()
        log.info("controller %s stopped", self.cfg.controller.id)

    def close(self) -> None:
        """Close the workbench files (after :meth:`stop`; a stopped controller can restart)."""
        self._incident_store.close()
        self.overrides.close()
        self.schedules.close()
        if self.api_context is not None:
            self.api_context.audit.close()

    async def _incident_loop(self) -> None:
        """Once a second: open, re-open and clear incidents from the alarms active now."""
        while True:
            await asyncio.sleep(1.0)
            try:
                changed = self.incidents.sync(runtime_faults(self))
            except IncidentError as e:  # the store could not write: try again next second
                log.error("incidents: %s", e)
                continue
            for inc in changed:
                log.info(
                    "incident %s: %s — %s %s: %s",
                    inc.id,
                    inc.state.value,
                    inc.device_kind,
                    inc.device_id,
                    inc.fault_kind or inc.hint,
                )

    async def _telemetry_status(self) -> None:
        """Publish the telemetry status (outbox, database, alarms) retained, now and then."""
        assert self.telemetry is not None
        topic = self.topics.controller_telemetry(self.cfg.controller.id)
        last = ""
        while True:
            await asyncio.sleep(self.cfg.telemetry.intervals.health_s)
            if not self.link.connected:
                continue
            text = json.dumps(self.telemetry.status(), sort_keys=True)
            if text != last:
                with contextlib.suppress(LinkDown):
                    await self.link.publish(topic, text.encode(), qos=1, retain=True)
                    last = text

    def _health(self) -> dict[str, FieldValue]:
        """The controller's own fields of the ``controller_health`` point (docs/telemetry.md)."""
        ls = self.link.stats
        dropped = self.lighting.drops.total
        fields: dict[str, FieldValue] = {
            "mqtt_up": self.link.connected,
            "mqtt_rx": ls.received,
            "mqtt_tx": ls.published,
            "mqtt_publish_failed": ls.publish_failed,
            "nodes_online": sum(
                1 for _, nid, _, _ in self.cfg.nodes() if self.lighting.core.node_online(nid)
            ),
            "rss_mb": round(_rss_mb(), 1),
        }
        if self.signals is not None:
            dropped += self.signals.drops.total
            fields["intersections"] = len(self.signals.runners)
            fields["cabinets_up"] = sum(1 for r in self.signals.runners.values() if r.link.up)
            fields["intersections_in_control"] = sum(
                1 for r in self.signals.runners.values() if r.sync == "control"
            )
        fields["dropped_payloads"] = dropped
        return fields

    def healthy(self) -> str | None:
        """None while the control loops run and make progress; else what is wrong.

        What the systemd watchdog is fed from: every loop task alive, and every intersection
        stepped since the last check (a signal loop that hangs stops the pings).
        """
        for t in self._tasks:
            if t.done():
                return f"task {t.get_name()} ended"
        if self.signals is not None:
            steps = {xid: r.stats.steps for xid, r in self.signals.runners.items()}
            stuck = [x for x, n in steps.items() if n == self._last_steps.get(x, -1)]
            self._last_steps = steps
            if stuck:
                return f"intersection(s) not stepping: {', '.join(sorted(stuck))}"
        return None

    async def run_forever(self) -> None:
        """Start and run until cancelled (Ctrl-C or SIGTERM); speaks systemd's notify protocol
        when started by it (``Type=notify``, ``WatchdogSec=``: see deploy/cityctl.service)."""
        await self.start()
        notifier = Notifier()
        notifier.notify("READY=1", f"STATUS=running: {self.cfg.controller.id}")
        if notifier.watchdog_s is not None:
            self._tasks.append(
                asyncio.create_task(watchdog_loop(notifier, self.healthy), name="systemd-watchdog")
            )
        try:
            # asyncio.wait, unlike gather, leaves the tasks running when we are cancelled, so
            # stop() can still say goodbye over the live link before it ends them.
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            notifier.notify("STOPPING=1")
            await self.stop()


def _rss_mb() -> float:
    """Resident memory of this process, MB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
