"""RFC 3339 timestamps <-> epoch milliseconds (SPEC §0 "Timestamps").

Times are held as integer milliseconds since the Unix epoch. Output is always UTC
with exactly three fractional digits (``2026-04-30T07:31:18.120Z``) so that equal
instants always serialize to equal strings; input is any RFC 3339 timestamp that
carries an offset. Arithmetic is done on integers (no float rounding).
"""

from __future__ import annotations

import datetime as _dt
import re

__all__ = ["format_time", "format_time_seconds", "parse_time", "parse_time_or_date"]

_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_MS_PER_DAY = 86_400_000

# [0-9] rather than \d: \d would accept non-ASCII digits.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")


def _check_int(ms: int) -> None:
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise TypeError(f"time must be an int of epoch milliseconds, not {type(ms).__name__}")


def _split(ms: int) -> tuple[_dt.date, int]:
    """Split epoch ms into a UTC calendar date and the ms within that day."""
    days, in_day = divmod(ms, _MS_PER_DAY)
    try:
        return _dt.date.fromordinal(_EPOCH_ORDINAL + days), in_day
    except (ValueError, OverflowError):
        raise ValueError(f"time {ms} ms is outside years 1..9999") from None


def format_time(ms: int) -> str:
    """Epoch ms -> ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC, exactly 3 fractional digits)."""
    _check_int(ms)
    day, in_day = _split(ms)
    secs, millis = divmod(in_day, 1000)
    hh, rem = divmod(secs, 3600)
    mm, ss = divmod(rem, 60)
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{millis:03d}Z"


def format_time_seconds(ms: int) -> str:
    """Epoch ms -> ``YYYY-MM-DDTHH:MM:SSZ``, whole seconds (sub-second part floored).

    This is the form used in schedule-fired workflow ids (``nightly-2026-05-01T03:00:00Z``)
    and in the jitter hash, so it must never change.
    """
    _check_int(ms)
    day, in_day = _split(ms)
    hh, rem = divmod(in_day // 1000, 3600)
    mm, ss = divmod(rem, 60)
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}T{hh:02d}:{mm:02d}:{ss:02d}Z"


def _date_ordinal(text: str, y: str, mo: str, d: str) -> int:
    try:
        return _dt.date(int(y), int(mo), int(d)).toordinal()
    except ValueError:
        raise ValueError(f"invalid date in {text!r}") from None


def parse_time(text: str) -> int:
    """Parse an RFC 3339 timestamp with an offset into epoch ms.

    Accepts ``Z``/``z`` or ``±HH:MM``, ``T``/``t``, and any number of fractional
    digits; digits below the millisecond are dropped (which is a floor on the
    time line). No offset, a calendar-invalid field, a leap second (``:60``, as in
    Go) or a non-string -> ``ValueError``.
    """
    if not isinstance(text, str):
        raise ValueError(f"timestamp must be a string, not {type(text).__name__}")
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(
            f"invalid timestamp {text!r}: expected RFC 3339 with an offset, "
            "e.g. 2026-04-30T07:31:18.120Z"
        )
    y, mo, d, hh, mi, ss, frac, zulu, sign, oh, om = m.groups()
    ordinal = _date_ordinal(text, y, mo, d)
    hour, minute, second = int(hh), int(mi), int(ss)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"invalid time of day in {text!r}")
    offset_s = 0
    if not zulu:
        off_h, off_m = int(oh), int(om)
        if off_h > 23 or off_m > 59:
            raise ValueError(f"invalid offset in {text!r}")
        offset_s = (off_h * 3600 + off_m * 60) * (-1 if sign == "-" else 1)
    millis = int((frac or "")[:3].ljust(3, "0"))
    secs = (ordinal - _EPOCH_ORDINAL) * 86_400 + hour * 3600 + minute * 60 + second - offset_s
    return secs * 1000 + millis


def parse_time_or_date(text: str) -> int:
    """Like :func:`parse_time`, but a bare ``YYYY-MM-DD`` means midnight UTC of that day.

    Used for query parameters such as ``?from=2026-05-01`` where a date is the
    natural thing to type.
    """
    if isinstance(text, str):
        m = _DATE.fullmatch(text)
        if m is not None:
            ordinal = _date_ordinal(text, *m.groups())
            return (ordinal - _EPOCH_ORDINAL) * _MS_PER_DAY
    return parse_time(text)
