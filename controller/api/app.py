"""The API: reads of the live state, overrides, the audit log (schedules and incidents join it).

Every route is under ``/api/v1``; the OpenAPI schema is at ``/openapi.json``. Reads need a token
of any role unless ``api.open_reads``; writes need *engineer* or above and are written to the
audit log, refused ones included. Wrong input is answered 422 with the field (``loc``) and the
reason, in FastAPI's usual shape, and changes nothing.

(No ``from __future__ import annotations`` here: FastAPI reads the dependency annotations of the
routes at definition time, and they name aliases local to :func:`create_app`.)
"""

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as Path_
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from controller.api.audit import AuditLog
from controller.api.auth import ANONYMOUS, Principal, Role, TokenBook
from controller.api.previews import preview_router
from controller.api.static_files import mount_page
from controller.clock import Clock
from controller.config import CityConfig, ConfigError
from controller.incidents import (
    BadReport,
    IncidentEngine,
    IncidentError,
    UnknownIncident,
)
from controller.lighting.core import GroupStatus
from controller.lighting.service import LightingService
from controller.signals.service import SignalsService
from controller.telemetry.service import TelemetryService
from controller.workbench.overrides import OverrideRecord, OverrideStore, UnknownOverride
from controller.workbench.schedules import (
    ScheduleInUse,
    ScheduleStore,
    UnknownSchedule,
    UnknownVersion,
    Version,
    VersionConflict,
)
from schedules.evaluate import transitions

__all__ = ["ApiContext", "create_app"]

WRITES = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass
class ApiContext:
    """What the API reads and changes; the runtime builds it (tests build their own)."""

    cfg: Callable[[], CityConfig]
    clock: Clock
    lighting: LightingService
    tokens: TokenBook
    audit: AuditLog
    overrides: OverrideStore
    on_overrides_changed: Callable[[], None]
    signals: SignalsService | None = None
    telemetry: TelemetryService | None = None
    incidents: IncidentEngine | None = None
    schedules: ScheduleStore | None = None
    open_reads: bool = False
    started_mono: float = field(default_factory=time.monotonic)
    #: Config reloads (SIGHUP) so far and the last one's outcome, for the health answer.
    reloads: Callable[[], dict[str, Any]] | None = None
    #: The controller's health fields (MQTT counters, nodes online and following, group-command
    #: fan-out latency, memory), as recorded in ``controller_health``; for the health answer.
    health: Callable[[], dict[str, Any]] | None = None


def field_error(loc: list[str | int], msg: str, status: int = 422) -> HTTPException:
    """An error in FastAPI's validation shape: ``{"detail": [{"loc", "msg", "type"}]}``."""
    return HTTPException(status, detail=[{"loc": loc, "msg": msg, "type": "value_error"}])


class NoteIn(BaseModel):
    """A person's note on an incident."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(default="", max_length=2000)


class ResolveIn(BaseModel):
    """How an incident was resolved; ``force`` closes it while the device still reports it."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(min_length=1, max_length=2000)
    force: bool = False


class ReportIn(BaseModel):
    """A problem seen in the street: at a place (``lat``/``lon``) or on a device, with a note."""

    model_config = ConfigDict(extra="forbid")

    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    device: str | None = Field(default=None, min_length=1, max_length=100)
    kind: str | None = Field(default=None, max_length=40)
    note: str = Field(min_length=1, max_length=2000)


class DocumentIn(BaseModel):
    """A whole schedule document (programs, calendars, assignments) on top of ``base_version``."""

    model_config = ConfigDict(extra="forbid")

    base_version: int = Field(ge=1, le=2**62)
    document: dict[str, Any]
    comment: str = Field(default="", max_length=500)


class ItemIn(BaseModel):
    """One program or calendar (as in config.yaml) on top of ``base_version``."""

    model_config = ConfigDict(extra="forbid")

    base_version: int = Field(ge=1, le=2**62)
    item: dict[str, Any]
    comment: str = Field(default="", max_length=500)


class AssignIn(BaseModel):
    """Give a group a program or a calendar (exactly one)."""

    model_config = ConfigDict(extra="forbid")

    base_version: int = Field(ge=1, le=2**62)
    program: str | None = Field(default=None, min_length=1, max_length=64)
    calendar: str | None = Field(default=None, min_length=1, max_length=64)
    comment: str = Field(default="", max_length=500)


class RollbackIn(BaseModel):
    """Make version ``to_version``'s document current again (as a new version)."""

    model_config = ConfigDict(extra="forbid")

    to_version: int = Field(ge=1, le=2**62)
    base_version: int = Field(ge=1, le=2**62)
    comment: str = Field(default="", max_length=500)


def _version_json(v: Version, *, document: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": v.version,
        "created_at": v.created_at.isoformat(),
        "author": v.author,
        "comment": v.comment,
        "source": v.source,
        "hash": v.hash,
    }
    if document:
        out["document"] = v.document.to_data()
    return out


def _path_loc(path: str) -> list[str | int]:
    """``programs[2].steps[0].level`` → ``["programs", 2, "steps", 0, "level"]``."""
    out: list[str | int] = []
    for part in path.replace("]", "").replace("[", ".").split("."):
        if part:
            out.append(int(part) if part.isdigit() else part)
    return out


class OverrideIn(BaseModel):
    """A new override: ``level`` for ``groups`` from ``start`` (default now) until ``until``."""

    model_config = ConfigDict(extra="forbid")

    groups: list[str] = Field(min_length=1, max_length=1000)
    level: float = Field(ge=0, le=100)
    start: dt.datetime | None = None
    until: dt.datetime | None = None
    reason: str = Field(min_length=1, max_length=500)


def _override_json(r: OverrideRecord) -> dict[str, Any]:
    o = r.override
    return {
        "id": o.id,
        "groups": o.groups,
        "level": o.level,
        "start": o.start.isoformat(),
        "until": o.until.isoformat() if o.until else None,
        "reason": o.reason,
        "created_at": r.created_at.isoformat(),
        "created_by": r.created_by,
        "cleared_at": r.cleared_at.isoformat() if r.cleared_at else None,
        "cleared_by": r.cleared_by,
    }


def create_app(ctx: ApiContext) -> FastAPI:
    """The FastAPI application over ``ctx``."""
    app = FastAPI(
        title="cityctl",
        summary="Street lights and traffic signals of one edge controller",
        version="1",
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; the schema itself is served
        redoc_url=None,
    )
    bearer = HTTPBearer(auto_error=False, description="API token from config api.tokens")

    def principal(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal | None:
        if creds is None:
            return None
        who = ctx.tokens.authenticate(creds.credentials)
        if who is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
        request.state.principal = who
        return who

    def reader(who: Annotated[Principal | None, Depends(principal)]) -> Principal:
        if who is None:
            if ctx.open_reads:
                return ANONYMOUS
            raise HTTPException(
                401, "a token is needed (Authorization: Bearer …)", {"WWW-Authenticate": "Bearer"}
            )
        return who

    def role(needed: Role) -> Callable[[Principal | None], Principal]:
        def check(who: Annotated[Principal | None, Depends(principal)]) -> Principal:
            if who is None:
                raise HTTPException(
                    401,
                    "writes need a token (Authorization: Bearer …)",
                    {"WWW-Authenticate": "Bearer"},
                )
            if who.role < needed:
                raise HTTPException(
                    403,
                    f"{who.name} is a {who.role.name.lower()}; this needs {needed.name.lower()}",
                )
            return who

        return check

    Reader = Annotated[Principal, Depends(reader)]
    Engineer = Annotated[Principal, Depends(role(Role.ENGINEER))]
    Admin = Annotated[Principal, Depends(role(Role.ADMIN))]

    @app.middleware("http")
    async def audit_writes(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        path = request.url.path
        # Previews are reads sent as POST (the draft is the body): not changes to audit.
        if request.method in WRITES and path.startswith("/api/") and "/previews/" not in path:
            who: Principal | None = getattr(request.state, "principal", None)
            ctx.audit.write(
                who=who.name if who else "anonymous",
                role=who.role.name.lower() if who else "-",
                method=request.method,
                path=request.url.path,
                status=response.status_code,
                summary=getattr(request.state, "audit", ""),
            )
        return response

    # -- reads ------------------------------------------------------------------------------
    @app.get("/api/v1/health", tags=["operations"])
    def health() -> dict[str, Any]:
        """Liveness, no token needed: is the controller's loop answering. ``config_reload``
        counts the config reloads (SIGHUP) applied and refused, and when and how the last one
        went (the problems themselves are in the log)."""
        out: dict[str, Any] = {
            "status": "ok",
            "uptime_s": round(time.monotonic() - ctx.started_mono, 1),
        }
        if ctx.reloads is not None:
            out["config_reload"] = ctx.reloads()
        if ctx.health is not None:
            out["controller"] = ctx.health()
        return out

    @app.get("/api/v1/site", tags=["read"])
    def site(_: Reader) -> dict[str, Any]:
        """The site and the controller."""
        cfg = ctx.cfg()
        return {
            "name": cfg.site.name,
            "latitude": cfg.site.latitude,
            "longitude": cfg.site.longitude,
            "timezone": cfg.site.timezone,
            "controller": cfg.controller.id,
            "now": ctx.clock.now().astimezone(cfg.location.tz).isoformat(),
            "groups": len(cfg.lighting.groups),
            "nodes": sum(1 for _ in cfg.nodes()),
            "intersections": len(cfg.signals.intersections),
        }

    def group_json(gid: str, statuses: dict[str, GroupStatus] | None = None) -> dict[str, Any]:
        cfg = ctx.cfg()
        g = cfg.group(gid)
        if statuses is None:
            statuses = {s.group: s for s in ctx.lighting.core.status()}
        st = statuses[gid]
        return {
            "id": g.id,
            "name": g.name,
            "road": g.road,
            "lighting_class": g.lighting_class.value,
            "program": g.program,
            "calendar": g.calendar,
            "location": g.location.model_dump() if g.location else None,
            "level": st.level,
            "source": st.source,
            "detail": st.detail,
            "class_now": st.lighting_class,
            "nodes": st.nodes_total,
            "nodes_following": st.nodes_converged,
            "nodes_offline": st.nodes_offline,
            "energy_wh": round(st.energy_wh, 1),
        }

    @app.get("/api/v1/groups", tags=["read"])
    def groups(_: Reader) -> list[dict[str, Any]]:
        """Every lighting group with what it shows now and why."""
        # One pass over the nodes for all groups, not one per group.
        statuses = {s.group: s for s in ctx.lighting.core.status()}
        return [group_json(g.id, statuses) for g in ctx.cfg().lighting.groups]

    def known_group(gid: str) -> None:
        if gid not in {g.id for g in ctx.cfg().lighting.groups}:
            raise HTTPException(404, f"no group {gid!r}")

    @app.get("/api/v1/groups/{group_id}", tags=["read"])
    def group(group_id: str, _: Reader) -> dict[str, Any]:
        """One group and its nodes."""
        known_group(group_id)
        out = group_json(group_id)
        out["node_list"] = [n for n in node_list() if n["group"] == group_id]
        return out

    def node_list() -> list[dict[str, Any]]:
        cfg = ctx.cfg()
        core = ctx.lighting.core
        specs = {n.id: n for n in cfg.lighting.nodes}
        out = []
        for g, nid, lamp_w, _min in cfg.nodes():
            state = core.node_state(nid)
            spec = specs.get(nid)
            loc = spec.location if spec and spec.location else g.location
            active = core.faults.active.get(nid, {})
            out.append(
                {
                    "id": nid,
                    "group": g.id,
                    "online": core.node_online(nid),
                    "level": state.level if state else None,
                    "target": state.target if state else None,
                    "power_w": state.power_w if state else None,
                    "energy_wh": state.energy_wh if state else None,
                    "burn_h": state.burn_h if state else None,
                    "mode": state.mode.value if state else None,
                    "reported_at": state.ts.isoformat() if state else None,
                    "lamp_w": lamp_w,
                    "alarms": sorted(str(k) for k in active),
                    "location": loc.model_dump() if loc else None,
                }
            )
        return out

    @app.get("/api/v1/nodes", tags=["read"])
    def nodes(
        _: Reader,
        group: Annotated[str | None, Query(max_length=64)] = None,
        alarm: Annotated[bool | None, Query(description="only nodes with (without) alarms")] = None,
    ) -> list[dict[str, Any]]:
        """Every light node with its live state."""
        out = node_list()
        if group is not None:
            known_group(group)
            out = [n for n in out if n["group"] == group]
        if alarm is not None:
            out = [n for n in out if bool(n["alarms"]) == alarm]
        return out

    @app.get("/api/v1/nodes/{node_id}", tags=["read"])
    def node(node_id: str, _: Reader) -> dict[str, Any]:
        """One node."""
        for n in node_list():
            if n["id"] == node_id:
                return n
        raise HTTPException(404, f"no node {node_id!r}")

    def runners() -> dict[str, Any]:
        return ctx.signals.runners if ctx.signals is not None else {}

    @app.get("/api/v1/intersections", tags=["read"])
    def intersections(_: Reader) -> list[dict[str, Any]]:
        """Every intersection: who drives it, stage, signals, queues, detector health, alarms."""
        locs = {x.id: x.location for x in ctx.cfg().signals.intersections}
        return [{**r.status(), "location": locs.get(xid)} for xid, r in runners().items()]

    @app.get("/api/v1/intersections/{intersection_id}", tags=["read"])
    def intersection(intersection_id: str, _: Reader) -> dict[str, Any]:
        """One intersection."""
        r = runners().get(intersection_id)
        if r is None:
            raise HTTPException(404, f"no intersection {intersection_id!r}")
        locs = {x.id: x.location for x in ctx.cfg().signals.intersections}
        return {**r.status(), "location": locs.get(intersection_id)}

    @app.get("/api/v1/alarms", tags=["read"])
    def alarms(_: Reader) -> list[dict[str, Any]]:
        """Every alarm active now: nodes, intersections, telemetry."""
        out: list[dict[str, Any]] = []
        core = ctx.lighting.core
        for nid, kinds in sorted(core.faults.active.items()):
            for kind, entry in kinds.items():
                out.append(
                    {
                        "device_kind": "node",
                        "device": nid,
                        "group": core.node_group(nid),
                        "kind": str(kind),
                        "detail": entry.model_dump(mode="json"),
                    }
                )
        for xid, r in runners().items():
            for key, detail in r.alarms.items():
                out.append(
                    {"device_kind": "intersection", "device": xid, "kind": key, "detail": detail}
                )
        if ctx.telemetry is not None:
            for key, text in ctx.telemetry.alarms.items():
                out.append(
                    {
                        "device_kind": "controller",
                        "device": "telemetry",
                        "kind": key,
                        "detail": text,
                    }
                )
        return out

    @app.get("/api/v1/energy", tags=["read"])
    def energy(_: Reader) -> dict[str, Any]:
        """Energy and power per group (from the nodes' meters)."""
        totals = ctx.lighting.core.totals()
        rows = [
            {"group": t.group, "energy_wh": round(t.energy_wh, 1), "power_w": round(t.power_w, 1)}
            for t in totals
        ]
        return {
            "groups": rows,
            "energy_wh": round(sum(t.energy_wh for t in totals), 1),
            "power_w": round(sum(t.power_w for t in totals), 1),
        }

    @app.get("/api/v1/transitions", tags=["read"])
    def upcoming(
        _: Reader, hours: Annotated[float, Query(gt=0, le=168)] = 24.0
    ) -> list[dict[str, Any]]:
        """The current level and the transitions of the next ``hours``, per group."""
        cfg = ctx.cfg()
        now = ctx.clock.now()
        end = now + dt.timedelta(hours=hours)
        out = []
        for g in cfg.lighting.groups:
            gs = ctx.lighting.core.schedule(g.id)
            night = (now - dt.timedelta(days=1)).astimezone(gs.tz).date()
            items = []
            day = night
            while day <= end.astimezone(gs.tz).date():
                for tr in transitions(gs, day):
                    if now < tr.at <= end:
                        items.append(
                            {
                                "at": tr.at.isoformat(),
                                "level": tr.level,
                                "ramp_s": tr.ramp_s,
                                "source": tr.source,
                            }
                        )
                day += dt.timedelta(days=1)
            out.append({"group": g.id, "transitions": items})
        return out

    # -- overrides --------------------------------------------------------------------------
    @app.get("/api/v1/overrides", tags=["overrides"])
    def list_overrides(_: Reader) -> list[dict[str, Any]]:
        """The overrides made over the API that are active now."""
        return [_override_json(r) for r in ctx.overrides.active()]

    @app.post("/api/v1/overrides", status_code=201, tags=["overrides"])
    def add_override(body: OverrideIn, who: Engineer, request: Request) -> dict[str, Any]:
        """Hold ``groups`` at ``level`` from ``start`` until ``until`` (or until cleared)."""
        known = {g.id for g in ctx.cfg().lighting.groups}
        for i, gid in enumerate(body.groups):
            if gid not in known:
                raise field_error(["body", "groups", i], f"unknown group {gid!r}")
        tz = ctx.cfg().location.tz
        start = (
            body.start.replace(tzinfo=tz)
            if body.start and body.start.tzinfo is None
            else body.start
        )
        until = (
            body.until.replace(tzinfo=tz)
            if body.until and body.until.tzinfo is None
            else body.until
        )
        now = ctx.clock.now()
        if until is not None and until <= (start or now):
            raise field_error(["body", "until"], "until must be after start (and in the future)")
        rec = ctx.overrides.add(
            groups=body.groups,
            level=body.level,
            start=start,
            until=until,
            reason=body.reason,
            author=who.name,
        )
        ctx.on_overrides_changed()
        request.state.audit = {
            "override": rec.override.id,
            "groups": body.groups,
            "level": body.level,
        }
        return _override_json(rec)

    @app.delete("/api/v1/overrides/{override_id}", tags=["overrides"])
    def clear_override(override_id: str, who: Engineer, request: Request) -> dict[str, Any]:
        """Clear an override: its groups resume their schedule at once."""
        try:
            rec = ctx.overrides.clear(override_id, who.name)
        except UnknownOverride:
            raise HTTPException(404, f"no active override {override_id!r}") from None
        ctx.on_overrides_changed()
        request.state.audit = {"cleared": override_id}
        return _override_json(rec)

    # -- incidents --------------------------------------------------------------------------
    def engine() -> IncidentEngine:
        if ctx.incidents is None:
            raise HTTPException(404, "incidents are not kept by this controller")
        return ctx.incidents

    def conflict(e: IncidentError) -> HTTPException:
        if isinstance(e, UnknownIncident):
            return HTTPException(404, str(e).strip("'\""))
        return HTTPException(409, str(e))

    @app.get("/api/v1/incidents", tags=["incidents"])
    def list_incidents(
        _: Reader,
        open_only: Annotated[bool, Query(alias="open")] = False,
        device: Annotated[str | None, Query(max_length=100)] = None,
    ) -> list[dict[str, Any]]:
        """Incidents, newest first: faults the devices report and problems people report."""
        items = engine().incidents(open_only=open_only, device_id=device)
        return [i.as_json() for i in sorted(items, key=lambda i: i.opened_at, reverse=True)]

    @app.get("/api/v1/incidents/stats", tags=["incidents"])
    def incident_stats(
        _: Reader,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """Opened, closed, resolution rate, time to resolve (median, p90), time to acknowledge."""
        now = dt.datetime.now(dt.UTC)
        tz = ctx.cfg().location.tz
        a = since or now - dt.timedelta(days=30)
        b = until or now
        a = a.replace(tzinfo=tz) if a.tzinfo is None else a
        b = b.replace(tzinfo=tz) if b.tzinfo is None else b
        if b <= a:
            raise field_error(["query", "until"], "until must be after since")
        return engine().stats(a, b).as_json()

    @app.get("/api/v1/incidents/{incident_id}", tags=["incidents"])
    def incident(incident_id: str, _: Reader) -> dict[str, Any]:
        """One incident and its history (opened, reports, acknowledged, cleared, resolved…)."""
        try:
            inc = engine().get(incident_id)
            hist = engine().history(incident_id)
        except IncidentError as e:
            raise conflict(e) from None
        return {**inc.as_json(), "history": [h.as_json() for h in hist]}

    @app.post("/api/v1/incidents/{incident_id}/acknowledge", tags=["incidents"])
    def acknowledge(
        incident_id: str, body: NoteIn, who: Engineer, request: Request
    ) -> dict[str, Any]:
        """Someone is on it."""
        request.state.audit = {"acknowledge": incident_id}
        try:
            return engine().acknowledge(incident_id, who.name, body.note).as_json()
        except IncidentError as e:
            raise conflict(e) from None

    @app.post("/api/v1/incidents/{incident_id}/resolve", tags=["incidents"])
    def resolve(
        incident_id: str, body: ResolveIn, who: Engineer, request: Request
    ) -> dict[str, Any]:
        """Close it with a note (refused while the device still reports the fault, unless
        ``force``)."""
        request.state.audit = {"resolve": incident_id, "force": body.force}
        try:
            return engine().resolve(incident_id, who.name, body.note, force=body.force).as_json()
        except IncidentError as e:
            raise conflict(e) from None

    @app.post("/api/v1/reports", status_code=201, tags=["incidents"])
    def report(body: ReportIn, who: Engineer, request: Request) -> dict[str, Any]:
        """A person reports a problem; it joins the matching device's open incident or opens
        one."""
        if (body.lat is None) != (body.lon is None):
            raise field_error(
                ["body", "lon" if body.lon is None else "lat"], "give lat and lon together"
            )
        if body.lat is None and body.device is None:
            raise field_error(["body", "device"], "give a device or a position (lat, lon)")
        loc = (body.lat, body.lon) if body.lat is not None and body.lon is not None else None
        try:
            out = engine().report(loc, body.device, body.note, who.name, kind=body.kind)
        except BadReport as e:
            field = "device" if body.device else "kind" if "kind" in str(e) else "lat"
            raise field_error(["body", field], str(e)) from None
        except IncidentError as e:
            raise conflict(e) from None
        request.state.audit = {"report": out.incident.id, "joined": out.joined}
        return {
            "incident": out.incident.as_json(),
            "joined": out.joined,
            "matched": None
            if out.matched is None
            else {"kind": out.matched.kind, "id": out.matched.id},
            "distance_m": out.distance_m,
        }

    # -- schedules --------------------------------------------------------------------------
    def store() -> ScheduleStore:
        if ctx.schedules is None:
            raise HTTPException(404, "schedules are not kept by this controller")
        return ctx.schedules

    def item_prefix(kind: str, name: str, base_version: int) -> str:
        """Where the item being saved sits in the document (``programs[3]``), for errors."""
        try:
            doc = store().get(base_version).document
        except UnknownVersion:
            return ""
        names = [p.name for p in (doc.programs if kind == "programs" else doc.calendars)]
        return f"{kind}[{names.index(name) if name in names else len(names)}]"

    def issue_loc(path: str, root: str, prefix: str) -> list[str | int]:
        # An error inside the item sent is located in it; elsewhere, in the whole document.
        if prefix and (path == prefix or path.startswith(prefix + ".")):
            return ["body", root, *_path_loc(path[len(prefix) :])]
        return ["body", "document" if prefix else root, *_path_loc(path)]

    def write_schedule(
        action: Callable[[], Any], request: Request, what: Any, root: str, prefix: str = ""
    ) -> Any:
        """Run a schedule change; map its errors onto HTTP (see the module docstring)."""
        try:
            accepted = action()
        except VersionConflict as e:
            raise HTTPException(
                409,
                detail={
                    "msg": f"version {e.base_version} is not current any more: reload, redo the"
                    " change on the current version",
                    "current_version": e.current.version,
                    "current_author": e.current.author,
                },
            ) from None
        except ScheduleInUse as e:
            raise HTTPException(409, detail={"msg": str(e), "users": list(e.users)}) from None
        except (UnknownSchedule, UnknownVersion) as e:
            raise HTTPException(404, str(e).strip("'\"")) from None
        except ConfigError as e:
            raise HTTPException(
                422,
                detail=[
                    {
                        "loc": issue_loc(i.path, root, prefix),
                        "msg": i.message,
                        "type": "value_error",
                    }
                    for i in e.issues
                    if i.severity == "error"
                ]
                or [{"loc": ["body", root], "msg": str(e), "type": "value_error"}],
            ) from None
        except ValueError as e:  # the running lighting refused it: nothing changed
            raise HTTPException(
                422, detail=[{"loc": ["body", root], "msg": str(e), "type": "value_error"}]
            ) from None
        request.state.audit = {
            **what,
            "version": accepted.version.version,
            "created": accepted.created,
        }
        return {
            **_version_json(accepted.version),
            "created": accepted.created,
            "warnings": [str(w) for w in accepted.warnings],
        }

    @app.get("/api/v1/schedules", tags=["schedules"])
    def current_schedule(_: Reader) -> dict[str, Any]:
        """The schedule running now: its version, who made it, the document."""
        return _version_json(store().current())

    @app.get("/api/v1/schedules/versions", tags=["schedules"])
    def versions(
        _: Reader,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    ) -> list[dict[str, Any]]:
        """The history, newest first (without the documents)."""
        return [_version_json(v, document=False) for v in store().history(limit, before)]

    @app.get("/api/v1/schedules/versions/{version}", tags=["schedules"])
    def version(version: Annotated[int, Path_(ge=1, le=2**62)], _: Reader) -> dict[str, Any]:
        """One version with its document."""
        try:
            return _version_json(store().get(version))
        except UnknownVersion:
            raise HTTPException(404, f"no version {version}") from None

    @app.get("/api/v1/schedules/diff", tags=["schedules"])
    def diff(
        _: Reader,
        a: Annotated[int, Query(alias="from", ge=1, le=2**62)],
        b: Annotated[int, Query(alias="to", ge=1, le=2**62)],
    ) -> dict[str, Any]:
        """What changed from one version to another: each change, and a unified text diff."""
        try:
            changes = store().diff(a, b)
            text = store().diff_text(a, b)
        except UnknownVersion as e:
            raise HTTPException(404, str(e).strip("'\"")) from None
        return {
            "from": a,
            "to": b,
            "changes": [
                {"path": c.path, "kind": c.kind, "old": c.old, "new": c.new} for c in changes
            ],
            "text": text,
        }

    @app.put("/api/v1/schedules", tags=["schedules"])
    def put_document(body: DocumentIn, who: Engineer, request: Request) -> Any:
        """Replace the whole document (validated as `cityctl validate` does; applied at once)."""
        return write_schedule(
            lambda: store().propose(body.base_version, body.document, who.name, body.comment),
            request,
            {"document": "replaced"},
            "document",
        )

    def item_routes(kind: str, upsert_doc: str, delete_doc: str) -> None:
        """PUT and DELETE of one named program or calendar (the same rules for both)."""
        plural = f"{kind}s"

        def put_item(name: str, body: ItemIn, who: Engineer, request: Request) -> Any:
            upsert = getattr(store(), f"upsert_{kind}")
            return write_schedule(
                lambda: upsert(
                    name,
                    body.item,
                    base_version=body.base_version,
                    author=who.name,
                    comment=body.comment,
                ),
                request,
                {kind: name},
                "item",
                item_prefix(plural, name, body.base_version),
            )

        def delete_item(
            name: str,
            who: Engineer,
            request: Request,
            base_version: Annotated[int, Query(ge=1, le=2**62)],
            comment: Annotated[str, Query(max_length=500)] = "",
        ) -> Any:
            delete = getattr(store(), f"delete_{kind}")
            return write_schedule(
                lambda: delete(name, base_version=base_version, author=who.name, comment=comment),
                request,
                {f"{kind} deleted": name},
                "item",
            )

        def list_items(_: Reader) -> list[dict[str, Any]]:
            data = store().current().document.to_data()
            items: list[dict[str, Any]] = data[plural]
            return items

        def get_item(name: str, _: Reader) -> dict[str, Any]:
            for item in store().current().document.to_data()[plural]:
                if item["name"] == name:
                    found: dict[str, Any] = item
                    return found
            raise HTTPException(404, f"no {kind} {name!r} in the current version")

        app.get(
            f"/api/v1/schedules/{plural}",
            tags=["schedules"],
            name=f"list_{plural}",
            description=f"Every {kind} of the current version.",
        )(list_items)
        path = f"/api/v1/schedules/{plural}/{{name}}"
        app.get(
            path,
            tags=["schedules"],
            name=f"get_{kind}",
            description=f"One {kind} of the current version.",
        )(get_item)
        app.put(path, tags=["schedules"], name=f"put_{kind}", description=upsert_doc)(put_item)
        app.delete(path, tags=["schedules"], name=f"delete_{kind}", description=delete_doc)(
            delete_item
        )

    item_routes(
        "program",
        "Create or replace one program.",
        "Delete a program no calendar or group uses (409 names who still does).",
    )
    item_routes(
        "calendar",
        "Create or replace one calendar.",
        "Delete a calendar no group uses (409 names who still does).",
    )

    @app.put("/api/v1/schedules/assignments/{group_id}", tags=["schedules"])
    def assign(group_id: str, body: AssignIn, who: Engineer, request: Request) -> Any:
        """Give a group a program or a calendar."""
        if (body.program is None) == (body.calendar is None):
            raise field_error(["body", "program"], "give exactly one of program and calendar")
        return write_schedule(
            lambda: store().assign(
                group_id,
                program=body.program,
                calendar=body.calendar,
                base_version=body.base_version,
                author=who.name,
                comment=body.comment,
            ),
            request,
            {"group": group_id, "program": body.program, "calendar": body.calendar},
            "assignment",
        )

    @app.post("/api/v1/schedules/rollback", tags=["schedules"])
    def rollback(body: RollbackIn, who: Engineer, request: Request) -> Any:
        """Make an old version's document current again, as a new version."""
        return write_schedule(
            lambda: store().rollback(
                body.to_version,
                base_version=body.base_version,
                author=who.name,
                comment=body.comment,
            ),
            request,
            {"rollback to": body.to_version},
            "to_version",
        )

    # -- administration ---------------------------------------------------------------------
    @app.get("/api/v1/audit", tags=["admin"])
    def audit(
        _: Admin,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    ) -> list[dict[str, Any]]:
        """The audit log, newest first."""
        return ctx.audit.entries(limit, before)

    app.include_router(preview_router(ctx, reader))
    mount_page(app)  # the engineers' page at /, its files under /static/ (no CDN)
    return app
