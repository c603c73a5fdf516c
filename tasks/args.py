"""Caller arguments in their ZAP form: durations and retry policies.

Why a module of its own: the client (``now(retry_policy=...)``) and the worker
(``ctx.execute_activity(start_to_close=..., retry_policy=...)``) accept the same
Python forms (seconds, ``timedelta``, Go duration strings; a RetryPolicy in
either spelling) and must convert them alike.
"""

from __future__ import annotations

import datetime
from typing import Any

from hanzo_tasks.errors import InvalidArgument
from hanzo_tasks.protocol import wire
from hanzo_tasks.protocol.durations import parse_duration

__all__ = ["duration_ms", "zap_retry_policy"]


def duration_ms(value: Any, what: str) -> int | None:
    """Seconds (int/float), a timedelta or a Go duration string -> positive ms."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a duration, not a bool")
    if isinstance(value, datetime.timedelta):
        ms = int(value.total_seconds() * 1000)
    elif isinstance(value, int | float):
        ms = int(value * 1000)
    elif isinstance(value, str):
        try:
            ms = parse_duration(value.strip())
        except ValueError as e:
            raise InvalidArgument(f"invalid {what}: {e}") from None
    else:
        raise InvalidArgument(f"{what} must be seconds, a timedelta or a duration string")
    if ms <= 0:
        raise InvalidArgument(f"{what} must be positive")
    return ms


def zap_retry_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """A RetryPolicy (HTTP camelCase, durations as strings) in its ZAP form (§8.4).

    snake_case keys are passed through, so either spelling works on either
    transport's public API.
    """
    return wire.to_zap(policy, wire.RETRY_POLICY, _retry_interval_ms)


def _retry_interval_ms(value: Any, field: wire.WireField) -> Any:
    if isinstance(value, str):
        try:
            return parse_duration(value.strip())
        except ValueError as e:
            raise InvalidArgument(f"invalid retry_policy.{field.camel}: {e}") from None
    return duration_ms(value, f"retry_policy.{field.camel}")
