"""The cabinet register map (devices/cabinet.py): round trips, validation, detector deltas."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.signals.model import Signal
from devices.cabinet import (
    HR,
    IR,
    MAP_VERSION,
    OPEN_CODES,
    CabinetMode,
    CabinetStatus,
    Command,
    DetectorReading,
    FaultCode,
    RegisterError,
    SignalCode,
    decode_status,
    encode_outputs,
    encode_status,
    next_heartbeat,
    parse_output_frame,
    presence_bitmap,
    status_spans,
)


def _status(n_groups: int = 4, n_channels: int = 6, **kw: object) -> CabinetStatus:
    fields: dict[str, object] = {
        "n_groups": n_groups,
        "n_channels": n_channels,
        "mode": CabinetMode.FOLLOWING,
        "fault": FaultCode.NONE,
        "fault_groups": (),
        "last_heartbeat": 41,
        "last_commit": 41,
        "uptime_s": 70_000,  # more than 16 bits
        "displayed": tuple(SignalCode.RED for _ in range(n_groups)),
        "detectors": tuple(
            DetectorReading(count=10 * ch, occupancy=3 * ch, presence=ch % 2 == 1)
            for ch in range(n_channels)
        ),
    }
    fields.update(kw)
    return CabinetStatus(**fields)  # type: ignore[arg-type]


def _image(status: CabinetStatus) -> list[int]:
    return encode_status(status)


# -- the wire codes -------------------------------------------------------------------------


def test_signal_codes_mirror_the_controllers_signal_enum() -> None:
    # devices/ cannot import controller/, so the codes are written twice; they must agree.
    assert {s.name: s.value for s in Signal} == {c.name: c.value for c in SignalCode}
    assert {SignalCode(s.value) for s in Signal if s.is_open} == set(OPEN_CODES)


def test_map_layout_fits_modbus_limits() -> None:
    assert HR.END == 48 and IR.END == 176
    for n_channels in (0, 1, 16, 64):
        spans = status_spans(n_channels)
        assert all(count <= 125 for _, count in spans)
        covered = {a for start, count in spans for a in range(start, start + count)}
        assert set(range(IR.DET_COUNT + n_channels)) <= covered
        assert set(range(IR.DET_OCCUPANCY, IR.DET_OCCUPANCY + n_channels)) <= covered


def test_heartbeat_wraps() -> None:
    assert next_heartbeat(0) == 1
    assert next_heartbeat(65535) == 0


# -- status round trips ---------------------------------------------------------------------


def test_status_round_trip() -> None:
    status = _status(
        mode=CabinetMode.FLASH,
        fault=FaultCode.CONFLICT,
        fault_groups=(0, 3),
        displayed=(SignalCode.FLASH_YELLOW,) * 3 + (SignalCode.DARK,),
    )
    image = _image(status)
    assert image[IR.MAP_VERSION] == MAP_VERSION
    assert image[IR.FAULT_GROUP_A : IR.FAULT_GROUP_B + 1] == [1, 4]  # 1-based on the wire
    assert image[IR.UPTIME_HI] == 1 and image[IR.UPTIME_LO] == 70_000 - 65_536
    assert image[IR.PRESENCE] == 0b101010
    assert decode_status(image, 4, 6) == status


@given(
    n_groups=st.integers(1, 32),
    n_channels=st.integers(0, 64),
    data=st.data(),
)
def test_status_round_trip_property(n_groups: int, n_channels: int, data: st.DataObject) -> None:
    codes = st.sampled_from(list(SignalCode))
    u16 = st.integers(0, 0xFFFF)
    groups = data.draw(st.lists(st.integers(0, n_groups - 1), max_size=2))
    status = CabinetStatus(
        n_groups=n_groups,
        n_channels=n_channels,
        mode=data.draw(st.sampled_from(list(CabinetMode))),
        fault=data.draw(st.sampled_from(list(FaultCode))),
        fault_groups=tuple(groups),
        last_heartbeat=data.draw(u16),
        last_commit=data.draw(u16),
        uptime_s=data.draw(st.integers(0, 0xFFFF_FFFF)),
        displayed=tuple(data.draw(st.lists(codes, min_size=n_groups, max_size=n_groups))),
        detectors=tuple(
            DetectorReading(data.draw(u16), data.draw(u16), data.draw(st.booleans()))
            for _ in range(n_channels)
        ),
    )
    assert decode_status(encode_status(status), n_groups, n_channels) == status


def test_decode_reads_only_the_polled_spans() -> None:
    status = _status()
    full = _image(status)
    sparse = [0] * IR.END
    for start, count in status_spans(6):
        sparse[start : start + count] = full[start : start + count]
    assert decode_status(sparse, 4, 6) == status


# -- status validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("register", "value", "reason"),
    [
        (IR.DISPLAYED + 2, 77, "unknown signal code"),
        (IR.STATUS, 9, "unknown cabinet status"),
        (IR.FAULT, 12, "unknown fault code"),
        (IR.MAP_VERSION, 2, "map version 1 expected"),
        (IR.N_GROUPS, 5, "expected 4"),
        (IR.N_CHANNELS, 8, "expected 6"),
        (IR.FAULT_GROUP_B, 9, "no group 9"),
        (IR.PRESENCE, 0b1100_0000, "presence set for a channel"),
        (IR.PRESENCE + 1, 1, "presence set for a channel"),
        (IR.LAST_HEARTBEAT, 70_000, "not a 16-bit register value"),
        (IR.DET_COUNT + 3, -1, "not a 16-bit register value"),
    ],
)
def test_bad_register_is_a_register_error(register: int, value: int, reason: str) -> None:
    image = _image(_status())
    image[register] = value
    with pytest.raises(RegisterError) as info:
        decode_status(image, 4, 6)
    err = info.value
    assert (err.register, err.value, err.table) == (register, value, "IR")
    assert reason in err.reason
    assert str(register) in str(err) and str(value) in str(err)


@pytest.mark.parametrize(
    ("register", "value", "reason"),
    [
        (IR.DISPLAYED + 2, 77, "unknown signal code"),
        (IR.STATUS, 9, "unknown cabinet status"),
        (IR.MAP_VERSION, 2, "map version 1 expected"),
        (IR.N_CHANNELS, 8, "expected 6"),
        (IR.FAULT_GROUP_B, 9, "no group 9"),
        (IR.PRESENCE, 0b1100_0000, "presence set for a channel"),
    ],
)
def test_an_unpacked_image_skips_only_the_16_bit_check(
    register: int, value: int, reason: str
) -> None:
    """``unpacked=True`` (registers that came out of Modbus frames) decodes the same status and
    still judges every value the map constrains."""
    image = _image(_status())
    assert decode_status(image, 4, 6, unpacked=True) == decode_status(image, 4, 6)
    image[register] = value
    with pytest.raises(RegisterError, match=reason):
        decode_status(image, 4, 6, unpacked=True)


def test_register_error_names_the_register() -> None:
    image = _image(_status())
    image[IR.DISPLAYED + 2] = 77
    with pytest.raises(RegisterError, match=r"IR 18 \(displayed\[2\]\) = 77: unknown signal code"):
        decode_status(image, 4, 6)


def test_decode_without_expectations_takes_the_cabinets_numbers() -> None:
    status = _status(n_groups=3, n_channels=0)
    assert decode_status(_image(status)) == status


def test_short_image_is_an_error_not_a_crash() -> None:
    with pytest.raises(RegisterError, match="too short"):
        decode_status([1, 4, 6], 4, 6)
    image = _image(_status())[: IR.DET_OCCUPANCY + 2]
    with pytest.raises(RegisterError, match="too short"):
        decode_status(image, 4, 6)


def test_encode_refuses_what_does_not_fit() -> None:
    with pytest.raises(RegisterError):
        encode_status(_status(uptime_s=2**32))
    with pytest.raises(RegisterError):
        encode_status(_status(fault_groups=(4,)))
    bad = (DetectorReading(70000, 0, False), *_status().detectors[1:])
    with pytest.raises(RegisterError):
        encode_status(_status(detectors=bad))


def test_presence_bitmap_bit_order() -> None:
    presence = [False] * 64
    presence[0] = presence[17] = presence[63] = True
    assert presence_bitmap(presence) == [1, 2, 0, 0x8000]


# -- outputs --------------------------------------------------------------------------------


def test_encode_outputs_layout() -> None:
    regs = encode_outputs([Signal.GREEN, Signal.RED, Signal.YELLOW], heartbeat=513, command=2)
    assert regs[HR.HEARTBEAT] == 513 and regs[HR.COMMAND] == 2 and regs[HR.COMMIT] == 513
    assert regs[3 : HR.OUTPUTS] == [0] * 13
    assert regs[HR.OUTPUTS :] == [3, 1, 4]
    frame = parse_output_frame(regs + [0] * (HR.END - len(regs)), 3)
    assert frame.committed
    assert (frame.heartbeat, frame.command, frame.outputs) == (513, Command.LOCAL_PLAN, (3, 1, 4))


@pytest.mark.parametrize(
    ("signals", "heartbeat", "command", "register"),
    [
        ([1, 77, 1], 1, 0, HR.OUTPUTS + 1),
        ([1, 1, -1], 1, 0, HR.OUTPUTS + 2),
        ([1, 1, 1], 65536, 0, HR.HEARTBEAT),
        ([1, 1, 1], 1, 4, HR.COMMAND),
        ([], 1, 0, HR.OUTPUTS),
        ([1] * 33, 1, 0, HR.OUTPUTS),
    ],
)
def test_encode_outputs_validates(
    signals: list[int], heartbeat: int, command: int, register: int
) -> None:
    with pytest.raises(RegisterError) as info:
        encode_outputs(signals, heartbeat, command)
    assert info.value.register == register and info.value.table == "HR"


def test_uncommitted_frame() -> None:
    regs = encode_outputs([1, 1], heartbeat=7)
    regs[HR.COMMIT] = 6
    assert not parse_output_frame(regs, 2).committed


# -- detector deltas ------------------------------------------------------------------------
