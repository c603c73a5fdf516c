"""The ZAP binary protocol (SPEC §8): framing, kinds, opcodes and bodies.

Shared by the server (``cluster/api/zap/``) and the client library
(``tasks/``), so that both sides agree byte for byte on one table of opcodes
and one set of framing rules. Only the standard library and msgpack are used:
the client imports this module, and it must not pull server code in.

A frame (SPEC §8.1)::

    offset size  field
    0      4     length   u32 BE = bytes after this field (8 + body)
    4      1     version  u8 = 1
    5      1     kind     u8: 1 request, 2 response, 3 push, 4 push-ack
    6      2     opcode   u16 BE
    8      4     id       u32 BE, never 0
    12     L-8   body     msgpack map (empty = {})

Reading is split in two so that each side can react as §8.1 demands:
:func:`read_frame` / :class:`FrameReader` check the header and raise a typed
error (:class:`ProtocolError` = close, :class:`FrameTooLarge` = 413 then close,
:class:`BadVersion` = 400 then close) and return the body *raw*;
:func:`decode_body` then parses it and raises :class:`BadBody` (= 400, the
connection stays open). Pass ``accept_kinds`` to say which kinds the peer may
send: the server accepts :data:`CLIENT_KINDS`, a client :data:`SERVER_KINDS`.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack
from hanzo_tasks.protocol.errors import CODE_STATUS
from hanzo_tasks.protocol.nesting import depth_message

__all__ = [
    "CLIENT_KINDS",
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "MAX_FRAME_ID",
    "MAX_IN_FLIGHT",
    "MIN_LENGTH",
    "OPCODES",
    "OPCODE_NUMBERS",
    "PUSH",
    "PUSH_ACK",
    "PUSH_OPCODES",
    "REQUEST",
    "REQUEST_OPCODES",
    "RESPONSE",
    "SERVER_KINDS",
    "VERSION",
    "WORKER_OPCODES",
    "BadBody",
    "BadVersion",
    "BodyLimits",
    "Frame",
    "FrameReader",
    "FrameTooLarge",
    "HELLO_LIMITS",
    "Header",
    "Op",
    "ProtocolError",
    "ZapError",
    "check_body",
    "decode_body",
    "encode_body",
    "encode_frame",
    "error_body",
    "opcode_name",
    "parse_header",
    "parse_response",
    "push_ack_body",
    "read_frame",
    "response_body",
]

VERSION = 1
"""The only protocol version; any other is answered 400 and the connection closed."""

REQUEST = 1
RESPONSE = 2
PUSH = 3
PUSH_ACK = 4

CLIENT_KINDS: frozenset[int] = frozenset({REQUEST, PUSH_ACK})
"""Kinds a client may send; anything else from a client closes the connection."""
SERVER_KINDS: frozenset[int] = frozenset({RESPONSE, PUSH})
"""Kinds a server may send (a client rejects the others)."""

HEADER_SIZE = 12
"""The length field (4) plus version, kind, opcode and id (8)."""
MIN_LENGTH = 8
"""The smallest legal value of the length field: a header with an empty body."""
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
"""``limits.max_frame`` default: the largest accepted value of the length field."""
MAX_FRAME_ID = 0xFFFF_FFFF
MAX_IN_FLIGHT = 256
"""Requests one connection may have in flight; the 257th is answered 429."""

_LEN = struct.Struct(">I")
_REST = struct.Struct(">BBHI")  # version, kind, opcode, id
_HEADER = struct.Struct(">IBBHI")


class Op(IntEnum):
    """Every opcode of SPEC §8.4 (requests) and §8.5 (server pushes).

    This enum *is* the opcode table: :data:`OPCODES` and :data:`OPCODE_NUMBERS`
    are derived from it, so a number can never have two names.
    """

    Hello = 0x0001
    SubmitTask = 0x0050
    ScheduleRecurring = 0x0051
    StartWorkflow = 0x0060
    SignalWorkflow = 0x0061
    CancelWorkflow = 0x0062
    TerminateWorkflow = 0x0063
    DescribeWorkflow = 0x0064
    ListWorkflows = 0x0065
    GetWorkflowHistory = 0x0066
    QueryWorkflow = 0x0067
    ResetWorkflow = 0x0068
    SignalWithStart = 0x0069
    ScheduleActivity = 0x006B
    GetWorkflowResult = 0x006C
    CreateSchedule = 0x0070
    DeleteSchedule = 0x0071
    ListSchedules = 0x0072
    PauseSchedule = 0x0073
    UnpauseSchedule = 0x0074
    TriggerSchedule = 0x0075
    DescribeSchedule = 0x0076
    UpdateSchedule = 0x0077
    RegisterNamespace = 0x0080
    DescribeNamespace = 0x0081
    ListNamespaces = 0x0082
    Health = 0x0090
    SubscribeWorkflowTasks = 0x00A0
    SubscribeActivityTasks = 0x00A1
    RespondWorkflowTaskCompleted = 0x00A2
    RespondActivityTaskCompleted = 0x00A3
    RespondActivityTaskFailed = 0x00A4
    RecordHeartbeat = 0x00A5
    Unsubscribe = 0x00A6
    RespondWorkflowTaskFailed = 0x00A7
    DeliverWorkflowTask = 0x00B0
    DeliverActivityTask = 0x00B1
    DeliverActivityResult = 0x00B2
    DeliverCancelRequest = 0x00B3
    DeliverQuery = 0x00B4
    RespondQuery = 0x00C4


OPCODES: dict[int, str] = {int(op): op.name for op in Op}
"""Opcode number -> name (the ``opcode`` label of the tasks_zap_* metrics)."""
OPCODE_NUMBERS: dict[str, int] = {op.name: int(op) for op in Op}
"""Opcode name -> number."""

PUSH_OPCODES: frozenset[int] = frozenset(
    {Op.DeliverWorkflowTask, Op.DeliverActivityTask, Op.DeliverActivityResult,
     Op.DeliverCancelRequest, Op.DeliverQuery}
)
"""Opcodes the server sends as kind 3 (and the client acknowledges as kind 4)."""
REQUEST_OPCODES: frozenset[int] = frozenset(int(op) for op in Op) - PUSH_OPCODES
"""Opcodes a client sends as kind 1."""
WORKER_OPCODES: frozenset[int] = frozenset(
    {Op.ScheduleActivity, Op.SubscribeWorkflowTasks, Op.SubscribeActivityTasks,
     Op.RespondWorkflowTaskCompleted, Op.RespondActivityTaskCompleted,
     Op.RespondActivityTaskFailed, Op.RecordHeartbeat, Op.Unsubscribe,
     Op.RespondWorkflowTaskFailed, Op.RespondQuery}
)
"""Request opcodes used by workers (task delivery and responses)."""


def opcode_name(opcode: int) -> str:
    """The opcode's name, or ``0x....`` for a number outside the table."""
    return OPCODES.get(opcode, f"0x{opcode:04X}")


# ---------------------------------------------------------------------------
# errors


class ZapError(Exception):
    """Base of every framing or body error of this module."""


class ProtocolError(ZapError):
    """The byte stream cannot be trusted any more: close without answering.

    Length under 8, a kind the peer may not send, id 0, a truncated frame.
    """


class FrameTooLarge(ZapError):
    """The length field is over ``max_frame``: answer 413 for ``frame_id``, then close.

    Only the header was read; the body is still on the wire, which is why the
    connection cannot continue.
    """

    def __init__(self, frame_id: int, opcode: int, length: int, max_frame: int) -> None:
        super().__init__(f"frame of {length} bytes is over max_frame {max_frame}")
        self.frame_id = frame_id
        self.opcode = opcode
        self.length = length
        self.max_frame = max_frame


class BadVersion(ZapError):
    """Version is not 1: answer 400 "unsupported version" for ``frame_id``, then close.

    A later version may frame differently, so nothing after the header is read.
    ``frame_id`` may be 0 (then nothing can be answered; just close).
    """

    def __init__(self, frame_id: int, opcode: int, version: int) -> None:
        super().__init__(f"unsupported version {version}")
        self.frame_id = frame_id
        self.opcode = opcode
        self.version = version


class BadBody(ZapError):
    """The body is not msgpack, not a map, or holds bin/ext: answer 400, stay open."""


# ---------------------------------------------------------------------------
# frames


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed 12 bytes of a frame, as numbers."""

    length: int
    version: int
    kind: int
    opcode: int
    frame_id: int

    @property
    def body_length(self) -> int:
        return self.length - MIN_LENGTH


@dataclass(frozen=True, slots=True)
class Frame:
    """A checked header and its body, still raw (see :func:`decode_body`)."""

    kind: int
    opcode: int
    frame_id: int
    body: bytes
    version: int = VERSION


def parse_header(
    data: bytes,
    max_frame: int = DEFAULT_MAX_FRAME,
    accept_kinds: Collection[int] = CLIENT_KINDS,
) -> Header:
    """Check the 12 header bytes against §8.1, in the order that decides the answer.

    1. length < 8 -> :class:`ProtocolError` (no id can be trusted).
    2. version != 1 -> :class:`BadVersion` (the rest may mean something else).
    3. a kind not in ``accept_kinds``, or id 0 -> :class:`ProtocolError`.
    4. length > ``max_frame`` -> :class:`FrameTooLarge`.
    """
    if len(data) != HEADER_SIZE:
        raise ValueError(f"a header is {HEADER_SIZE} bytes, got {len(data)}")
    length, version, kind, opcode, frame_id = _HEADER.unpack(data)
    if length < MIN_LENGTH:
        raise ProtocolError(f"length {length} is under {MIN_LENGTH}")
    if version != VERSION:
        raise BadVersion(frame_id, opcode, version)
    if kind not in accept_kinds:
        raise ProtocolError(f"kind {kind} is not accepted here")
    if frame_id == 0:
        raise ProtocolError("frame id 0")
    if length > max_frame:
        raise FrameTooLarge(frame_id, opcode, length, max_frame)
    return Header(length, version, kind, opcode, frame_id)


def encode_frame(kind: int, opcode: int, frame_id: int, body_map: Any = None) -> bytes:
    """One frame's bytes. ``body_map`` None or ``{}`` gives the empty body (length 8).

    The body is msgpack with the str/bin distinction on (``use_bin_type``); the
    caller passes JSON-like values only (a bytes value would make the peer
    reject the body, as §0 forbids bin).
    """
    if kind not in (REQUEST, RESPONSE, PUSH, PUSH_ACK):
        raise ValueError(f"kind must be 1..4, not {kind}")
    if not 0 <= opcode <= 0xFFFF:
        raise ValueError(f"opcode {opcode} does not fit in u16")
    if not 1 <= frame_id <= MAX_FRAME_ID:
        raise ValueError(f"frame id {frame_id} must be in 1..2**32-1")
    body = encode_body(body_map)
    length = MIN_LENGTH + len(body)
    if length > 0xFFFF_FFFF:
        raise ValueError("body too large for a u32 length")
    return _HEADER.pack(length, VERSION, kind, opcode, frame_id) + body


def encode_body(body_map: Any) -> bytes:
    """A body map as msgpack; the empty map is the empty body."""
    if body_map is None or (isinstance(body_map, dict) and not body_map):
        return b""
    if not isinstance(body_map, dict):
        raise TypeError(f"a ZAP body is a map, not {type(body_map).__name__}")
    packed: bytes = msgpack.packb(body_map, use_bin_type=True)
    return packed


async def read_frame(
    reader: asyncio.StreamReader,
    max_frame: int = DEFAULT_MAX_FRAME,
    accept_kinds: Collection[int] = CLIENT_KINDS,
) -> Frame | None:
    """The next frame from a stream, or None on a clean end of stream between frames.

    The length field is read alone first, so a length under 8 is rejected
    before reading further (a peer sending garbage gets no chance to make the
    reader wait for bytes it will never send). End of stream inside a frame is
    a :class:`ProtocolError`. The body of an oversized or bad-version frame is
    never read.
    """
    try:
        first = await reader.readexactly(_LEN.size)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise ProtocolError("end of stream inside a frame header") from None
    (length,) = _LEN.unpack(first)
    if length < MIN_LENGTH:
        raise ProtocolError(f"length {length} is under {MIN_LENGTH}")
    try:
        rest = await reader.readexactly(_REST.size)
    except asyncio.IncompleteReadError:
        raise ProtocolError("end of stream inside a frame header") from None
    header = parse_header(first + rest, max_frame, accept_kinds)
    try:
        body = await reader.readexactly(header.body_length) if header.body_length else b""
    except asyncio.IncompleteReadError:
        raise ProtocolError("end of stream inside a frame body") from None
    return Frame(header.kind, header.opcode, header.frame_id, body, header.version)


class FrameReader:
    """Incremental (sans-I/O) frame parser: ``feed`` bytes, then drain ``next_frame``.

    For transports that are not asyncio streams (a blocking socket in a thread,
    a protocol callback). It applies exactly the checks of :func:`read_frame`;
    after it has raised, the stream is unusable and the reader stays failed.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, accept_kinds: Collection[int] = CLIENT_KINDS) -> None:
        self.max_frame = max_frame
        self.accept_kinds = frozenset(accept_kinds)
        self._buf = bytearray()
        self._header: Header | None = None
        self._failed: ZapError | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buf)

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        if self._failed is not None:
            raise self._failed
        try:
            if self._header is None:
                if len(self._buf) >= _LEN.size:
                    (length,) = _LEN.unpack_from(self._buf)
                    if length < MIN_LENGTH:
                        raise ProtocolError(f"length {length} is under {MIN_LENGTH}")
                if len(self._buf) < HEADER_SIZE:
                    return None
                self._header = parse_header(bytes(self._buf[:HEADER_SIZE]), self.max_frame, self.accept_kinds)
                del self._buf[:HEADER_SIZE]
            h = self._header
            if len(self._buf) < h.body_length:
                return None
            body = bytes(self._buf[: h.body_length])
            del self._buf[: h.body_length]
            self._header = None
            return Frame(h.kind, h.opcode, h.frame_id, body, h.version)
        except ZapError as e:
            self._failed = e
            raise

    def eof(self) -> None:
        """The stream ended: a :class:`ProtocolError` when a frame was cut short."""
        if self._failed is None and (self._header is not None or self._buf):
            self._failed = ProtocolError("end of stream inside a frame")
            raise self._failed


# ---------------------------------------------------------------------------
# bodies


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """What one body may hold, judged while it is decoded (before a too-long
    array, map or string is built) and, for nesting, by one bounded walk.

    msgpack itself refuses a length only against the size of the buffer (an
    array header claiming 16M items in a 16 MiB frame passes, and 16M Nones are
    built), and it has no depth limit below its own stack of 1024, deep enough
    to overflow Python's recursion later, in code that renders the record.
    """

    max_str_len: int
    """Longest string (UTF-8 bytes), map keys included."""
    max_items: int
    """Most elements of one array or entries of one map."""
    max_depth: int
    """Deepest nesting of arrays and maps; the body map itself is depth 1."""


HELLO_LIMITS = BodyLimits(max_str_len=16 * 1024, max_items=32, max_depth=4)
"""For a body that arrives before the session is authenticated (HELLO, and any
frame sent before it): a HELLO is a handful of short strings and a token."""


def decode_body(raw: bytes, limits: BodyLimits | None = None) -> dict[str, Any]:
    """Parse a body: a msgpack map of JSON-like values, else :class:`BadBody`.

    Empty means ``{}``. Rejected: invalid msgpack, trailing bytes, a top level
    that is not a map, and anywhere inside: bin, ext (timestamps included),
    non-string map keys, invalid UTF-8 and non-finite floats. These are what
    JSON cannot hold (SPEC §0 "Payloads"), so a ZAP body always means the same
    as the HTTP body it is translated into. With ``limits``, a string, array or
    map over its length limit is refused from its header, before it is built,
    and nesting deeper than ``limits.max_depth`` is refused too.
    """
    if not raw:
        return {}
    bounds: dict[str, int] = {}
    if limits is not None:
        bounds = {"max_str_len": limits.max_str_len, "max_array_len": limits.max_items,
                  "max_map_len": limits.max_items, "max_bin_len": 0, "max_ext_len": 0}
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=False, ext_hook=_no_ext, **bounds)
    except BadBody:
        raise
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as e:
        # ExtraData, FormatError, StackError and UnicodeDecodeError are ValueErrors.
        text = str(e)
        if "exceeds max_" in text:  # msgpack's words for a length over a limit
            raise BadBody(f"body holds a string, array or map over its limit: {text}") from None
        raise BadBody(f"body is not valid msgpack: {type(e).__name__}") from None
    if not isinstance(value, dict):
        raise BadBody(f"body must be a map, not {_kind_name(value)}")
    check_body(value, limits.max_depth if limits is not None else None)
    return value


def _no_ext(code: int, data: bytes) -> Any:
    raise BadBody(f"msgpack ext type {code} is not allowed")


def check_body(value: Any, max_depth: int | None = None) -> None:
    """Raise :class:`BadBody` if ``value`` holds anything JSON cannot, or nests
    deeper than ``max_depth`` (``value`` itself is depth 1). Iterative: no
    recursion limit; only containers are stacked, so the walk costs about one
    type test per value."""
    limit = max_depth if max_depth is not None else -1
    _check_value(value)
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, list | tuple | dict) else []
    while stack:
        v, depth = stack.pop()
        if depth > limit >= 0:
            raise BadBody(depth_message(limit))
        if isinstance(v, dict):
            for k in v:
                if type(k) is not str:
                    raise BadBody(f"map keys must be strings, not {_kind_name(k)}")
            items: Any = v.values()
        else:
            items = v
        for item in items:
            t = type(item)
            if t is str or t is int or item is None or t is bool:
                continue
            if t is list or t is dict or t is tuple:
                stack.append((item, depth + 1))
            else:
                _check_value(item)
                if isinstance(item, list | tuple | dict):
                    stack.append((item, depth + 1))


def _check_value(v: Any) -> None:
    """One value that is not a container: JSON must be able to hold it."""
    if v is None or isinstance(v, bool | int | str | list | tuple | dict):
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise BadBody("non-finite floats are not allowed")
        return
    raise BadBody(f"{_kind_name(v)} values are not allowed")


def _kind_name(v: Any) -> str:
    if isinstance(v, bytes | bytearray):
        return "bin"
    if isinstance(v, msgpack.ExtType | msgpack.Timestamp):
        return "ext"
    if isinstance(v, list | tuple):
        return "array"
    if isinstance(v, dict):
        return "map"
    if v is None:
        return "nil"
    return type(v).__name__


# One table of codes and statuses for every transport (protocol.errors is stdlib-only).
_CODE_STATUS: dict[str, int] = CODE_STATUS


def response_body(status: int, body: Any) -> dict[str, Any]:
    """A success response body (SPEC §8.2): ``{status, body}``."""
    return {"status": status, "body": body}


def error_body(
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    status: int | None = None,
    retry_after: int | None = None,
) -> dict[str, Any]:
    """An error response body: ``{status, body: null, error: {code, message, details?}}``.

    ``status`` defaults to the code's status (§4.1). ``retry_after`` (seconds)
    is an extension for 429/503, the ZAP counterpart of HTTP's Retry-After.
    """
    err: dict[str, Any] = {"code": code, "message": message}
    if details:
        err["details"] = details
    if retry_after is not None:
        err["retry_after"] = retry_after
    return {"status": status if status is not None else _CODE_STATUS.get(code, 500), "body": None, "error": err}


def push_ack_body(status: int, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A push-ack body (§8.2): ``{status: 200 | 429 | 400, error?}``."""
    out: dict[str, Any] = {"status": status}
    if error is not None:
        out["error"] = error
    return out


def parse_response(body: dict[str, Any]) -> tuple[int, Any, dict[str, Any] | None]:
    """``(status, body, error)`` of a decoded response body; :class:`BadBody` if malformed.

    For clients: a status other than 2xx always comes with an ``error`` map
    holding at least a string ``code`` and ``message``.
    """
    status = body.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        raise BadBody("response without an integer status")
    err = body.get("error")
    if err is not None:
        if not isinstance(err, dict) or not isinstance(err.get("code"), str) or not isinstance(err.get("message"), str):
            raise BadBody("response error must be {code, message, details?}")
    elif not 200 <= status < 300:
        raise BadBody(f"response status {status} without an error")
    return status, body.get("body"), err
