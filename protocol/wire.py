"""The two spellings of one body: HTTP camelCase and ZAP snake_case (SPEC §0, §8.4).

Why a module of its own: the client turns a RetryPolicy given in HTTP form
into its ZAP form, and the ZAP server turns ZAP bodies back into the HTTP form
the service validates. Each kept its own copy of the name pairs, mirrored;
one table here serves both directions, so they cannot drift apart. Only the
names and the duration flag live here: how a duration is converted (and which
errors that raises) stays with each side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RETRY_POLICY", "WireField", "to_http", "to_zap"]


@dataclass(frozen=True, slots=True)
class WireField:
    """One field in both spellings. ``duration``: a duration string over HTTP
    (``"1.5s"``), integer milliseconds over ZAP (the snake name ends in ``_ms``)."""

    camel: str
    snake: str
    duration: bool = False


RETRY_POLICY: tuple[WireField, ...] = (
    WireField("initialInterval", "initial_interval_ms", duration=True),
    WireField("maximumInterval", "maximum_interval_ms", duration=True),
    WireField("backoffCoefficient", "backoff_coefficient"),
    WireField("maximumAttempts", "maximum_attempts"),
    WireField("nonRetryableErrorTypes", "non_retryable_error_types"),
)
"""RetryPolicy (SPEC §5.1; §8.4 for its ZAP form)."""

Convert = Callable[[Any, WireField], Any]
"""Converts a duration value of a field (not None) to the other side's form."""


def to_zap(
    body: Mapping[str, Any], fields: Iterable[WireField], duration: Convert
) -> dict[str, Any]:
    """camelCase keys of ``fields`` -> snake_case; other keys (already snake_case,
    or unknown: the server judges them) pass through, as do None values."""
    by_camel = {f.camel: f for f in fields}
    out: dict[str, Any] = {}
    for key, value in body.items():
        f = by_camel.get(key)
        if f is None:
            out[key] = value
        else:
            out[f.snake] = duration(value, f) if f.duration and value is not None else value
    return out


def to_http(
    body: Mapping[str, Any], fields: Iterable[WireField], duration: Convert
) -> dict[str, Any]:
    """The snake_case ``fields`` of ``body`` in camelCase; a None value counts as absent."""
    out: dict[str, Any] = {}
    for f in fields:
        value = body.get(f.snake)
        if value is not None:
            out[f.camel] = duration(value, f) if f.duration else value
    return out
