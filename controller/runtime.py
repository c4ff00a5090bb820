"""The controller process: one MQTT link, the lighting loop, the signal loops, and an orderly
start and stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from controller.aio import cancel_and_wait
from controller.clock import Clock, SystemClock
from controller.config import CityConfig
from controller.lighting.service import LightingService
from controller.signals.service import SignalsService, with_cabinets
from devices.lights import OFFLINE, Topics
from devices.mqtt import MqttLink, MqttSettings, Will

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
    ) -> None:
        self.cfg = cfg
        self.clock: Clock = clock or SystemClock()
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
        self.lighting = LightingService(cfg, self.link, self.clock, topics=self.topics)
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
            )
        self._tasks: list[asyncio.Task[None]] = []

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
        self._tasks = [
            asyncio.create_task(self.link.run(), name="mqtt-link"),
            asyncio.create_task(self.lighting.run(), name="lighting-loop"),
        ]
        if self.signals is not None:
            self._tasks.append(asyncio.create_task(self.signals.run(), name="signal-loops"))

    async def stop(self) -> None:
        """Say goodbye (retained offline) and stop every task."""
        await self.link.close(
            goodbye=(self.topics.controller_availability(self.cfg.controller.id), OFFLINE.encode())
        )
        await cancel_and_wait(self._tasks)
        self._tasks = []
        log.info("controller %s stopped", self.cfg.controller.id)

    async def run_forever(self) -> None:
        """Start and run until cancelled (Ctrl-C or SIGTERM)."""
        await self.start()
        try:
            # asyncio.wait, unlike gather, leaves the tasks running when we are cancelled, so
            # stop() can still say goodbye over the live link before it ends them.
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            await self.stop()
