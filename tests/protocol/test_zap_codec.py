"""The ZAP codec (SPEC §8.1, §8.2): frame layout, header checks, body checks.

Pure unit tests of ``protocol/zap.py``; the server's use of it is covered by
tests/cluster/api/zap/test_zap_server.py against a real node.
"""

from __future__ import annotations

import asyncio
import math
import struct

import msgpack
import pytest
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.errors import CODE_STATUS
from hypothesis import given, settings
from hypothesis import strategies as st

# SPEC §8.4 / §8.5, copied by hand: the table in the code must match the spec.
SPEC_OPCODES = {
    0x0001: "Hello", 0x0050: "SubmitTask", 0x0051: "ScheduleRecurring",
    0x0060: "StartWorkflow", 0x0061: "SignalWorkflow", 0x0062: "CancelWorkflow",
    0x0063: "TerminateWorkflow", 0x0064: "DescribeWorkflow", 0x0065: "ListWorkflows",
    0x0066: "GetWorkflowHistory", 0x0067: "QueryWorkflow", 0x0068: "ResetWorkflow",
    0x0069: "SignalWithStart", 0x006B: "ScheduleActivity", 0x006C: "GetWorkflowResult",
    0x0070: "CreateSchedule",
    0x0071: "DeleteSchedule", 0x0072: "ListSchedules", 0x0073: "PauseSchedule",
    0x0074: "UnpauseSchedule", 0x0075: "TriggerSchedule", 0x0076: "DescribeSchedule",
    0x0077: "UpdateSchedule", 0x0080: "RegisterNamespace", 0x0081: "DescribeNamespace",
    0x0082: "ListNamespaces", 0x0090: "Health", 0x00A0: "SubscribeWorkflowTasks",
    0x00A1: "SubscribeActivityTasks", 0x00A2: "RespondWorkflowTaskCompleted",
    0x00A3: "RespondActivityTaskCompleted", 0x00A4: "RespondActivityTaskFailed",
    0x00A5: "RecordHeartbeat", 0x00A6: "Unsubscribe", 0x00A7: "RespondWorkflowTaskFailed",
    0x00B0: "DeliverWorkflowTask", 0x00B1: "DeliverActivityTask", 0x00B2: "DeliverActivityResult",
    0x00B3: "DeliverCancelRequest", 0x00B4: "DeliverQuery", 0x00C4: "RespondQuery",
}


def header(length: int, version: int = 1, kind: int = 1, opcode: int = 0x90, fid: int = 1) -> bytes:
    return struct.pack(">IBBHI", length, version, kind, opcode, fid)


def read_all(data: bytes, max_frame: int = Z.DEFAULT_MAX_FRAME, kinds=Z.CLIENT_KINDS) -> list[Z.Frame]:
    """Frames of ``data`` through the asyncio reader, until a clean end of stream."""

    async def go() -> list[Z.Frame]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        out: list[Z.Frame] = []
        while (f := await Z.read_frame(reader, max_frame, kinds)) is not None:
            out.append(f)
        return out

    return asyncio.run(go())


def reader_all(data: bytes, max_frame: int = Z.DEFAULT_MAX_FRAME, kinds=Z.CLIENT_KINDS, step: int = 1) -> list[Z.Frame]:
    """The same through the incremental reader, fed ``step`` bytes at a time."""
    r = Z.FrameReader(max_frame, kinds)
    out: list[Z.Frame] = []
    for i in range(0, len(data), step):
        r.feed(data[i : i + step])
        while (f := r.next_frame()) is not None:
            out.append(f)
    r.eof()
    return out


# ---------------------------------------------------------------------------
# opcode table


def test_opcode_table_is_the_spec_table() -> None:
    assert Z.OPCODES == SPEC_OPCODES
    assert {v: k for k, v in Z.OPCODES.items()} == Z.OPCODE_NUMBERS
    assert Z.Op.StartWorkflow == 0x0060 and Z.Op(0x0090).name == "Health"
    assert Z.PUSH_OPCODES == {0xB0, 0xB1, 0xB2, 0xB3, 0xB4}
    assert Z.REQUEST_OPCODES | Z.PUSH_OPCODES == set(SPEC_OPCODES)
    assert Z.WORKER_OPCODES == {0x6B, 0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xC4}
    assert Z.opcode_name(0x0064) == "DescribeWorkflow" and Z.opcode_name(0x1234) == "0x1234"
    assert (Z.REQUEST, Z.RESPONSE, Z.PUSH, Z.PUSH_ACK) == (1, 2, 3, 4)


def test_status_table_matches_errors() -> None:
    for code, status in CODE_STATUS.items():
        assert Z.error_body(code, "m")["status"] == status


# ---------------------------------------------------------------------------
# encoding


def test_frame_layout_is_exact() -> None:
    assert Z.encode_frame(Z.REQUEST, 0x0001, 7, {}) == bytes.fromhex("00000008" "01" "01" "0001" "00000007")
    assert Z.encode_frame(Z.REQUEST, 0x0001, 7, None) == Z.encode_frame(Z.REQUEST, 0x0001, 7, {})
    frame = Z.encode_frame(Z.RESPONSE, 0x0090, 0xFFFFFFFF, {"a": 1})
    body = msgpack.packb({"a": 1})
    assert frame == struct.pack(">IBBHI", 8 + len(body), 1, 2, 0x90, 0xFFFFFFFF) + body
    # "length" counts the bytes after itself: 8 header bytes + body.
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4


@pytest.mark.parametrize(
    "kind, opcode, fid",
    [(0, 1, 1), (5, 1, 1), (1, -1, 1), (1, 0x10000, 1), (1, 1, 0), (1, 1, 2**32), (1, 1, -1)],
)
def test_encode_rejects_bad_header_fields(kind: int, opcode: int, fid: int) -> None:
    with pytest.raises(ValueError):
        Z.encode_frame(kind, opcode, fid, {})


def test_encode_rejects_a_body_that_is_not_a_map() -> None:
    with pytest.raises(TypeError):
        Z.encode_frame(Z.REQUEST, 1, 1, [1, 2])  # type: ignore[arg-type]


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(Z.CLIENT_KINDS)),
    opcode=st.integers(0, 0xFFFF),
    fid=st.integers(1, 2**32 - 1),
    body=st.dictionaries(st.text(max_size=10), JSONISH, max_size=6),
    step=st.integers(1, 64),
)
def test_round_trip(kind: int, opcode: int, fid: int, body: dict, step: int) -> None:
    data = Z.encode_frame(kind, opcode, fid, body) + Z.encode_frame(kind, opcode, fid, {})
    for frames in (read_all(data), reader_all(data, step=step)):
        assert [(f.kind, f.opcode, f.frame_id, f.version) for f in frames] == [(kind, opcode, fid, 1)] * 2
        assert Z.decode_body(frames[0].body) == body
        assert Z.decode_body(frames[1].body) == {}


def test_client_side_accepts_server_kinds() -> None:
    data = Z.encode_frame(Z.RESPONSE, 0x90, 3, Z.response_body(200, {})) + Z.encode_frame(Z.PUSH, 0xB0, 9, {"x": 1})
    frames = read_all(data, kinds=Z.SERVER_KINDS)
    assert [(f.kind, f.frame_id) for f in frames] == [(2, 3), (3, 9)]
    with pytest.raises(Z.ProtocolError):
        read_all(Z.encode_frame(Z.REQUEST, 1, 1, {}), kinds=Z.SERVER_KINDS)


# ---------------------------------------------------------------------------
# header errors (§8.1 table), for both readers


READERS = [read_all, reader_all]


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize("length", [0, 1, 7])
def test_length_under_8_is_a_protocol_error(read, length: int) -> None:
    with pytest.raises(Z.ProtocolError):
        read(struct.pack(">I", length) + b"\x00" * 20)


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize("kind", [0, 2, 3, 5, 255])
def test_kind_not_1_or_4_from_a_client_is_a_protocol_error(read, kind: int) -> None:
    with pytest.raises(Z.ProtocolError):
        read(header(8, kind=kind))


@pytest.mark.parametrize("read", READERS)
def test_id_0_is_a_protocol_error(read) -> None:
    with pytest.raises(Z.ProtocolError):
        read(header(8, fid=0))


@pytest.mark.parametrize("read", READERS)
def test_oversized_frame_names_its_id_and_reads_no_body(read) -> None:
    with pytest.raises(Z.FrameTooLarge) as ei:
        read(header(1025, opcode=0x60, fid=42), max_frame=1024)  # no body follows: none is needed
    assert (ei.value.frame_id, ei.value.opcode, ei.value.length) == (42, 0x60, 1025)
    exactly = read(header(1024, fid=1) + b"\x00" * 1016, max_frame=1024)  # length == max_frame is fine
    assert [(f.frame_id, len(f.body)) for f in exactly] == [(1, 1016)]


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize("version", [0, 2, 255])
def test_other_versions_are_rejected_with_their_id(read, version: int) -> None:
    with pytest.raises(Z.BadVersion) as ei:
        read(header(8 + 100, version=version, fid=5, opcode=0x90))  # body absent: not read
    assert (ei.value.frame_id, ei.value.version, ei.value.opcode) == (5, version, 0x90)


def test_check_order_version_before_kind_and_size() -> None:
    with pytest.raises(Z.BadVersion):
        Z.parse_header(header(2**31, version=2, kind=3), max_frame=1024)
    with pytest.raises(Z.ProtocolError):
        Z.parse_header(header(2**31, kind=3), max_frame=1024)
    with pytest.raises(Z.ProtocolError):
        Z.parse_header(header(4, version=2), max_frame=1024)


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize("cut", [1, 3, 4, 11, 12, 15])
def test_truncated_frame_is_a_protocol_error(read, cut: int) -> None:
    data = Z.encode_frame(Z.REQUEST, 0x90, 1, {"abc": "defgh"})
    with pytest.raises(Z.ProtocolError):
        read(data[:cut])


def test_clean_end_of_stream_between_frames_is_none() -> None:
    assert read_all(b"") == []
    assert reader_all(b"") == []


def test_frame_reader_stays_failed() -> None:
    r = Z.FrameReader()
    r.feed(header(8, fid=0))
    with pytest.raises(Z.ProtocolError):
        r.next_frame()
    r.feed(Z.encode_frame(Z.REQUEST, 1, 1, {}))
    with pytest.raises(Z.ProtocolError):
        r.next_frame()


def test_frame_reader_rejects_short_length_before_the_header_is_complete() -> None:
    r = Z.FrameReader()
    r.feed(struct.pack(">I", 3))
    with pytest.raises(Z.ProtocolError):
        r.next_frame()


# ---------------------------------------------------------------------------
# bodies


def test_empty_bodies_are_empty_maps() -> None:
    assert Z.decode_body(b"") == {}
    assert Z.decode_body(b"\x80") == {}


@pytest.mark.parametrize(
    "raw",
    [
        msgpack.packb([1, 2]),
        msgpack.packb("text"),
        msgpack.packb(None),
        msgpack.packb(3),
        msgpack.packb(b"bytes", use_bin_type=True),
        msgpack.packb({"a": b"x"}, use_bin_type=True),
        msgpack.packb({"a": [1, {"b": [b"deep"]}]}, use_bin_type=True),
        msgpack.packb({b"key": 1}, use_bin_type=True),
        msgpack.packb({1: 1}),
        msgpack.packb({"a": msgpack.ExtType(3, b"x")}),
        b"\x81\xa1a\x91\xd4\xfb\x00",                # {"a": [ext type -5]}
        msgpack.packb({"t": msgpack.Timestamp(1, 0)}),
        msgpack.packb({"f": math.nan}),
        msgpack.packb({"f": [math.inf]}),
        b"\xc1",                                   # never-used byte
        b"\x81\xa1a",                              # map missing its value
        msgpack.packb({"a": 1}) + b"\x00",         # trailing bytes
        b"\x81\xa1a\xa3\xff\xfe\xfd",              # invalid UTF-8 string
        b"\x81\xa1a" + b"\x91" * 5000 + b"\xc0",   # nesting beyond msgpack's stack
    ],
)
def test_bad_bodies(raw: bytes) -> None:
    with pytest.raises(Z.BadBody):
        Z.decode_body(raw)


def test_deep_but_valid_body_does_not_hit_recursion() -> None:
    value: object = "leaf"
    for _ in range(900):
        value = [value]
    assert Z.decode_body(msgpack.packb({"v": value}))["v"] is not None
    Z.check_body({"v": value})


def test_values_json_can_hold_are_accepted() -> None:
    body = {"n": None, "b": True, "i": -(2**63), "u": 2**64 - 1, "f": 1.5, "s": "é", "l": [1, "x"], "m": {"k": {}}}
    assert Z.decode_body(msgpack.packb(body)) == body


# ---------------------------------------------------------------------------
# response helpers


def test_response_and_error_bodies() -> None:
    assert Z.response_body(200, {"x": 1}) == {"status": 200, "body": {"x": 1}}
    assert Z.error_body("not_found", "nope") == {
        "status": 404, "body": None, "error": {"code": "not_found", "message": "nope"}
    }
    err = Z.error_body("already_started", "dup", {"workflowId": "w", "runId": "r"})
    assert err["status"] == 409 and err["error"]["details"] == {"workflowId": "w", "runId": "r"}
    assert Z.error_body("rate_limited", "slow", retry_after=2)["error"]["retry_after"] == 2
    assert Z.error_body("mystery", "?")["status"] == 500
    assert Z.push_ack_body(200) == {"status": 200}
    assert Z.push_ack_body(429, {"code": "rate_limited", "message": "busy"})["error"]["code"] == "rate_limited"


def test_parse_response() -> None:
    assert Z.parse_response({"status": 200, "body": {"a": 1}}) == (200, {"a": 1}, None)
    status, body, err = Z.parse_response(Z.error_body("not_found", "x"))
    assert (status, body, err) == (404, None, {"code": "not_found", "message": "x"})
    for bad in ({}, {"status": "200"}, {"status": 404, "body": None}, {"status": 400, "error": {"code": 1}}):
        with pytest.raises(Z.BadBody):
            Z.parse_response(bad)
