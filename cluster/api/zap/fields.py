"""ZAP request fields (snake_case, ``*_ms`` integers of milliseconds) read, checked
and turned into pieces of the camelCase bodies the service validates. A malformed
field is an ``invalid_argument`` error, answered on the request that carried it."""

from __future__ import annotations

from typing import Any

from hanzo_tasks.protocol import names, wire
from hanzo_tasks.protocol.durations import format_duration
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.protocol.fields import FieldReader

Json = dict[str, Any]


def bad(message: str) -> ApiError:
    return ApiError("invalid_argument", message)


_FIELDS = FieldReader(bad)
text = _FIELDS.text
integer = _FIELDS.integer
boolean = _FIELDS.boolean
mapping = _FIELDS.mapping_of


def ms_duration(body: Json, name: str) -> str | None:
    """A ``*_ms`` integer as the service's duration string (the service checks ranges)."""
    v = body.get(name)
    return None if v is None else duration_text(v, name)


def duration_text(v: Any, what: str) -> str:
    if not isinstance(v, int) or isinstance(v, bool):
        raise bad(f"{what} must be an integer of milliseconds")
    return format_duration(v)


def run_id(body: Json) -> str | None:
    rid = text(body, "run_id")
    return names.check_run_id(rid) if rid else None


def page(body: Json) -> tuple[int, str | None]:
    size = integer(body, "page_size", lo=1, hi=1000)
    token = text(body, "next_page_token")
    return (100 if size is None else size), (token or None)


def copy_str(src: Json, dst: Json, pairs: tuple[tuple[str, str], ...]) -> None:
    for zap_name, camel in pairs:
        v = text(src, zap_name)
        if v is not None:
            dst[camel] = v


def retry_policy(v: Any) -> Json | None:
    """``{initial_interval_ms, backoff_coefficient, ...}`` -> the §5.1 RetryPolicy."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise bad("retry_policy must be a map")
    return wire.to_http(v, wire.RETRY_POLICY, lambda ms, f: duration_text(ms, f"retry_policy.{f.snake}"))
