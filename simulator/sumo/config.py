"""Read a ``.sumocfg`` and write the copy a bench run starts SUMO with.

A scenario's configuration stays the user's: the bench never edits it. It writes a copy into
its work directory with every file path made absolute, the bench's own additional files
(detectors, the displayed-states recorder, a baseline program) appended to the scenario's,
and the options of the run (begin, end, seed, outputs) set. Options that only the GUI or a
3D build knows (``osg-view``, ``gui-settings-file`` outside ``<gui_only>``) are dropped, with a
note, because the command-line ``sumo`` refuses them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FILE_OPTIONS", "GUI_ONLY_OPTIONS", "SumoConfig", "read_sumocfg", "write_run_config"]

FILE_OPTIONS = frozenset(
    {
        "net-file",
        "route-files",
        "additional-files",
        "weight-files",
        "load-state",
        "configuration-file",
    }
)
"""Options whose value is a (comma-separated) list of paths relative to the config."""

GUI_ONLY_OPTIONS = frozenset(
    {
        "osg-view",
        "gui-settings-file",
        "game",
        "game.mode",
        "start",
        "quit-on-end",
        "delay",
        "breakpoints",
        "demo",
        "window-size",
        "window-pos",
        "registry-viewport",
        "tracker-interval",
    }
)


@dataclass(frozen=True)
class SumoConfig:
    """The options of a ``.sumocfg``: ``{name: value}`` with file paths absolute."""

    path: Path
    options: dict[str, str]
    dropped: tuple[str, ...] = field(default=())

    def files(self, name: str) -> list[Path]:
        """The paths of a file option (empty when absent)."""
        raw = self.options.get(name, "")
        return [Path(p) for p in _split(raw)]

    @property
    def net_file(self) -> Path:
        """The network file; raises ValueError when the config has none."""
        nets = self.files("net-file")
        if not nets:
            raise ValueError(f"{self.path}: no net-file in the configuration")
        return nets[0]

    def time(self, name: str, default: float) -> float:
        """A time option (begin, end, step-length) in seconds."""
        raw = self.options.get(name)
        if raw is None:
            return default
        try:
            return float(raw)
        except ValueError:
            return _clock_time(raw, default)


def _split(raw: str) -> list[str]:
    return [p.strip() for p in raw.replace(";", ",").split(",") if p.strip()]


def _clock_time(raw: str, default: float) -> float:
    parts = raw.split(":")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        return default
    total = 0.0
    for n in nums:
        total = total * 60 + n
    return total


def read_sumocfg(path: str | Path) -> SumoConfig:
    """Parse a ``.sumocfg``; raises ValueError with the file and the reason when unreadable."""
    p = Path(path).resolve()
    try:
        root = ET.parse(p).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ValueError(f"{p}: cannot read the SUMO configuration: {exc}") from exc
    options: dict[str, str] = {}
    dropped: list[str] = []
    for section in root:
        if not isinstance(section.tag, str):
            continue
        if section.tag == "gui_only":
            continue
        children = list(section)
        items = children if children else [section]
        for el in items:
            if not isinstance(el.tag, str):
                continue
            value = el.get("value")
            if value is None:
                continue
            name = el.tag
            if name in GUI_ONLY_OPTIONS:
                dropped.append(name)
                continue
            if name in FILE_OPTIONS:
                value = ",".join(str((p.parent / f).resolve()) for f in _split(value))
            options[name] = value
    return SumoConfig(p, options, tuple(dropped))


def write_run_config(
    cfg: SumoConfig,
    dest: Path,
    *,
    extra_additional: Sequence[Path] = (),
    set_options: Mapping[str, str] | None = None,
    drop_options: Iterable[str] = (),
) -> Path:
    """Write the configuration of one run to ``dest`` and return it.

    ``extra_additional`` files are loaded after the scenario's own (so a program they define
    is loaded last); ``set_options`` override or add options; ``drop_options`` remove some.
    """
    options = dict(cfg.options)
    for name in drop_options:
        options.pop(name, None)
    adds = _split(options.get("additional-files", "")) + [
        str(p.resolve()) for p in extra_additional
    ]
    if adds:
        options["additional-files"] = ",".join(adds)
    for k, v in (set_options or {}).items():
        options[k] = v
    root = ET.Element("configuration")
    for name, value in options.items():
        ET.SubElement(root, name, value=value)
    ET.indent(root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(dest, encoding="utf-8", xml_declaration=True)
    return dest
