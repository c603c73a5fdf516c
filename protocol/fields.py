"""Field checks shared by every reader of request bodies (SPEC §0, §4.1, §5.1).

Why a module of its own: the HTTP service (``cluster.service.inputs``), the ZAP
listener and the workflow-task command checks each read typed fields and
retry policies the same way, with copies of the same code. One set lives here,
in the leaf both the client and the server may import. What differs between
the readers is data, not code: the exception each raises (an ``ApiError`` for a
request, ``BadCommand`` for a workflow command), the word for a JSON object
("an object" over HTTP, "a map" over ZAP) and how a RetryPolicy is spelled and
bounded on each transport. The messages name the field, exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from hanzo_tasks.protocol.wire import RETRY_POLICY

__all__ = ["FieldReader", "RetryRules", "retry_policy"]

Json = dict[str, Any]
Error = Callable[[str], Exception]


class FieldReader:
    """Typed reads of optional fields; a field of the wrong type raises ``error``.

    ``mapping`` is how the messages call a JSON object ("a map", "an object").
    """

    def __init__(self, error: Error, *, mapping: str = "a map") -> None:
        self.error = error
        self.mapping = mapping

    def text(
        self, body: Json, name: str, default: str | None = None, *, required: bool = False
    ) -> str | None:
        """A string; ``required``: absent, null or empty is an error."""
        v = body.get(name)
        if v is None:
            if required:
                raise self.error(f"{name} is required")
            return default
        if not isinstance(v, str):
            raise self.error(f"{name} must be a string")
        if required and not v:
            raise self.error(f"{name} is required")
        return v

    def integer(
        self,
        body: Json,
        name: str,
        default: int | None = None,
        *,
        lo: int | None = None,
        hi: int | None = None,
    ) -> int | None:
        """An integer (a bool is not one) within ``lo``..``hi``."""
        v = body.get(name)
        if v is None:
            return default
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.error(f"{name} must be an integer")
        if lo is not None and v < lo:
            raise self.error(f"{name} must be at least {lo}")
        if hi is not None and v > hi:
            raise self.error(f"{name} must be at most {hi}")
        return v

    def boolean(self, body: Json, name: str, default: bool | None = None) -> bool | None:
        v = body.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.error(f"{name} must be a boolean")
        return v

    def mapping_of(self, body: Json, name: str) -> Json | None:
        """A JSON object."""
        v = body.get(name)
        if v is None:
            return None
        if not isinstance(v, dict):
            raise self.error(f"{name} must be {self.mapping}")
        return v


@dataclass(frozen=True, slots=True)
class RetryRules:
    """How one transport spells, reads and bounds a RetryPolicy (SPEC §5.1).

    ``interval(policy, key)`` reads a duration field as ms (None when absent),
    ``attempts(policy, key)`` the attempt limit; both raise their own errors.
    ``null_coefficient``: a null backoffCoefficient means the default.
    ``max_coefficient``: None for no upper bound.
    """

    field: str
    spelling: Literal["camel", "snake"]
    interval: Callable[[Json, str], int | None]
    attempts: Callable[[Json, str], int | None]
    error: Error
    mapping: str = "a map"
    null_coefficient: bool = False
    max_coefficient: float | None = None

    def key(self, camel: str) -> str:
        """The transport's name of a RetryPolicy field given by its camelCase name."""
        for f in RETRY_POLICY:
            if f.camel == camel:
                return camel if self.spelling == "camel" else f.snake
        raise KeyError(camel)


def retry_policy(v: Any, rules: RetryRules, field: str | None = None) -> Json | None:
    """A RetryPolicy in the engine's form (durations in ms, defaults filled in)."""
    if v is None:
        return None
    name = field or rules.field
    if not isinstance(v, dict):
        raise rules.error(f"{name} must be {rules.mapping}")
    k = rules.key
    initial = rules.interval(v, k("initialInterval")) or 1000
    if initial <= 0:
        raise rules.error(f"{name}.{k('initialInterval')} must be positive")
    coeff = v.get(k("backoffCoefficient"), 2.0)
    if coeff is None and rules.null_coefficient:
        coeff = 2.0
    if (
        isinstance(coeff, bool)
        or not isinstance(coeff, int | float)
        or not _coefficient_ok(coeff, rules)
    ):
        raise rules.error(f"{name}.{k('backoffCoefficient')} must be a number >= 1")
    maximum = rules.interval(v, k("maximumInterval"))
    if maximum is None:
        maximum = 100 * initial
    if maximum < initial:
        raise rules.error(f"{name}.{k('maximumInterval')} must be >= {k('initialInterval')}")
    attempts = rules.attempts(v, k("maximumAttempts"))
    nr = v.get(k("nonRetryableErrorTypes")) or []
    if not isinstance(nr, list) or not all(isinstance(x, str) for x in nr):
        raise rules.error(f"{name}.{k('nonRetryableErrorTypes')} must be a list of strings")
    return {
        "initialInterval": initial,
        "backoffCoefficient": float(coeff),
        "maximumInterval": maximum,
        "maximumAttempts": attempts,
        "nonRetryableErrorTypes": nr,
    }


def _coefficient_ok(coeff: float, rules: RetryRules) -> bool:
    if rules.max_coefficient is None:
        return not coeff < 1  # NaN passes, as it always has over HTTP
    return 1 <= coeff <= rules.max_coefficient
