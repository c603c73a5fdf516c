"""Turning client JSON into validated internal values (SPEC §0, §1, §4.1).

Every function raises ``ApiError(invalid_argument)`` with a message that names
the field, so that bad input is a clear 400 and never reaches the state machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import msgpack
from hanzo_tasks.protocol import fields, names
from hanzo_tasks.protocol.durations import format_duration, parse_duration
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.protocol.fields import FieldReader
from hanzo_tasks.protocol.timefmt import parse_time

Json = dict[str, Any]


def bad(message: str, **details: Any) -> ApiError:
    return ApiError("invalid_argument", message, details or None)


# ---- primitive fields ------------------------------------------------------


_FIELDS = FieldReader(bad, mapping="an object")


def opt_str(body: Json, field: str, default: str | None = None) -> str | None:
    return _FIELDS.text(body, field, default)


def opt_bool(body: Json, field: str, default: bool = False) -> bool:
    return bool(_FIELDS.boolean(body, field, default))


def opt_int(body: Json, field: str, default: int | None = None, *, lo: int | None = None) -> int | None:
    return _FIELDS.integer(body, field, default, lo=lo)


def opt_duration(body: Json, field: str, *, lo_ms: int | None = None, hi_ms: int | None = None) -> int | None:
    v = body.get(field)
    if v is None:
        return None
    if not isinstance(v, str):
        raise bad(f"{field} must be a duration string such as \"10s\"")
    try:
        ms = parse_duration(v)
    except ValueError as e:
        raise bad(f"{field}: {e}") from None
    if lo_ms is not None and ms < lo_ms:
        raise bad(f"{field} must be at least {format_duration(lo_ms)}")
    if hi_ms is not None and ms > hi_ms:
        raise bad(f"{field} must be at most {format_duration(hi_ms)}")
    return ms


def opt_time(body: Json, field: str) -> int | None:
    v = body.get(field)
    if v is None:
        return None
    if not isinstance(v, str):
        raise bad(f"{field} must be an RFC 3339 timestamp")
    try:
        return parse_time(v)
    except ValueError as e:
        raise bad(f"{field}: {e}") from None


def opt_obj(body: Json, field: str) -> Json | None:
    return _FIELDS.mapping_of(body, field)


def name_obj(body: Json, field: str, *, required: bool) -> str | None:
    """``{"name": "x"}`` fields (workflowType, taskQueue); a bare string is accepted too."""
    v = body.get(field)
    if v is None:
        if required:
            raise bad(f"{field}.name is required")
        return None
    name: Any
    if isinstance(v, str):
        name = v
    elif isinstance(v, dict):
        name = v.get("name")
        if name is None or name == "":
            if required:
                raise bad(f"{field}.name is required")
            return None
        if not isinstance(name, str):
            raise bad(f"{field}.name must be a string")
    else:
        raise bad(f"{field} must be an object with a name")
    if name == "" and not required:
        return None
    return names.check_id(name, field)


def payload(body: Json, field: str, max_bytes: int) -> Any:
    """A JSON payload, checked against ``limits.max_payload`` (413 when larger)."""
    return check_payload(body.get(field), field, max_bytes)


def check_payload(v: Any, field: str, max_bytes: int) -> Any:
    """``v`` itself as a payload: its encoded JSON size against ``max_bytes``
    (413 ``too_large`` when larger; 0 = no limit). Used for client input and
    for what workers send back alike, so that nothing larger is ever stored."""
    if v is not None and max_bytes > 0:
        try:
            size = len(json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode())
        except UnicodeEncodeError:
            raise bad(f"{field} holds a string that is not valid Unicode") from None
        except RecursionError:  # decoders refuse this first (limits.max_depth): never a 500
            raise bad(f"{field} nests too deep") from None
        except (TypeError, ValueError) as e:
            raise bad(f"{field} is not a JSON value: {e}") from None
        if size > max_bytes:
            raise ApiError("too_large", f"{field} is {size} bytes; the limit is {max_bytes}",
                           {"field": field, "size": size, "max_payload": max_bytes})
    return v


def enum(value: Any, prefix: str, allowed: tuple[str, ...], field: str) -> str:
    """Enums are accepted prefixed or bare, case-insensitively; stored bare."""
    if not isinstance(value, str):
        raise bad(f"{field} must be a string")
    v = value.strip().upper()
    if v.startswith(prefix):
        v = v[len(prefix) :]
    if v not in allowed:
        raise bad(f"{field}: unknown value {value!r}")
    return v


_HTTP_RETRY = fields.RetryRules(
    "retryPolicy",
    "camel",
    interval=lambda v, key: opt_duration(v, key),
    attempts=lambda v, key: opt_int(v, key, 0, lo=0),
    error=bad,
    mapping="an object",
)
"""Over HTTP: duration strings; a null backoffCoefficient is an error; no upper bound."""

CONFLICT_POLICIES = ("FAIL", "USE_EXISTING", "TERMINATE_EXISTING", "UNSPECIFIED")
OVERLAP_POLICIES = (
    "SKIP",
    "BUFFER_ONE",
    "BUFFER_ALL",
    "CANCEL_OTHER",
    "TERMINATE_OTHER",
    "ALLOW_ALL",
    "UNSPECIFIED",
)


def overlap_policy(value: Any, field: str = "overlapPolicy") -> str:
    v = enum(value, "SCHEDULE_OVERLAP_POLICY_", OVERLAP_POLICIES, field)
    return "SKIP" if v == "UNSPECIFIED" else v


def conflict_policy(value: Any) -> str:
    v = enum(value, "WORKFLOW_ID_CONFLICT_POLICY_", CONFLICT_POLICIES, "workflowIdConflictPolicy")
    return "FAIL" if v == "UNSPECIFIED" else v


def retry_policy(v: Any, field: str = "retryPolicy") -> Json | None:
    """RetryPolicy (SPEC §5.1) in internal form: durations in ms."""
    return fields.retry_policy(v, _HTTP_RETRY, field)


def request_id(body: Json, field: str = "requestId") -> str | None:
    v = body.get(field)
    if v is None or v == "":
        return None
    return names.check_request_id(v)


# ---- query strings -----------------------------------------------------------


def query_bool(query: Any, field: str, default: bool = False) -> bool:
    v = query.get(field)
    if v is None:
        return default
    low = v.lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise bad(f"{field} must be true, false, 1 or 0")


def query_int(query: Any, field: str, default: int, lo: int = 0) -> int:
    v = query.get(field)
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except ValueError:
        raise bad(f"{field} must be an integer") from None
    if n < lo:
        raise bad(f"{field} must be at least {lo}")
    return n


def page_size(query: Any) -> int:
    v = query.get("pageSize")
    if v is None or v == "":
        return 100
    try:
        n = int(v)
    except ValueError:
        raise bad("pageSize must be an integer between 1 and 1000") from None
    if not 1 <= n <= 1000:
        raise bad("pageSize must be between 1 and 1000")
    return n


# ---- page tokens -------------------------------------------------------------


def _binding(kind: str, bound: str) -> bytes:
    return hashlib.sha256(f"{kind}\x00{bound}".encode()).digest()[:8]


def make_token(kind: str, bound: str, cursor: bytes | None) -> str:
    """An opaque token bound to the query that made it."""
    if cursor is None:
        return ""
    raw = msgpack.packb([1, _binding(kind, bound), cursor], use_bin_type=True)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token_int(cursor: bytes) -> int:
    """A numeric cursor from a page token; anything else is a malformed token."""
    try:
        text = cursor.decode("ascii")
    except UnicodeDecodeError:
        raise bad("malformed nextPageToken") from None
    if not text.isdigit() or len(text) > 12:
        raise bad("malformed nextPageToken")
    return int(text)


def read_token(token: str | None, kind: str, bound: str) -> bytes | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, binding, cursor = msgpack.unpackb(raw, raw=False)
        if version != 1 or not isinstance(cursor, bytes) or not isinstance(binding, bytes):
            raise ValueError
    except Exception:
        raise bad("malformed nextPageToken") from None
    if binding != _binding(kind, bound):
        raise bad("nextPageToken was made for a different query")
    return cursor


def name_cursor(token: str | None, kind: str, bound: str) -> str | None:
    """The name a name-ordered page starts after; a token not made for this query is a 400."""
    raw = read_token(token, kind, bound)
    if raw is None:
        return None
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("malformed nextPageToken") from None
    if not name:
        raise bad("malformed nextPageToken")
    return name


def name_page(fetch: Callable[[str | None, int], list[Any]], token: str | None, kind: str, bound: str,
              size: int, name_of: Callable[[Any], str]) -> tuple[list[Any], str]:
    """One page of a name-ordered list: ``fetch(after, limit)`` returns the items
    after a name; one more than the page is asked for, so a full last page
    ends the list (no extra empty page). Returns (page, nextPageToken)."""
    found = fetch(name_cursor(token, kind, bound), size + 1)
    page = found[:size]
    return page, make_token(kind, bound, name_of(page[-1]).encode() if len(found) > size else None)
