"""Versioned lighting schedules: what engineers edit over the API, every change kept.

The *schedule document* is the part of the lighting config that engineers edit — programs,
calendars, and which program or calendar each group follows (its *assignment*). Everything else
(groups' roads, classes and nodes, the site, MQTT …) stays as ``config.yaml`` says.

Every accepted change becomes a new **version** (author, time, comment) in the workbench file;
history is linear: a rollback is a new version whose document equals an old one. Writers name
the version they edited (``base_version``); a writer whose base is no longer current gets
:class:`VersionConflict` and nothing is lost (optimistic concurrency).

Each change is validated with the same rules as ``cityctl validate``
(:func:`controller.config.validate_data`). **Error paths are relative to the document**, as
it is sent and read over the API: list items by position, mapping keys after a dot::

    programs[2].steps[0].level     calendars[0].rules[3].program     assignments.ql1a.program

Diffs name programs and calendars instead of counting them (``programs[park].steps[1].level``),
because positions shift between versions; step and rule positions are those of the newer
version, except for removed items, which keep their position in the older one.

At start, :meth:`ScheduleStore.bootstrap` reconciles the store with ``config.yaml``: the first
start stores the file's schedule as version 1; later starts keep the stored current version
(API edits survive restarts) unless the file's schedule part changed since it was last imported
— then the file wins and is imported as a new version by ``config.yaml``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from controller.clock import Clock
from controller.config import (
    CityConfig,
    ConfigError,
    ConfigIssue,
    LightingSettings,
    validate_data,
)
from controller.workbench.db import connect
from schedules.model import LightingCalendar, LightingProgram, StepTime

__all__ = [
    "Accepted",
    "Assignment",
    "Change",
    "ScheduleDocument",
    "ScheduleInUse",
    "ScheduleStore",
    "UnknownSchedule",
    "UnknownVersion",
    "Validated",
    "Version",
    "VersionConflict",
    "apply_document",
    "diff_documents",
    "document_of",
    "unified_diff",
    "validate_document",
]

#: ``source`` of a version: imported from the config file, an edit, a rollback.
SOURCE_CONFIG = "config"
SOURCE_API = "api"
SOURCE_ROLLBACK = "rollback"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedule_versions (
    version INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    author TEXT NOT NULL,
    comment TEXT NOT NULL,
    source TEXT NOT NULL,        -- config | api | rollback
    document TEXT NOT NULL,      -- canonical JSON of the ScheduleDocument
    hash TEXT NOT NULL           -- sha256 of document
);
"""


# ---- the document ------------------------------------------------------------------------


class Assignment(BaseModel):
    """What a group follows: one program every night, or a calendar that picks one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    program: str | None = None
    calendar: str | None = None


class ScheduleDocument(BaseModel):
    """Programs, calendars and each group's assignment: the part of lighting engineers edit.

    Build one from API input with :func:`validate_document` (which checks it against the
    config); :meth:`to_data` is its canonical JSON-ready form, with step times as text
    (``"sunset+10min"``), defaults left out and assignments sorted by group.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    programs: list[LightingProgram] = Field(min_length=1)
    calendars: list[LightingCalendar] = Field(default_factory=list)
    assignments: dict[str, Assignment] = Field(description="Group id → program or calendar.")

    def to_data(self) -> dict[str, Any]:
        """Plain JSON data in canonical form (what is stored, hashed and sent)."""
        return {
            "programs": [_program_data(p) for p in self.programs],
            "calendars": [c.model_dump(mode="json", exclude_defaults=True) for c in self.calendars],
            "assignments": {
                gid: self.assignments[gid].model_dump(exclude_none=True)
                for gid in sorted(self.assignments)
            },
        }

    def canonical_json(self) -> str:
        """The canonical JSON text; equal documents have equal text."""
        return json.dumps(self.to_data(), ensure_ascii=False, separators=(",", ":"))

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def to_yaml(self) -> str:
        """The document as YAML, one line per step and per calendar rule, as config.yaml has it."""
        return _yaml(self.to_data())

    @classmethod
    def from_json(cls, text: str) -> ScheduleDocument:
        """Read a stored (already validated) document."""
        return cls.model_validate(json.loads(text))

    def program(self, name: str) -> LightingProgram:
        """A program by name; :class:`UnknownSchedule` when there is none."""
        for p in self.programs:
            if p.name == name:
                return p
        raise UnknownSchedule("program", name, [p.name for p in self.programs])

    def calendar(self, name: str) -> LightingCalendar:
        """A calendar by name; :class:`UnknownSchedule` when there is none."""
        for c in self.calendars:
            if c.name == name:
                return c
        raise UnknownSchedule("calendar", name, [c.name for c in self.calendars])


def _program_data(p: LightingProgram) -> dict[str, Any]:
    data = p.model_dump(mode="json", exclude_defaults=True)
    for step, raw in zip(p.steps, data["steps"], strict=True):
        text = str(step.at)
        # The text form reads best; keep the structured form for the rare time that the text
        # cannot carry exactly (sub-second offsets).
        try:
            exact = StepTime.parse(text) == step.at
        except ValueError:
            exact = False
        if exact:
            raw["at"] = text
    return data


def document_of(cfg: CityConfig) -> ScheduleDocument:
    """The schedule document a config holds."""
    lt = cfg.lighting
    return ScheduleDocument(
        programs=list(lt.programs),
        calendars=list(lt.calendars),
        assignments={g.id: Assignment(program=g.program, calendar=g.calendar) for g in lt.groups},
    )


# ---- validation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Validated:
    """A document that passed validation, the config it gives, and its warnings."""

    document: ScheduleDocument
    config: CityConfig
    warnings: tuple[ConfigIssue, ...] = ()


def validate_document(cfg: CityConfig, data: ScheduleDocument | Mapping[str, Any]) -> Validated:
    """Check a document (model or raw JSON data) against ``cfg`` with ``cityctl validate``'s rules.

    Raises :class:`ConfigError` listing every problem with its path in the document
    (``programs[2].steps[0].level``, ``assignments.ql1a.program``); nothing is changed.
    """
    raw: Any = data.to_data() if isinstance(data, ScheduleDocument) else data
    issues: list[ConfigIssue] = []
    if not isinstance(raw, Mapping):
        raise ConfigError(
            [ConfigIssue("document", "must be a mapping with programs, calendars, assignments")]
        )
    for key in raw:
        if key not in ("programs", "calendars", "assignments"):
            issues.append(
                ConfigIssue(
                    str(key), "unknown field (a schedule has programs, calendars, assignments)"
                )
            )
    groups = cfg.lighting.groups
    known = {g.id for g in groups}
    assignments = raw.get("assignments")
    if assignments is None:
        issues.append(ConfigIssue("assignments", "required field is missing"))
        assignments = {}
    elif not isinstance(assignments, Mapping):
        issues.append(
            ConfigIssue("assignments", "must map group ids to {program: …} or {calendar: …}")
        )
        assignments = {}
    for gid in assignments:
        if gid not in known:
            issues.append(
                ConfigIssue(
                    f"assignments.{gid}",
                    f"unknown group {gid!r} (known: {', '.join(sorted(known))}); groups are"
                    " added in config.yaml",
                )
            )
    group_data: list[dict[str, Any]] = []
    for g in groups:
        base = g.model_dump(exclude={"program", "calendar"})
        a = assignments.get(g.id)
        if a is None:
            issues.append(
                ConfigIssue(
                    f"assignments.{g.id}", "missing: every group needs a program or a calendar"
                )
            )
            a = {"program": g.program, "calendar": g.calendar}
        elif not isinstance(a, Mapping):
            issues.append(
                ConfigIssue(f"assignments.{g.id}", "must be {program: …} or {calendar: …}")
            )
            a = {"program": g.program, "calendar": g.calendar}
        for key in a:
            if key not in ("program", "calendar"):
                issues.append(
                    ConfigIssue(
                        f"assignments.{g.id}.{key}",
                        "unknown field (an assignment has program or calendar)",
                    )
                )
        group_data.append(base | {"program": a.get("program"), "calendar": a.get("calendar")})
    lighting: dict[str, Any] = {
        name: getattr(cfg.lighting, name) for name in LightingSettings.model_fields
    }
    lighting["groups"] = group_data
    lighting["calendars"] = raw.get("calendars", [])
    if "programs" in raw:
        lighting["programs"] = raw["programs"]
    else:
        del lighting["programs"]
    # Model instances pass as they are: only the edited parts are validated again.
    full: dict[str, Any] = {name: getattr(cfg, name) for name in CityConfig.model_fields}
    full["lighting"] = lighting
    group_ids = [g.id for g in groups]
    try:
        new_cfg, found = validate_data(full)
    except ConfigError as exc:
        raise ConfigError(issues + [_to_document(i, group_ids) for i in exc.issues]) from None
    if issues:
        raise ConfigError(issues)
    warnings = tuple(
        w
        for w in (_to_document(i, group_ids) for i in found)
        if w.path.startswith(("programs", "calendars", "assignments"))
    )
    return Validated(document_of(new_cfg), new_cfg, warnings)


def apply_document(cfg: CityConfig, doc: ScheduleDocument | Mapping[str, Any]) -> CityConfig:
    """A new, validated config: ``cfg`` with the document's programs, calendars and assignments.

    Raises :class:`ConfigError` with paths relative to the document (see the module notes).
    """
    return validate_document(cfg, doc).config


def _to_document(issue: ConfigIssue, group_ids: Sequence[str]) -> ConfigIssue:
    """``lighting.groups[3].program`` (config) → ``assignments.g.program`` (document)."""
    path = issue.path
    for part in ("programs", "calendars"):
        prefix = f"lighting.{part}"
        if path == prefix or path.startswith((prefix + "[", prefix + ".")):
            path = path.removeprefix("lighting.")
    if path.startswith("lighting.groups["):
        index, _, rest = path.removeprefix("lighting.groups[").partition("]")
        if index.isdigit() and int(index) < len(group_ids):
            path = f"assignments.{group_ids[int(index)]}{rest}"
    return ConfigIssue(path, issue.message, None, issue.severity)


# ---- diffs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One difference between two documents: where, what kind, the value before and after."""

    loc: tuple[str | int, ...]
    kind: Literal["added", "removed", "changed"]
    old: Any = None
    new: Any = None

    @property
    def path(self) -> str:
        """``programs[park].steps[1].level``: named items in brackets, positions counted from 0."""
        out = ""
        for i, part in enumerate(self.loc):
            if isinstance(part, int) or (i == 1 and self.loc[0] in ("programs", "calendars")):
                out += f"[{part}]"
            else:
                out += ("." if out else "") + part
        return out

    def __str__(self) -> str:
        if self.kind == "added":
            return f"{self.path}: added {_short(self.new)}"
        if self.kind == "removed":
            return f"{self.path}: removed {_short(self.old)}"
        return f"{self.path}: {_short(self.old)} → {_short(self.new)}"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 120 else text[:117] + "…"


def diff_documents(old: ScheduleDocument, new: ScheduleDocument) -> list[Change]:
    """What changed from ``old`` to ``new``, program by program, step by step, rule by rule."""
    a, b = old.to_data(), new.to_data()
    out: list[Change] = []
    for part in ("programs", "calendars"):
        _diff_named(part, a[part], b[part], out)
    _diff(("assignments",), a["assignments"], b["assignments"], out)
    return out


def unified_diff(
    old: ScheduleDocument, new: ScheduleDocument, old_label: str, new_label: str
) -> str:
    """A unified text diff of the two documents' YAML."""
    return "".join(
        difflib.unified_diff(
            old.to_yaml().splitlines(keepends=True),
            new.to_yaml().splitlines(keepends=True),
            fromfile=old_label,
            tofile=new_label,
        )
    )


def _diff_named(
    part: str, old: list[dict[str, Any]], new: list[dict[str, Any]], out: list[Change]
) -> None:
    a = {item["name"]: item for item in old}
    b = {item["name"]: item for item in new}
    for name, item in a.items():
        if name not in b:
            out.append(Change((part, name), "removed", old=item))
    for name, item in b.items():
        if name not in a:
            out.append(Change((part, name), "added", new=item))
        else:
            _diff((part, name), a[name], item, out)
    common_a = [n for n in a if n in b]
    common_b = [n for n in b if n in a]
    if common_a != common_b:
        out.append(Change((part,), "changed", old=list(a), new=list(b)))


def _diff(loc: tuple[str | int, ...], old: Any, new: Any, out: list[Change]) -> None:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            if key not in new:
                out.append(Change((*loc, key), "removed", old=old[key]))
            elif key not in old:
                out.append(Change((*loc, key), "added", new=new[key]))
            else:
                _diff((*loc, key), old[key], new[key], out)
        return
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and all(isinstance(x, dict) for x in [*old, *new])
    ):
        # Steps and rules: match equal items first, so inserting a step shows one added step
        # rather than every later step changed.
        keys_a = [json.dumps(x, sort_keys=True) for x in old]
        keys_b = [json.dumps(x, sort_keys=True) for x in new]
        matcher = difflib.SequenceMatcher(a=keys_a, b=keys_b, autojunk=False)
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                continue
            pairs = min(i2 - i1, j2 - j1)
            for k in range(pairs):
                _diff((*loc, j1 + k), old[i1 + k], new[j1 + k], out)
            for i in range(i1 + pairs, i2):
                out.append(Change((*loc, i), "removed", old=old[i]))
            for j in range(j1 + pairs, j2):
                out.append(Change((*loc, j), "added", new=new[j]))
        return
    out.append(Change(loc, "changed", old=old, new=new))


# ---- YAML rendering ----------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Flat mappings (steps, rules, assignments) on one line, as config.yaml writes them."""


def _scalar(x: Any) -> bool:
    return x is None or isinstance(x, str | int | float | bool)


def _represent_dict(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
    flat = all(_scalar(v) or (isinstance(v, list) and all(map(_scalar, v))) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flat)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence(
        "tag:yaml.org,2002:seq", data, flow_style=all(map(_scalar, data))
    )


def _represent_float(dumper: yaml.SafeDumper, data: float) -> yaml.Node:
    if data.is_integer():
        return dumper.represent_int(int(data))
    return dumper.represent_float(data)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(float, _represent_float)


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)


# ---- the store ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One stored version of the schedule document."""

    version: int
    created_at: dt.datetime
    author: str
    comment: str
    source: str
    """``config`` (imported from the config file), ``api`` (an edit) or ``rollback``."""
    document: ScheduleDocument
    hash: str


@dataclass(frozen=True)
class Accepted:
    """The answer to a change: the version now current, and what the schedule gives."""

    version: Version
    created: bool
    """False when the document equalled the current one: nothing was stored."""
    config: CityConfig
    """The config with this version's schedule: what the controller runs."""
    warnings: tuple[ConfigIssue, ...] = field(default=())


class VersionConflict(Exception):
    """The change was made on a version that is no longer current; ``current`` is."""

    def __init__(self, base_version: int, current: Version) -> None:
        self.base_version = base_version
        self.current = current
        super().__init__(
            f"version {base_version} is no longer current: version {current.version} by "
            f"{current.author} at {current.created_at.isoformat()} is; reload and edit that"
        )


class UnknownVersion(LookupError):
    """No stored version with that number."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(f"no schedule version {version}")

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownSchedule(LookupError):
    """No program or calendar of that name in the document."""

    def __init__(self, kind: str, name: str, known: Sequence[str]) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"no {kind} {name!r} (known: {', '.join(known) or 'none'})")

    def __str__(self) -> str:
        return str(self.args[0])


class ScheduleInUse(ConfigError):
    """A program or calendar cannot be deleted while groups or calendars use it."""

    def __init__(self, issue: ConfigIssue, users: list[str]) -> None:
        self.users = users
        super().__init__([issue])


class ScheduleStore:
    """The versions of the schedule document in ``<state_dir>/workbench.sqlite``.

    Reads work at any time; writes need :meth:`bootstrap` first (it sets the config that
    documents are validated against). Every write is one SQLite transaction. ``on_apply``, when
    set, is called with the new config *inside* the transaction of each new version: when it
    raises, the version is not stored, so the stored current version is always the one running.
    """

    def __init__(
        self,
        path: Path | str,
        clock: Clock,
        *,
        on_apply: Callable[[CityConfig], None] | None = None,
    ) -> None:
        self.clock = clock
        self.on_apply = on_apply
        self._db = connect(path)
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._base: CityConfig | None = None

    # -- reads ------------------------------------------------------------------------------
    def current(self) -> Version:
        """The current (newest) version; ``LookupError`` before the first bootstrap."""
        with self._lock:
            row = self._db.execute(f"{_SELECT} ORDER BY version DESC LIMIT 1").fetchone()
        if row is None:
            raise LookupError("no schedule version stored yet (bootstrap first)")
        return _version(row)

    def get(self, version: int) -> Version:
        """One version; :class:`UnknownVersion` when there is none."""
        with self._lock:
            row = self._db.execute(f"{_SELECT} WHERE version = ?", (version,)).fetchone()
        if row is None:
            raise UnknownVersion(version)
        return _version(row)

    def history(self, limit: int = 50, before: int | None = None) -> list[Version]:
        """Up to ``limit`` versions, newest first, older than ``before`` when given."""
        with self._lock:
            rows = self._db.execute(
                f"{_SELECT} WHERE version < ? ORDER BY version DESC LIMIT ?",
                (before if before is not None else 2**62, max(0, limit)),
            ).fetchall()
        return [_version(r) for r in rows]

    def diff(self, a: int, b: int) -> list[Change]:
        """What changed from version ``a`` to version ``b``."""
        return diff_documents(self.get(a).document, self.get(b).document)

    def diff_text(self, a: int, b: int) -> str:
        """Unified diff of the YAML of version ``a`` and version ``b``."""
        return unified_diff(
            self.get(a).document, self.get(b).document, f"version {a}", f"version {b}"
        )

    @property
    def config(self) -> CityConfig:
        """The config documents are validated against (from :meth:`bootstrap`)."""
        if self._base is None:
            raise RuntimeError("ScheduleStore.bootstrap() has not been called")
        return self._base

    # -- start-up -----------------------------------------------------------------------------
    def bootstrap(self, cfg: CityConfig, source: str = "config.yaml") -> Accepted:
        """Reconcile the store with the config file at start; returns what should run.

        First start: the file's schedule becomes version 1. Later: if the file's schedule
        differs from the one last imported from it, someone edited the file and it wins (a new
        version by ``source``); otherwise the stored current version is kept. A stored version
        that no longer fits the file (say, a group was renamed) is replaced by the file's.
        """
        self._base = cfg
        from_file = validate_document(cfg, document_of(cfg))
        with self._lock, self._transaction():
            cur = self._current_row()
            if cur is None:
                return self._insert(
                    from_file, source, SOURCE_CONFIG, f"imported from {source}", apply=False
                )
            last = self._db.execute(
                f"{_SELECT} WHERE source = ? ORDER BY version DESC LIMIT 1", (SOURCE_CONFIG,)
            ).fetchone()
            if last is None or _version(last).hash != from_file.document.digest:
                return self._insert(
                    from_file,
                    source,
                    SOURCE_CONFIG,
                    f"{source} changed: its schedule imported",
                    apply=False,
                )
            current = _version(cur)
            try:
                same = current.hash == from_file.document.digest
                kept = from_file if same else validate_document(cfg, current.document)
            except ConfigError as exc:
                why = "; ".join(str(i) for i in exc.issues[:3])
                return self._insert(
                    from_file,
                    source,
                    SOURCE_CONFIG,
                    f"version {current.version} does not fit {source} ({why}): file imported",
                    apply=False,
                )
            return Accepted(current, False, kept.config, kept.warnings)

    def reload(
        self,
        cfg: CityConfig,
        source: str = "config.yaml",
        *,
        checked: Mapping[str, Validated] | None = None,
    ) -> Accepted:
        """The config file was read again while running: :meth:`bootstrap`'s rules, applied live.

        If the file's schedule differs from the one last imported from it, it becomes a new
        version by ``source``; otherwise the current version (say, an API edit) stays. Either
        way ``on_apply`` gets the config to run, inside the transaction, and only when it
        returns does ``cfg`` become the config later documents are validated against: on any
        error (:class:`ConfigError`, or whatever ``on_apply`` raises) nothing changes.
        ``checked`` holds documents validated ahead against ``cfg`` (by digest), so a caller
        can do that slow part off the event loop; others are validated here.
        """
        ready = dict(checked or {})

        def validated(doc: ScheduleDocument) -> Validated:
            found = ready.get(doc.digest)
            return found if found is not None else validate_document(cfg, doc)

        from_file = validated(document_of(cfg))
        with self._lock, self._transaction():
            cur = self._current_row()
            last = self._db.execute(
                f"{_SELECT} WHERE source = ? ORDER BY version DESC LIMIT 1", (SOURCE_CONFIG,)
            ).fetchone()
            if cur is None or last is None or _version(last).hash != from_file.document.digest:
                accepted = self._insert(
                    from_file, source, SOURCE_CONFIG, f"{source} reloaded: its schedule imported"
                )
            else:
                current = _version(cur)
                try:
                    kept = validated(current.document)
                except ConfigError as exc:
                    why = "; ".join(str(i) for i in exc.issues[:3])
                    accepted = self._insert(
                        from_file,
                        source,
                        SOURCE_CONFIG,
                        f"version {current.version} does not fit the reloaded {source} ({why}):"
                        " file imported",
                    )
                else:
                    if self.on_apply is not None:
                        self.on_apply(kept.config)
                    accepted = Accepted(current, False, kept.config, kept.warnings)
            self._base = cfg
        return accepted

    # -- writes -------------------------------------------------------------------------------
    def propose(
        self,
        base_version: int,
        doc: ScheduleDocument | Mapping[str, Any],
        author: str,
        comment: str = "",
        *,
        source: str = SOURCE_API,
    ) -> Accepted:
        """Validate ``doc`` and store it as the next version after ``base_version``.

        Raises :class:`ConfigError` (document paths) when it is wrong and
        :class:`VersionConflict` when ``base_version`` is not the current version. A document
        equal to the current one stores nothing (``created`` is False).
        """
        checked = validate_document(self.config, doc)
        with self._lock, self._transaction():
            cur = self._current_row()
            if cur is None:
                raise LookupError("no schedule version stored yet (bootstrap first)")
            current = _version(cur)
            if current.version != base_version:
                raise VersionConflict(base_version, current)
            if current.hash == checked.document.digest:
                return Accepted(current, False, checked.config, checked.warnings)
            return self._insert(checked, author, source, comment)

    def rollback(
        self, to_version: int, *, base_version: int, author: str, comment: str = ""
    ) -> Accepted:
        """A new version whose document equals version ``to_version``'s (history stays linear)."""
        old = self.get(to_version)
        return self.propose(
            base_version,
            old.document,
            author,
            comment or f"rollback to version {to_version}",
            source=SOURCE_ROLLBACK,
        )

    def upsert_program(
        self,
        name: str,
        program: LightingProgram | Mapping[str, Any],
        *,
        base_version: int,
        author: str,
        comment: str = "",
    ) -> Accepted:
        """Add the program ``name`` or replace it in place."""
        data = self._base_data(base_version)
        item = _program_data(program) if isinstance(program, LightingProgram) else dict(program)
        _upsert(data["programs"], name, item, "programs")
        return self.propose(base_version, data, author, comment or f"program {name} saved")

    def delete_program(
        self, name: str, *, base_version: int, author: str, comment: str = ""
    ) -> Accepted:
        """Remove a program no group or calendar uses (:class:`ScheduleInUse` otherwise)."""
        doc = self.get(base_version).document
        doc.program(name)
        users = [f"group {g}" for g, a in sorted(doc.assignments.items()) if a.program == name]
        users += [
            f"calendar {c.name}"
            for c in doc.calendars
            if c.default == name or any(r.program == name for r in c.rules)
        ]
        index = next(i for i, p in enumerate(doc.programs) if p.name == name)
        if users:
            raise ScheduleInUse(
                ConfigIssue(
                    f"programs[{index}]",
                    f"program {name!r} is still used by {', '.join(users)}: give them another"
                    " program first",
                ),
                users,
            )
        data = doc.to_data()
        del data["programs"][index]
        return self.propose(base_version, data, author, comment or f"program {name} deleted")

    def upsert_calendar(
        self,
        name: str,
        calendar: LightingCalendar | Mapping[str, Any],
        *,
        base_version: int,
        author: str,
        comment: str = "",
    ) -> Accepted:
        """Add the calendar ``name`` or replace it in place."""
        data = self._base_data(base_version)
        item = (
            calendar.model_dump(mode="json", exclude_defaults=True)
            if isinstance(calendar, LightingCalendar)
            else dict(calendar)
        )
        _upsert(data["calendars"], name, item, "calendars")
        return self.propose(base_version, data, author, comment or f"calendar {name} saved")

    def delete_calendar(
        self, name: str, *, base_version: int, author: str, comment: str = ""
    ) -> Accepted:
        """Remove a calendar no group follows (:class:`ScheduleInUse` otherwise)."""
        doc = self.get(base_version).document
        doc.calendar(name)
        users = [f"group {g}" for g, a in sorted(doc.assignments.items()) if a.calendar == name]
        index = next(i for i, c in enumerate(doc.calendars) if c.name == name)
        if users:
            raise ScheduleInUse(
                ConfigIssue(
                    f"calendars[{index}]",
                    f"calendar {name!r} is still followed by {', '.join(users)}: give them"
                    " another program or calendar first",
                ),
                users,
            )
        data = doc.to_data()
        del data["calendars"][index]
        return self.propose(base_version, data, author, comment or f"calendar {name} deleted")

    def assign(
        self,
        group: str,
        *,
        program: str | None = None,
        calendar: str | None = None,
        base_version: int,
        author: str,
        comment: str = "",
    ) -> Accepted:
        """Make ``group`` follow a program every night, or a calendar."""
        if (program is None) == (calendar is None):
            raise ConfigError(
                [ConfigIssue(f"assignments.{group}", "give exactly one of program or calendar")]
            )
        data = self._base_data(base_version)
        data["assignments"][group] = (
            {"program": program} if program is not None else {"calendar": calendar}
        )
        what = f"program {program}" if program is not None else f"calendar {calendar}"
        return self.propose(base_version, data, author, comment or f"group {group} → {what}")

    def close(self) -> None:
        """Close the file."""
        self._db.close()

    # -- internals ----------------------------------------------------------------------------
    def _base_data(self, base_version: int) -> dict[str, Any]:
        # Edit the version the writer saw; propose() refuses it if that is no longer current.
        return self.get(base_version).document.to_data()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock at once, so two processes cannot both read version N
        # as current and both write N + 1.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _current_row(self) -> _Row | None:
        row: _Row | None = self._db.execute(f"{_SELECT} ORDER BY version DESC LIMIT 1").fetchone()
        return row

    def _insert(
        self, checked: Validated, author: str, source: str, comment: str, *, apply: bool = True
    ) -> Accepted:
        cur = self._current_row()
        number = 1 if cur is None else cur[0] + 1
        now = self.clock.now()
        doc = checked.document
        self._db.execute(
            "INSERT INTO schedule_versions(version, created_at, author, comment, source,"
            " document, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (number, now.isoformat(), author, comment, source, doc.canonical_json(), doc.digest),
        )
        if apply and self.on_apply is not None:
            # Inside the transaction: a schedule that fails to apply is not stored either.
            self.on_apply(checked.config)
        version = Version(number, now, author, comment, source, doc, doc.digest)
        return Accepted(version, True, checked.config, checked.warnings)


_SELECT = (
    "SELECT version, created_at, author, comment, source, document, hash FROM schedule_versions"
)
_Row = tuple[int, str, str, str, str, str, str]


def _version(row: _Row) -> Version:
    number, created_at, author, comment, source, document, digest = row
    return Version(
        int(number),
        dt.datetime.fromisoformat(created_at),
        author,
        comment,
        source,
        ScheduleDocument.from_json(document),
        digest,
    )


def _upsert(items: list[dict[str, Any]], name: str, item: dict[str, Any], part: str) -> None:
    item.setdefault("name", name)
    index = next((i for i, x in enumerate(items) if x.get("name") == name), len(items))
    if item["name"] != name:
        raise ConfigError(
            [
                ConfigIssue(
                    f"{part}[{index}].name",
                    f"{item['name']!r} differs from the name being saved ({name!r}); renaming"
                    " is a new item and a delete",
                )
            ]
        )
    if index == len(items):
        items.append(item)
    else:
        items[index] = item
