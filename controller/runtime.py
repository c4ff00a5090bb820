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

from controller.aio import cancel_and_wait, run_on_loop
from controller.api.app import ApiContext, create_app
from controller.api.audit import AuditLog
from controller.api.auth import Role, TokenBook
from controller.api.server import ApiServer
from controller.clock import Clock, SystemClock
from controller.config import CityConfig, ConfigError, ConfigIssue
from controller.incidents import Directory, IncidentError, open_incidents, runtime_faults
from controller.lighting.service import LightingService
from controller.reload import ReloadPlan, ReloadResult, plan_reload
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

    When the config declares ``districts``, the controller runs one of them: ``district``,
    else ``controller.district`` (``$CITYCTL_DISTRICT``); see :meth:`CityConfig.instance`
    and ``docs/scaling.md``. ``cfg`` then becomes the district's own config (its groups,
    nodes and intersections, its id ``<id>.<district>`` and state directory), and messages
    about the other districts' devices are counted as foreign instead of dropped.

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
        district: str | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        # Scale-out: from here on everything sees an ordinary config of this instance's
        # district; the whole city is kept only to know what belongs to the others.
        city = cfg
        cfg = city.instance(district)
        #: The district this instance runs (None: the whole config).
        self.district: str | None = (
            (district or city.controller.district) if city.districts else None
        )
        foreign_nodes, foreign_segments, foreign_xs = _foreign(city, cfg)
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
            cfg,
            self.link,
            self.clock,
            topics=self.topics,
            telemetry=recorder,
            foreign_nodes=foreign_nodes,
            foreign_segments=foreign_segments,
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
                foreign=foreign_xs,
            )
        self._tasks: list[asyncio.Task[None]] = []
        # The loop that owns the lighting core once started (see _apply_schedule).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_steps: dict[str, int] = {}
        # Config reloads (SIGHUP): the file that runs now, to tell what a new one changes.
        self._city = city
        self._reload_lock = asyncio.Lock()
        self.reloads_applied = 0
        self.reloads_refused = 0
        self.last_reload: ReloadResult | None = None
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
            reloads=self.reload_status,
            health=self._health,
        )
        self.api = ApiServer(
            create_app(self.api_context),
            self.cfg.api.host,
            self.cfg.api.port if port is None else port,
        )

    def _apply_schedule(self, cfg: CityConfig) -> None:
        """A new schedule version runs now (called inside its store transaction: raising
        keeps the version out of the store and the old schedule running).

        The store is written from the API's worker threads and from a reload's; the lighting
        core belongs to the event loop, so the change itself is made there, between steps.
        """

        def apply() -> None:
            self.lighting.apply_config(cfg)
            self.cfg = cfg

        run_on_loop(self._loop, apply)
        log.info("a new schedule version runs now")

    def apply_overrides(self) -> None:
        """The config's overrides and the stored ones (API), applied now (on the loop)."""
        stored = [r.override for r in self.overrides.active()]

        def apply() -> None:
            self.lighting.set_overrides([*self.cfg.lighting.overrides, *stored])

        run_on_loop(self._loop, apply)

    # -- config reload (SIGHUP) -------------------------------------------------------------
    def reload(self, config: Path | str) -> ReloadResult:
        """Read the config again (a file, or YAML text) and run it: all of it, or none of it.

        Validated as ``cityctl validate`` does; what may change live is applied at once (a
        changed schedule becomes a new version by ``config.yaml``), and a file with errors
        or with changes only a restart applies is refused, each problem logged at ERROR with
        its field, the running config left unchanged (``controller/reload.py``). Never
        raises. :meth:`reload_async` does the slow reading off the event loop.
        """
        try:
            plan = self._plan_reload(config)
        except ConfigError as exc:
            return self._reload_refused(_named(config), exc.issues)
        return self._apply_reload(plan)

    async def reload_async(self, config: Path | str) -> ReloadResult:
        """:meth:`reload`, reading and validating in a worker thread so that the signal loops
        do not stall for the second it takes; one reload at a time."""
        async with self._reload_lock:
            try:
                plan = await asyncio.to_thread(self._plan_reload, config)
            except ConfigError as exc:
                return self._reload_refused(_named(config), exc.issues)
            # In a thread too: the schedule store is shared with the API's worker threads,
            # and one of them may hold it while it waits for the loop to apply its change.
            return await asyncio.to_thread(self._apply_reload, plan)

    def reload_status(self) -> dict[str, object]:
        """Reloads applied and refused so far, and the last one (for the health answer)."""
        last = self.last_reload
        return {
            "applied": self.reloads_applied,
            "refused": self.reloads_refused,
            "last": last.as_json() if last is not None else None,
        }

    def _plan_reload(self, config: Path | str) -> ReloadPlan:
        try:
            running = self.schedules.current().document
            return plan_reload(self._city, config, district=self.district, running=running)
        except ConfigError:
            raise
        except Exception as exc:  # a bug must not take the controller down: refuse, loudly
            log.exception("config reload: unexpected error")
            raise ConfigError([ConfigIssue(_named(config), f"unexpected error: {exc}")]) from exc

    def _apply_reload(self, plan: ReloadPlan) -> ReloadResult:
        old_overrides = list(self.cfg.lighting.overrides)
        old_level = self._city.controller.log_level
        try:
            # The schedule first: the store applies it (LightingService.apply_config) inside
            # its transaction, so a schedule the lighting refuses leaves no version behind.
            accepted = self.schedules.reload(plan.own, "config.yaml", checked=plan.checked)
        except ConfigError as exc:
            return self._reload_refused(plan.source, exc.issues)
        except ValueError as exc:
            return self._reload_refused(plan.source, [ConfigIssue("lighting", str(exc))])
        self._city = plan.city
        self.apply_overrides()
        for w in plan.warnings:
            log.warning("config reload: %s", w)
        changes = []
        if accepted.created:
            v = accepted.version
            changes.append(f"schedule version {v.version} by {v.author}")
        if list(self.cfg.lighting.overrides) != old_overrides:
            n = len(self.cfg.lighting.overrides)
            changes.append(f"lighting.overrides: {len(old_overrides)} → {n}")
        level = plan.city.controller.log_level
        if level != old_level:
            changes.append(f"controller.log_level: {old_level} → {level}")
        result = ReloadResult(
            True,
            dt.datetime.now(dt.UTC),
            plan.source,
            changes=tuple(changes),
            schedule_version=accepted.version.version,
            log_level=level,
        )
        self.reloads_applied += 1
        self.last_reload = result
        log.info(
            "config reloaded from %s: %s (schedule version %d runs)",
            plan.source,
            "; ".join(changes) or "nothing that runs changed",
            accepted.version.version,
        )
        return result

    def _reload_refused(self, source: str, issues: list[ConfigIssue]) -> ReloadResult:
        errors = [i for i in issues if i.severity == "error"] or issues
        for issue in errors:
            log.error("config reload refused: %s", issue)
        log.error(
            "config reload of %s refused (%d problem(s)); the running config is unchanged",
            source,
            len(errors),
        )
        result = ReloadResult(False, dt.datetime.now(dt.UTC), source, problems=tuple(errors))
        self.reloads_refused += 1
        self.last_reload = result
        return result

    async def start(self) -> None:
        """Start the link and the loops; returns at once."""
        self._loop = asyncio.get_running_loop()
        s = self.link.settings
        log.info(
            "controller %s starting%s: %d groups, %d nodes, %d intersections, broker %s:%d",
            self.cfg.controller.id,
            f" (district {self.district})" if self.district else "",
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
            # From the core's own table: walking the config's nodes took 11 ms at 10,000.
            "nodes_online": self.lighting.core.online_total(),
            "rss_mb": round(_rss_mb(), 1),
            "nodes_following": self.lighting.core.following_count(),
            "light_states": self.lighting.stats.states,
            "light_states_retained": self.lighting.stats.states_retained,
            "group_commands": self.lighting.stats.group_commands,
            "node_retries": self.lighting.stats.node_retries,
            **self.lighting.fanout.summary().as_fields(),
        }
        if self.signals is not None:
            dropped += self.signals.drops.total
            fields["intersections"] = len(self.signals.runners)
            fields["cabinets_up"] = sum(1 for r in self.signals.runners.values() if r.link.up)
            fields["intersections_in_control"] = sum(
                1 for r in self.signals.runners.values() if r.sync == "control"
            )
        fields["dropped_payloads"] = dropped
        if self.district is not None:
            foreign = self.lighting.stats.foreign
            if self.signals is not None:
                foreign += self.signals.foreign
            fields["foreign_messages"] = foreign
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


def _foreign(
    city: CityConfig, own: CityConfig
) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """Nodes, traffic segments and intersections of the city that ``own`` does not run."""
    if own is city:
        return frozenset(), frozenset(), frozenset()
    mine = {n for _, n, _, _ in own.nodes()}
    nodes = frozenset(n for _, n, _, _ in city.nodes() if n not in mine)
    own_segments = {g.traffic_segment for g in own.lighting.groups}
    segments = frozenset(
        g.traffic_segment
        for g in city.lighting.groups
        if g.traffic_segment is not None and g.traffic_segment not in own_segments
    )
    own_xs = {x.id for x in own.signals.intersections}
    xs = frozenset(x.id for x in city.signals.intersections if x.id not in own_xs)
    return nodes, segments, xs


def _named(config: Path | str) -> str:
    """How a reloaded config is named in the log: its path, or "config text"."""
    return str(config) if isinstance(config, Path) else "config text"


def _rss_mb() -> float:
    """Resident memory of this process, MB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
