"""Signal cabinets over Modbus TCP: the register map (version 1) and its pure codec.

A cabinet is an I/O and monitor unit: it drives the signal heads the controller commands, counts
its detectors, and keeps its own conflict monitor and heartbeat watchdog. This module is the
contract between the two sides, shared by the controller's link (:mod:`devices.modbus`) and the
simulated cabinet (:mod:`simulator.cabinet`), so a frame that one side encodes the other decodes.
Nothing here touches a socket or pymodbus; the map is documented in ``docs/protocol.md`` §2.

Holding registers (the controller writes, function 16, one request per cycle)::

    HR 0        heartbeat   incremented by the controller on every write (16-bit, wraps)
    HR 1        command     0 follow outputs, 1 request flash, 2 request local plan, 3 reset fault
    HR 2        commit      = heartbeat: apply HR 16.. as one complete set of outputs
    HR 3..15    reserved    write 0
    HR 16..47   output[g]   signal code of group g (``SignalCode``)

Input registers (the cabinet reports, function 4)::

    IR 0        map version (1)           IR 7     last heartbeat seen
    IR 1        number of groups          IR 8     last commit applied
    IR 2        number of channels        IR 9,10  uptime s, 32-bit, high word first
    IR 3        status (``CabinetMode``)  IR 11    reserved (0)
    IR 4        fault (``FaultCode``)     IR 12..15 presence bitmap, channel c = bit c % 16 of IR 12 + c // 16
    IR 5, 6     groups of the fault, group number = index + 1, 0 = none
    IR 16..47   displayed[g]   what the heads of group g really show
    IR 48..111  count[c]       detector channel c, cumulative actuations, 16-bit, wraps
    IR 112..175 occupancy[c]   detector channel c, cumulative occupied time in 0.1 s, wraps

Discrete inputs 0..63 mirror the presence bitmap for tools that prefer bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple, TypeVar

__all__ = [
    "CLEARANCE_CODES",
    "HR",
    "IR",
    "MAP_VERSION",
    "MAX_CHANNELS",
    "MAX_GROUPS",
    "OPEN_CODES",
    "CabinetMode",
    "CabinetStatus",
    "Command",
    "DetectorReading",
    "FaultCode",
    "OutputFrame",
    "RegisterError",
    "SignalCode",
    "decode_status",
    "encode_outputs",
    "encode_status",
    "next_heartbeat",
    "parse_output_frame",
    "presence_bitmap",
    "register_name",
    "status_spans",
    "wrap16",
]

MAP_VERSION: Final = 1
MAX_GROUPS: Final = 32
MAX_CHANNELS: Final = 64
_U16: Final = 0xFFFF

E = TypeVar("E", bound=IntEnum)


class HR:
    """Holding-register addresses (controller → cabinet)."""

    HEARTBEAT: Final = 0
    COMMAND: Final = 1
    COMMIT: Final = 2
    OUTPUTS: Final = 16
    END: Final = OUTPUTS + MAX_GROUPS  # 48: first address past the map


class IR:
    """Input-register addresses (cabinet → controller)."""

    MAP_VERSION: Final = 0
    N_GROUPS: Final = 1
    N_CHANNELS: Final = 2
    STATUS: Final = 3
    FAULT: Final = 4
    FAULT_GROUP_A: Final = 5
    FAULT_GROUP_B: Final = 6
    LAST_HEARTBEAT: Final = 7
    LAST_COMMIT: Final = 8
    UPTIME_HI: Final = 9
    UPTIME_LO: Final = 10
    PRESENCE: Final = 12  # 4 registers, 16 channels each, channel 0 = bit 0
    DISPLAYED: Final = 16
    DET_COUNT: Final = DISPLAYED + MAX_GROUPS  # 48
    DET_OCCUPANCY: Final = DET_COUNT + MAX_CHANNELS  # 112
    END: Final = DET_OCCUPANCY + MAX_CHANNELS  # 176


class SignalCode(IntEnum):
    """What a group shows, as a register value.

    Mirrors ``controller.signals.model.Signal`` value for value (a unit test keeps them equal);
    it lives here because ``devices`` must not import ``controller``.
    """

    DARK = 0
    RED = 1
    RED_AMBER = 2
    GREEN = 3
    YELLOW = 4
    FLASH_YELLOW = 5
    PED_CLEARANCE = 6


#: Codes during which traffic of the group may be in the conflict area.
OPEN_CODES: Final = frozenset(
    {SignalCode.RED_AMBER, SignalCode.GREEN, SignalCode.YELLOW, SignalCode.PED_CLEARANCE}
)
#: Codes that end a green: the vehicle yellow and the pedestrian clearance.
CLEARANCE_CODES: Final = frozenset({SignalCode.YELLOW, SignalCode.PED_CLEARANCE})


class Command(IntEnum):
    """HR 1: what the controller asks of the cabinet."""

    FOLLOW = 0  # show the committed outputs
    FLASH = 1  # flash by request
    LOCAL_PLAN = 2  # run the cabinet's own fixed-time plan
    RESET_FAULT = 3  # clear a latched fault (on the commit that carries it), then as FOLLOW


_SIGNAL_OF: Final = {int(c): c for c in SignalCode}
"""Register value → :class:`SignalCode` (a dict lookup is ten times an enum call's speed)."""


class CabinetMode(IntEnum):
    """IR 3: what the cabinet is doing."""

    STARTUP = 0  # all red after power-up, a fault reset or leaving flash; waiting for a handover
    FOLLOWING = 1  # showing the controller's committed outputs
    LOCAL_PLAN = 2  # own fixed-time plan: heartbeat lost (fault 6) or by request (fault 0)
    FLASH = 3  # flash because of a fault: latched monitor fault 1–5, or heartbeat lost (6)
    FLASH_REQUESTED = 4  # flash because the controller asked (command 1)


class FaultCode(IntEnum):
    """IR 4: why the cabinet is not following (0 when it is)."""

    NONE = 0
    CONFLICT = 1  # conflicting groups open together
    SHORT_CLEARANCE = 2  # yellow / pedestrian clearance below its minimum, or green → red
    SHORT_ALL_RED = 3  # conflicting green before the all-red / intergreen minimum
    SHORT_GREEN = 4  # green shorter than its minimum
    ILLEGAL_CODE = 5  # an output that is not a signal code
    HEARTBEAT_LOST = 6  # the controller's heartbeat stopped (not latched)


class RegisterError(ValueError):
    """A register holds a value the map does not allow.

    ``register`` is the address, ``table`` ``"IR"`` or ``"HR"``, ``value`` what was there and
    ``reason`` why it is wrong. Raised by the codec; never a crash further in.
    """

    def __init__(self, register: int, value: int, reason: str, *, table: str = "IR") -> None:
        self.register = register
        self.value = value
        self.reason = reason
        self.table = table
        name = register_name(table, register)
        super().__init__(f"{table} {register} ({name}) = {value}: {reason}")


def register_name(table: str, address: int) -> str:
    """A readable name for a register address, e.g. ``displayed[3]`` or ``count[12]``."""
    if table == "HR":
        fixed_hr = {HR.HEARTBEAT: "heartbeat", HR.COMMAND: "command", HR.COMMIT: "commit"}
        if address in fixed_hr:
            return fixed_hr[address]
        if HR.OUTPUTS <= address < HR.END:
            return f"output[{address - HR.OUTPUTS}]"
        return "reserved"
    fixed_ir = {
        IR.MAP_VERSION: "map version",
        IR.N_GROUPS: "groups",
        IR.N_CHANNELS: "channels",
        IR.STATUS: "status",
        IR.FAULT: "fault",
        IR.FAULT_GROUP_A: "fault group a",
        IR.FAULT_GROUP_B: "fault group b",
        IR.LAST_HEARTBEAT: "last heartbeat",
        IR.LAST_COMMIT: "last commit",
        IR.UPTIME_HI: "uptime high word",
        IR.UPTIME_LO: "uptime low word",
    }
    if address in fixed_ir:
        return fixed_ir[address]
    if IR.PRESENCE <= address < IR.PRESENCE + 4:
        return f"presence[{address - IR.PRESENCE}]"
    if IR.DISPLAYED <= address < IR.DET_COUNT:
        return f"displayed[{address - IR.DISPLAYED}]"
    if IR.DET_COUNT <= address < IR.DET_OCCUPANCY:
        return f"count[{address - IR.DET_COUNT}]"
    if IR.DET_OCCUPANCY <= address < IR.END:
        return f"occupancy[{address - IR.DET_OCCUPANCY}]"
    return "reserved"


def wrap16(value: int) -> int:
    """A cumulative counter as its 16-bit register value."""
    return value & _U16


def next_heartbeat(heartbeat: int) -> int:
    """The heartbeat after ``heartbeat`` (16-bit, wraps 65535 → 0)."""
    return (heartbeat + 1) & _U16


# -- status (input registers) ----------------------------------------------------------------


class DetectorReading(NamedTuple):
    """One detector channel as the cabinet reports it (cumulative, 16-bit wrapping).

    Named tuples, not frozen dataclasses, for the records every poll builds (twenty readings
    and a status, ten times a second per cabinet): as immutable, five times cheaper to build.
    """

    # Shadows tuple.count on purpose: the count is what a reading is about.
    count: int  # type: ignore[assignment]
    occupancy: int | None  # cumulative occupied time, 0.1 s units; None: not read this time
    presence: bool

    @property
    def occupied_s(self) -> float | None:
        """The occupancy register in seconds (still cumulative and wrapping), if it was read."""
        return None if self.occupancy is None else self.occupancy / 10


class CabinetStatus(NamedTuple):
    """Everything a poll reads from the input registers, validated."""

    n_groups: int
    n_channels: int
    mode: CabinetMode
    fault: FaultCode
    fault_groups: tuple[int, ...]  # 0-based group indices involved in the fault (0, 1 or 2)
    last_heartbeat: int
    last_commit: int
    uptime_s: int
    displayed: tuple[SignalCode, ...]
    detectors: tuple[DetectorReading, ...]
    map_version: int = MAP_VERSION

    @property
    def following(self) -> bool:
        """True while the heads show the controller's outputs."""
        return self.mode is CabinetMode.FOLLOWING

    @property
    def flashing(self) -> bool:
        """True in either flash mode."""
        return self.mode in (CabinetMode.FLASH, CabinetMode.FLASH_REQUESTED)

    @property
    def all_red(self) -> bool:
        """True when every group shows red."""
        return all(code is SignalCode.RED for code in self.displayed)


def presence_bitmap(presence: Sequence[bool]) -> list[int]:
    """Presence flags (channel 0 first) as the four bitmap registers."""
    regs = [0, 0, 0, 0]
    for ch, on in enumerate(presence):
        if on:
            regs[ch // 16] |= 1 << (ch % 16)
    return regs


def encode_status(status: CabinetStatus) -> list[int]:
    """The full input-register image (``IR.END`` registers from address 0) of a status.

    Raises :class:`RegisterError` when a field does not fit its register.
    """
    if not 0 <= status.n_groups <= MAX_GROUPS:
        raise RegisterError(IR.N_GROUPS, status.n_groups, f"at most {MAX_GROUPS} groups")
    if not 0 <= status.n_channels <= MAX_CHANNELS:
        raise RegisterError(IR.N_CHANNELS, status.n_channels, f"at most {MAX_CHANNELS} channels")
    if len(status.displayed) != status.n_groups:
        raise RegisterError(
            IR.N_GROUPS, status.n_groups, f"{len(status.displayed)} displayed states given"
        )
    if len(status.detectors) != status.n_channels:
        raise RegisterError(
            IR.N_CHANNELS, status.n_channels, f"{len(status.detectors)} detector readings given"
        )
    if len(status.fault_groups) > 2:
        raise RegisterError(IR.FAULT_GROUP_A, len(status.fault_groups), "at most two groups")
    if not 0 <= status.uptime_s <= 0xFFFF_FFFF:
        raise RegisterError(IR.UPTIME_HI, status.uptime_s, "uptime must fit 32 bits")
    regs = [0] * IR.END
    regs[IR.MAP_VERSION] = status.map_version
    regs[IR.N_GROUPS] = status.n_groups
    regs[IR.N_CHANNELS] = status.n_channels
    regs[IR.STATUS] = int(status.mode)
    regs[IR.FAULT] = int(status.fault)
    for k, g in enumerate(status.fault_groups):
        if not 0 <= g < status.n_groups:
            raise RegisterError(IR.FAULT_GROUP_A + k, g + 1, "fault group out of range")
        regs[IR.FAULT_GROUP_A + k] = g + 1
    regs[IR.LAST_HEARTBEAT] = _u16(IR.LAST_HEARTBEAT, status.last_heartbeat)
    regs[IR.LAST_COMMIT] = _u16(IR.LAST_COMMIT, status.last_commit)
    regs[IR.UPTIME_HI] = status.uptime_s >> 16
    regs[IR.UPTIME_LO] = status.uptime_s & _U16
    bitmap = presence_bitmap([d.presence for d in status.detectors])
    regs[IR.PRESENCE : IR.PRESENCE + 4] = bitmap
    for g, code in enumerate(status.displayed):
        regs[IR.DISPLAYED + g] = _signal(IR.DISPLAYED + g, int(code), "IR")
    for ch, det in enumerate(status.detectors):
        regs[IR.DET_COUNT + ch] = _u16(IR.DET_COUNT + ch, det.count)
        if det.occupancy is None:
            raise RegisterError(IR.DET_OCCUPANCY + ch, 0, "a status to encode needs occupancy")
        regs[IR.DET_OCCUPANCY + ch] = _u16(IR.DET_OCCUPANCY + ch, det.occupancy)
    return regs


def status_spans(n_channels: int, *, occupancy: bool = True) -> tuple[tuple[int, int], ...]:
    """The ``(address, count)`` reads a poll needs: at most two, each within Modbus' 125.

    Without ``occupancy`` only the first: the occupancy registers are cumulative, so reading
    them less often loses nothing (:class:`devices.modbus.CabinetLink` reads them once a
    second, the rest ten times).
    """
    first = (0, IR.DET_COUNT + n_channels)
    if n_channels == 0 or not occupancy:
        return (first,)
    return first, (IR.DET_OCCUPANCY, n_channels)


def decode_status(
    registers: Sequence[int],
    n_groups: int | None = None,
    n_channels: int | None = None,
    *,
    occupancy: bool = True,
    unpacked: bool = False,
) -> CabinetStatus:
    """Validate an input-register image (from address 0) into a :class:`CabinetStatus`.

    ``n_groups`` / ``n_channels`` are what the configuration expects; a cabinet reporting other
    numbers is an error (wrong cabinet or wrong config). Only the registers of
    :func:`status_spans` are looked at (without ``occupancy``, not the occupancy registers:
    every reading's ``occupancy`` is None). Any bad value raises :class:`RegisterError`.
    ``unpacked``: the image was unpacked from Modbus frames, so every register is an int of
    16 bits already and only the check of that is skipped (every value is still judged).
    """
    if len(registers) < IR.DET_COUNT:
        raise RegisterError(len(registers), 0, f"image too short: need at least {IR.DET_COUNT}")
    if not unpacked:
        _all_u16(registers[: IR.DET_COUNT], 0)
    version = registers[IR.MAP_VERSION]
    if version != MAP_VERSION:
        raise RegisterError(IR.MAP_VERSION, version, f"map version {MAP_VERSION} expected")
    groups = registers[IR.N_GROUPS]
    if groups > MAX_GROUPS or (n_groups is not None and groups != n_groups):
        want = n_groups if n_groups is not None else f"at most {MAX_GROUPS}"
        raise RegisterError(IR.N_GROUPS, groups, f"cabinet has {groups} groups, expected {want}")
    channels = registers[IR.N_CHANNELS]
    if channels > MAX_CHANNELS or (n_channels is not None and channels != n_channels):
        want = n_channels if n_channels is not None else f"at most {MAX_CHANNELS}"
        raise RegisterError(
            IR.N_CHANNELS, channels, f"cabinet has {channels} channels, expected {want}"
        )
    need = IR.DET_OCCUPANCY + channels if channels and occupancy else IR.DET_COUNT + channels
    if len(registers) < need:
        raise RegisterError(len(registers), 0, f"image too short: need {need} registers")
    mode = _enum(CabinetMode, IR.STATUS, registers[IR.STATUS], "unknown cabinet status")
    fault = _enum(FaultCode, IR.FAULT, registers[IR.FAULT], "unknown fault code")
    fault_groups: list[int] = []
    for addr in (IR.FAULT_GROUP_A, IR.FAULT_GROUP_B):
        number = registers[addr]
        if number > groups:
            raise RegisterError(addr, number, f"no group {number} (cabinet has {groups})")
        if number:
            fault_groups.append(number - 1)
    shown = registers[IR.DISPLAYED : IR.DISPLAYED + groups]
    try:
        displayed = tuple([_SIGNAL_OF[v] for v in shown])
    except KeyError:  # name the first register that holds no signal code
        displayed = tuple(
            _enum(SignalCode, IR.DISPLAYED + g, v, "unknown signal code")
            for g, v in enumerate(shown)
        )
    presence_regs = registers[IR.PRESENCE : IR.PRESENCE + 4]
    for k, reg in enumerate(presence_regs):
        first = 16 * k
        allowed = _U16 if channels >= first + 16 else (1 << max(0, channels - first)) - 1
        if reg & ~allowed:
            raise RegisterError(
                IR.PRESENCE + k, reg, f"presence set for a channel the cabinet lacks ({channels})"
            )
    counts = registers[IR.DET_COUNT : IR.DET_COUNT + channels]
    if not unpacked:
        _all_u16(counts, IR.DET_COUNT)
    occ: Sequence[int | None]
    if occupancy:
        occ = registers[IR.DET_OCCUPANCY : IR.DET_OCCUPANCY + channels]
        if not unpacked:
            _all_u16(occ, IR.DET_OCCUPANCY)
    else:
        occ = [None] * channels
    detectors = [
        DetectorReading(counts[ch], occ[ch], bool(presence_regs[ch >> 4] >> (ch & 15) & 1))
        for ch in range(channels)
    ]
    return CabinetStatus(
        n_groups=groups,
        n_channels=channels,
        mode=mode,
        fault=fault,
        fault_groups=tuple(fault_groups),
        last_heartbeat=registers[IR.LAST_HEARTBEAT],
        last_commit=registers[IR.LAST_COMMIT],
        uptime_s=registers[IR.UPTIME_HI] << 16 | registers[IR.UPTIME_LO],
        displayed=displayed,
        detectors=tuple(detectors),
        map_version=version,
    )


# -- outputs (holding registers) -------------------------------------------------------------


@dataclass(frozen=True)
class OutputFrame:
    """The holding registers as the cabinet sees them (raw: the monitor judges the codes)."""

    heartbeat: int
    command: int
    commit: int
    outputs: tuple[int, ...]

    @property
    def committed(self) -> bool:
        """True when the commit register matches the heartbeat: the outputs form one set."""
        return self.commit == self.heartbeat


def encode_outputs(signals: Sequence[int], heartbeat: int, command: int = 0) -> list[int]:
    """Registers HR 0 .. HR 16+n-1 for one write: heartbeat, command, commit, outputs.

    The commit register is set to the heartbeat, so the cabinet applies the outputs as one set.
    Raises :class:`RegisterError` (``table="HR"``) for a code, heartbeat or command that is not
    allowed; nothing is sent then.
    """
    if not 1 <= len(signals) <= MAX_GROUPS:
        raise RegisterError(
            HR.OUTPUTS, len(signals), f"1 to {MAX_GROUPS} groups expected", table="HR"
        )
    hb = _u16(HR.HEARTBEAT, heartbeat, table="HR")
    cmd = _enum(Command, HR.COMMAND, command, "unknown command", table="HR")
    codes = [_signal(HR.OUTPUTS + g, s, "HR") for g, s in enumerate(signals)]
    return [hb, int(cmd), hb] + [0] * (HR.OUTPUTS - HR.COMMIT - 1) + codes


def parse_output_frame(holding: Sequence[int], n_groups: int) -> OutputFrame:
    """Read the frame out of a holding-register image (from address 0); no judgement."""
    return OutputFrame(
        heartbeat=holding[HR.HEARTBEAT],
        command=holding[HR.COMMAND],
        commit=holding[HR.COMMIT],
        outputs=tuple(holding[HR.OUTPUTS : HR.OUTPUTS + n_groups]),
    )


# -- helpers ---------------------------------------------------------------------------------


def _all_u16(values: Sequence[int], first: int) -> None:
    """Every value (registers ``first``, ``first + 1``, ...) a 16-bit register value.

    Else :class:`RegisterError` naming the first bad register. The common case (all good)
    costs three C-level passes instead of a Python call per value.
    """
    if not values or (
        {type(v) for v in values} == {int} and 0 <= min(values) <= max(values) <= _U16
    ):
        return
    for k, v in enumerate(values):
        _u16(first + k, v)


def _u16(register: int, value: int, *, table: str = "IR") -> int:
    if not isinstance(value, int) or not 0 <= value <= _U16:
        raise RegisterError(register, value, "not a 16-bit register value", table=table)
    return value


def _signal(register: int, value: int, table: str) -> int:
    if type(value) is int and value in _SIGNAL_OF:  # the common case without an enum call
        return value
    return int(_enum(SignalCode, register, value, "unknown signal code", table=table))


def _enum(kind: type[E], register: int, value: int, reason: str, *, table: str = "IR") -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(f"{m.value} {m.name}" for m in kind)
        raise RegisterError(
            register, value, f"{reason} (allowed: {allowed})", table=table
        ) from None
