"""Go-style duration strings <-> milliseconds (SPEC §0 "Durations").

Durations travel as JSON strings such as ``"1h30m"`` or ``"1.5s"`` and are held
internally as integer milliseconds. The grammar is Go's ``time.ParseDuration``
(so values written by the original server keep parsing), minus nothing and plus
nothing: there are no day or week units, and bare numbers other than ``0`` are
rejected.
"""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

# Nanoseconds per unit. Both the micro sign (U+00B5) and the Greek mu (U+03BC)
# spell microseconds, as in Go.
_UNIT_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}

# One `<decimal><unit>` component. The unit is "whatever is not a digit or a
# dot", exactly like Go, so an unknown unit gets a precise error message.
_COMPONENT = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)", re.ASCII)

# Go's time.Duration is an int64 of nanoseconds; larger values are rejected there,
# and rejecting them here keeps every accepted value storable as a ZAP int64.
_MAX_NS = (1 << 63) - 1

_NS_PER_MS = 1_000_000


def parse_duration(text: str) -> int:
    """Parse a Go-style duration (``"1h30m"``, ``"-1.5s"``, ``"0"``) into milliseconds.

    Sub-millisecond remainders are truncated toward zero (``"1500us"`` -> 1,
    ``"-1500us"`` -> -1). Raises ``ValueError`` for anything else, including
    non-string input: JSON numbers are not durations (SPEC §0). Surrounding
    whitespace is rejected too; callers that accept it (classify) trim first.
    """
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string, not {type(text).__name__}")
    orig = text
    s = text
    negative = False
    if s[:1] in ("+", "-"):
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"invalid duration {orig!r}")

    total_ns = 0
    pos = 0
    while pos < len(s):
        m = _COMPONENT.match(s, pos)
        assert m is not None  # the pattern can match the empty string
        int_part, frac_part, unit = m.group(1), m.group(2), m.group(3)
        if not int_part and not frac_part:
            raise ValueError(f"invalid duration {orig!r}")
        if not unit:
            raise ValueError(f"missing unit in duration {orig!r}")
        unit_ns = _UNIT_NS.get(unit)
        if unit_ns is None:
            raise ValueError(
                f"unknown unit {unit!r} in duration {orig!r} (units: ns, us, µs, ms, s, m, h)"
            )
        total_ns += int(int_part or "0") * unit_ns
        if frac_part:
            # Exact integer arithmetic; Go also truncates each fraction to whole ns.
            total_ns += int(frac_part) * unit_ns // 10 ** len(frac_part)
        if total_ns > _MAX_NS + (1 if negative else 0):
            raise ValueError(f"duration {orig!r} is out of range")
        pos = m.end()

    ms = total_ns // _NS_PER_MS  # total_ns >= 0, so floor == truncation
    return -ms if negative else ms


def format_duration(ms: int) -> str:
    """Render milliseconds in the canonical form of SPEC §0.

    ``<n>ms`` below one second; otherwise ``h``/``m``/``s`` parts with zero parts
    left out and seconds carrying up to 3 decimals without trailing zeros:
    0 -> ``0s``, 500 -> ``500ms``, 1500 -> ``1.5s``, 5_400_000 -> ``1h30m``,
    60_250 -> ``1m0.25s``. The output always parses back to the same value.
    """
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise TypeError(f"duration must be an int of milliseconds, not {type(ms).__name__}")
    if ms == 0:
        return "0s"
    if ms < 0:
        return "-" + format_duration(-ms)
    if ms < 1000:
        return f"{ms}ms"
    hours, rem = divmod(ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    secs, millis = divmod(rem, 1000)
    out = []
    if hours:
        out.append(f"{hours}h")
    if minutes:
        out.append(f"{minutes}m")
    if secs or millis:
        if millis:
            out.append(f"{secs}.{millis:03d}".rstrip("0") + "s")
        else:
            out.append(f"{secs}s")
    return "".join(out)
