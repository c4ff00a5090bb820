"""Previews of draft schedules: a night and a year of one group, as data and as SVG.

A preview runs a *draft* — a whole schedule document as ``GET /api/v1/schedules`` returns it,
and/or one program (config.yaml shape) that the group runs every night instead of its
assignment — through the same validation as a save (:func:`validate_document`) and the pure
preview code of :mod:`schedules.preview`, and applies nothing: no version is stored, the
lighting keeps running the current schedule. Without a draft, the current schedule is shown.

Previews are reads (the viewer role), sent as ``POST`` because a draft is a request body.
Nothing is cached across requests; a year of one group takes well under a second.

(No ``from __future__ import annotations``: FastAPI reads the routes' annotations, which name
aliases local to :func:`preview_router`.)
"""

import datetime as dt
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from controller.config import CityConfig, ConfigError
from controller.schedule_preview import _group_watts
from controller.workbench.schedules import document_of, validate_document
from schedules.energy import LampPowerModel
from schedules.evaluate import GroupSchedule, night_bounds, night_of
from schedules.preview import (
    NightSummary,
    YearSummary,
    _summarise_night,
    night_table,
    plot_night,
    plot_year,
    sample_levels,
    year_summary,
)
from schedules.sun import SunEvent

if TYPE_CHECKING:
    from controller.api.app import ApiContext

__all__ = ["NightPreviewIn", "YearPreviewIn", "preview_router"]

SVG = "image/svg+xml"


class _DraftIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: str = Field(min_length=1, max_length=64, description="The lighting group previewed.")
    document: dict[str, Any] | None = Field(
        default=None,
        description="A whole draft schedule document (as GET /api/v1/schedules returns it);"
        " default: the current one.",
    )
    program: dict[str, Any] | None = Field(
        default=None,
        description="One draft program (config.yaml shape) the group runs every night instead"
        " of its assignment; a program of the same name in the document is replaced.",
    )


class NightPreviewIn(_DraftIn):
    """A night of a group under a draft schedule."""

    night: dt.date | None = Field(
        default=None,
        ge=dt.date(1971, 1, 1),
        le=dt.date(2200, 12, 31),
        description="The night (12:00 on this date to 12:00 the next); default: tonight in the"
        " site's zone.",
    )
    sample_s: int = Field(default=300, ge=60, le=3600, description="Seconds between samples.")


class YearPreviewIn(_DraftIn):
    """The nights of a year of a group under a draft schedule."""

    year: int | None = Field(
        default=None, ge=1971, le=2200, description="Default: this year in the site's zone."
    )


@dataclass(frozen=True)
class _Draft:
    """The group's schedule under the draft, its config, and whether anything was drafted."""

    cfg: CityConfig
    schedule: GroupSchedule
    lamp: LampPowerModel
    watts: float
    draft: bool


def _loc(path: str) -> list[str | int]:
    """``programs[2].steps[0].level`` → ``["programs", 2, "steps", 0, "level"]``."""
    out: list[str | int] = []
    for part in path.replace("]", "").replace("[", ".").split("."):
        if part:
            out.append(int(part) if part.isdigit() else part)
    return out


def _unprocessable(loc: list[str | int], msg: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": loc, "msg": msg, "type": "value_error"}])


def _draft(cfg: CityConfig, body: _DraftIn) -> _Draft:
    """Validate the draft against ``cfg`` and build the group's schedule; applies nothing."""
    if body.group not in {g.id for g in cfg.lighting.groups}:
        known = ", ".join(g.id for g in cfg.lighting.groups)
        raise _unprocessable(["body", "group"], f"unknown group {body.group!r} (known: {known})")
    drafted = body.document is not None or body.program is not None
    if not drafted:  # the current schedule, valid already
        return _group_draft(cfg, body.group, drafted=False)
    data: dict[str, Any] = (
        dict(body.document) if body.document is not None else document_of(cfg).to_data()
    )
    prefix = ""  # where the draft program sits in the document, for errors
    programs, assignments = data.get("programs"), data.get("assignments")
    # A document too broken to put the program in is reported as it is.
    if body.program is not None and isinstance(programs, list):
        name = body.program.get("name")
        index = next(
            (
                i
                for i, p in enumerate(programs)
                if isinstance(p, dict) and name is not None and p.get("name") == name
            ),
            len(programs),
        )
        data["programs"] = [*programs[:index], body.program, *programs[index + 1 :]]
        prefix = f"programs[{index}]"
        if isinstance(name, str) and isinstance(assignments, dict):
            data["assignments"] = {**assignments, body.group: {"program": name}}
    try:
        checked = validate_document(cfg, data)
    except ConfigError as e:
        detail = []
        for issue in e.issues:
            if issue.severity != "error":
                continue
            path = issue.path
            if prefix and (path == prefix or path.startswith(prefix + ".")):
                loc = ["body", "program", *_loc(path[len(prefix) :])]
            elif body.program is not None and f"{path}.".startswith(f"assignments.{body.group}."):
                loc = ["body", "program"]
            elif body.document is not None:
                loc = ["body", "document", *_loc(path)]
            else:
                loc = ["body", "program"]
            detail.append({"loc": loc, "msg": issue.message, "type": "value_error"})
        raise HTTPException(
            422, detail=detail or [{"loc": ["body"], "msg": str(e), "type": "value_error"}]
        ) from None
    return _group_draft(checked.config, body.group, drafted=True)


def _group_draft(cfg: CityConfig, group: str, *, drafted: bool) -> _Draft:
    # The group's lamps as `cityctl schedule preview` counts them.
    n, watts = _group_watts(cfg, group)
    lamp = LampPowerModel(rated_w=watts / n if n else cfg.group(group).lamp_w)
    return _Draft(cfg, cfg.group_schedule(group), lamp, watts, drafted)


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _event(e: SunEvent) -> str | None:
    return _iso(e.at)


def _saving(energy: float, baseline: float) -> float:
    return round(100.0 * (baseline - energy) / baseline, 2) if baseline > 0 else 0.0


def _night_json(n: NightSummary) -> dict[str, Any]:
    return {
        "night": n.night.isoformat(),
        "program": n.program,
        "on_at": _iso(n.on_at),
        "off_at": _iso(n.off_at),
        "burning_hours": round(n.burning_h, 3),
        "energy_wh": round(n.energy_wh, 1),
        "full_on_energy_wh": round(n.baseline_wh, 1),
        "dark_hours": round(n.dark_h, 3),
        "sunset": _event(n.sunset),
        "sunrise": _event(n.sunrise),
    }


def _months(summary: YearSummary) -> list[dict[str, Any]]:
    by_month: dict[int, list[NightSummary]] = {}
    for n in summary.nights:
        by_month.setdefault(n.night.month, []).append(n)
    out = []
    for month, nights in sorted(by_month.items()):
        energy = sum(n.energy_wh for n in nights)
        base = sum(n.baseline_wh for n in nights)
        out.append(
            {
                "month": month,
                "nights": len(nights),
                "burning_hours": round(sum(n.burning_h for n in nights), 2),
                "energy_kwh": round(energy / 1000.0, 3),
                "full_on_energy_kwh": round(base / 1000.0, 3),
                "saving_pct": _saving(energy, base),
            }
        )
    return out


def _svg(draw: Callable[[io.BytesIO], object]) -> Response:
    buf = io.BytesIO()
    draw(buf)
    return Response(buf.getvalue(), media_type=SVG)


def preview_router(ctx: "ApiContext", reader_dependency: Callable[..., Any]) -> APIRouter:
    """The preview routes over ``ctx``; ``reader_dependency`` admits the viewer role and up.

    Mount with ``app.include_router(preview_router(ctx, reader))`` inside ``create_app``.
    """
    router = APIRouter(prefix="/api/v1/previews", tags=["previews"])
    Reader = Annotated[Any, Depends(reader_dependency)]
    Format = Annotated[str, Query(alias="format", pattern="^(json|svg)$")]

    def tonight(cfg: CityConfig) -> dt.date:
        return night_of(ctx.clock.now(), cfg.location.tz)

    def night_data(body: NightPreviewIn) -> tuple[_Draft, dt.date, NightSummary]:
        cfg = ctx.cfg()
        d = _draft(cfg, body)
        night = body.night or tonight(cfg)
        # One group's night, as year_summary counts it (lamps × the group's lamp model).
        lamps = d.watts / d.lamp.rated_w if d.lamp.rated_w > 0 else 0.0
        return d, night, _summarise_night(d.schedule, night, d.lamp, lamps)

    @router.post("/night", response_model=None)
    def preview_night(
        body: NightPreviewIn, _: Reader, request: Request, fmt: Format = "json"
    ) -> dict[str, Any] | Response:
        """A night of a group under a draft schedule (nothing is applied): its transitions,
        the level every ``sample_s`` seconds from 12:00 to 12:00, energy and burning hours
        against full light from sunset to sunrise. ``?format=svg``: the chart."""
        request.state.audit = {"preview": "night", "group": body.group}
        d, night, summary = night_data(body)
        if fmt == "svg":
            return _svg(lambda buf: plot_night(d.schedule, night, buf, fmt="svg"))
        start, end = night_bounds(night, d.schedule.tz)
        return {
            "group": body.group,
            "night": night.isoformat(),
            "draft": d.draft,
            "program_used": summary.program,
            "timezone": d.schedule.location.timezone,
            "sunset": _event(summary.sunset),
            "sunrise": _event(summary.sunrise),
            "transitions": [
                {
                    "at": tr.at.isoformat(),
                    "level": tr.level,
                    "ramp_s": tr.ramp_s,
                    "source": tr.source,
                    "kind": tr.kind,
                }
                for tr in night_table(d.schedule, night)
            ],
            "samples": [
                {"t": t.isoformat(), "level": round(level, 3)}
                for t, level in sample_levels(d.schedule, start, end, body.sample_s)
            ],
            "lamps_rated_w": d.watts,
            "energy_wh": round(summary.energy_wh, 1),
            "burning_hours": round(summary.burning_h, 3),
            "full_on_energy_wh": round(summary.baseline_wh, 1),
            "saving_pct": _saving(summary.energy_wh, summary.baseline_wh),
            "on_at": _iso(summary.on_at),
            "off_at": _iso(summary.off_at),
        }

    @router.post("/night.svg", response_class=Response, responses={200: {"content": {SVG: {}}}})
    def preview_night_svg(body: NightPreviewIn, _: Reader, request: Request) -> Response:
        """The chart of a night under a draft schedule (SVG)."""
        request.state.audit = {"preview": "night.svg", "group": body.group}
        d, night, _summary = night_data(body)
        return _svg(lambda buf: plot_night(d.schedule, night, buf, fmt="svg"))

    def year_data(body: YearPreviewIn) -> tuple[_Draft, YearSummary]:
        cfg = ctx.cfg()
        d = _draft(cfg, body)
        year = body.year or ctx.clock.now().astimezone(cfg.location.tz).year
        return d, year_summary(d.schedule, year, rated_w_total=d.watts, lamp=d.lamp)

    @router.post("/year", response_model=None)
    def preview_year(
        body: YearPreviewIn, _: Reader, request: Request, fmt: Format = "json"
    ) -> dict[str, Any] | Response:
        """The nights starting in a year under a draft schedule (nothing is applied): burning
        hours and energy against full light from sunset to sunrise, per month and per night.
        ``?format=svg``: the chart."""
        request.state.audit = {"preview": "year", "group": body.group}
        d, summary = year_data(body)
        if fmt == "svg":
            return _svg(lambda buf: plot_year(summary, buf, fmt="svg"))
        return {
            "group": body.group,
            "year": summary.year,
            "draft": d.draft,
            "timezone": summary.timezone,
            "lamps_rated_w": summary.rated_w_total,
            "programs_used": sorted({n.program for n in summary.nights}),
            "burning_hours": round(summary.burning_hours, 2),
            "energy_kwh": round(summary.energy_kwh, 3),
            "full_on_energy_kwh": round(summary.baseline_kwh, 3),
            "saving_pct": round(summary.saving_pct, 2),
            "months": _months(summary),
            "nights": [_night_json(n) for n in summary.nights],
        }

    @router.post("/year.svg", response_class=Response, responses={200: {"content": {SVG: {}}}})
    def preview_year_svg(body: YearPreviewIn, _: Reader, request: Request) -> Response:
        """The chart of a year under a draft schedule (SVG)."""
        request.state.audit = {"preview": "year.svg", "group": body.group}
        _d, summary = year_data(body)
        return _svg(lambda buf: plot_year(summary, buf, fmt="svg"))

    return router
