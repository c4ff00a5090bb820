"""Running SUMO's own programs and tools, and making what they write reproducible.

Everything runs from the SUMO of the ``eclipse-sumo`` wheel (``sumo.SUMO_HOME``): the same
release on every machine is what makes the generated files byte-identical across machines.
SUMO stamps every file it writes with a ``<!-- generated on <date> ... -->`` comment that also
repeats the command's options (absolute paths included); :func:`normalise_xml_header` replaces
that comment with a fixed one, since no SUMO option turns it off (``--write-metadata`` only
moves it into the XML).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

__all__ = [
    "ScenarioError",
    "normalise_xml_header",
    "python_tool",
    "run_tool",
    "sumo_binary",
    "sumo_home",
    "sumo_tool",
    "sumo_version",
]

_STDERR_TAIL_LINES = 25


class ScenarioError(RuntimeError):
    """A scenario could not be built or checked (a SUMO tool failed, a rule is broken, ...)."""


@cache
def sumo_home() -> Path:
    """The SUMO installation of the ``eclipse-sumo`` wheel (``bin/``, ``tools/``, ``data/``)."""
    try:
        module = importlib.import_module("sumo")
    except ImportError as exc:
        raise ScenarioError(
            "SUMO is not installed in this Python environment; install the extra: "
            "pip install 'cityctl[sumo]'"
        ) from exc
    home = Path(module.SUMO_HOME)
    if not (home / "bin").is_dir():
        raise ScenarioError(f"the 'sumo' package has no bin/ directory under {home}")
    return home


@cache
def sumo_version() -> str:
    """The SUMO release the scenarios are generated with (part of every cache stamp)."""
    try:
        return importlib.metadata.version("eclipse-sumo")
    except importlib.metadata.PackageNotFoundError:
        # An unusual install (a source build providing ``sumo``): its bin/sumo knows.
        out = run_tool([str(sumo_binary("sumo")), "--version"], cwd=Path.cwd()).stdout
        return out.splitlines()[0].strip() if out else "unknown"


def sumo_binary(name: str) -> Path:
    """``bin/<name>`` of :func:`sumo_home` (``sumo``, ``netconvert``, ``netgenerate``, ...)."""
    path = sumo_home() / "bin" / name
    if not path.exists():
        raise ScenarioError(f"SUMO program {name!r} not found at {path}")
    return path


def sumo_tool(relative: str) -> Path:
    """A script under ``tools/`` of :func:`sumo_home`, e.g. ``randomTrips.py``."""
    path = sumo_home() / "tools" / relative
    if not path.exists():
        raise ScenarioError(f"SUMO tool {relative!r} not found at {path}")
    return path


def _tool_env() -> dict[str, str]:
    env = dict(os.environ)
    # randomTrips finds duarouter through SUMO_HOME; pin it to the wheel's SUMO so a different
    # system-wide SUMO_HOME cannot mix releases inside one build.
    env["SUMO_HOME"] = str(sumo_home())
    return env


def run_tool(
    args: Sequence[str], *, cwd: Path, timeout_s: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """Run one program with captured output; return the finished process, raise on failure.

    The error names the command and quotes the tail of stderr (and stdout, where SUMO's tools
    often write their complaints), which is what one needs to see when a recipe breaks.
    """
    try:
        proc = subprocess.run(
            list(args),
            cwd=cwd,
            env=_tool_env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScenarioError(f"could not run {_quote(args)}: {exc}") from exc
    if proc.returncode != 0:
        tail = _tail(proc.stderr) or _tail(proc.stdout) or "(no output)"
        raise ScenarioError(f"{_quote(args)} failed with exit code {proc.returncode}:\n{tail}")
    return proc


def python_tool(script: str, args: Sequence[str]) -> list[str]:
    """The command line running a SUMO Python tool with this interpreter."""
    return [sys.executable, str(sumo_tool(script)), *args]


def _quote(args: Sequence[str]) -> str:
    return " ".join(args)


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-_STDERR_TAIL_LINES:])


def normalise_xml_header(path: Path, note: str) -> None:
    """Replace the comments before the root element of ``path`` with one fixed comment.

    SUMO writes the date and the full option list (with absolute paths) there; both differ
    between two builds of the same recipe, nothing else in the files does.
    """
    if "--" in note:
        raise ValueError("an XML comment must not contain '--'")
    text = path.read_text(encoding="utf-8")
    declaration = ""
    rest = text
    if rest.startswith("<?xml"):
        end = rest.index("?>") + 2
        declaration, rest = rest[:end], rest[end:]
    rest = rest.lstrip()
    while rest.startswith("<!--"):
        rest = rest[rest.index("-->") + 3 :].lstrip()
    header = f"{declaration}\n\n" if declaration else ""
    path.write_text(f"{header}<!-- {note} -->\n\n{rest}", encoding="utf-8")
