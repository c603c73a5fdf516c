"""RFC 3339 timestamps (SPEC §0)."""

from __future__ import annotations

import datetime as dt

import pytest
from hanzo_tasks.protocol.timefmt import (
    format_time,
    format_time_seconds,
    parse_time,
    parse_time_or_date,
)
from hypothesis import given
from hypothesis import strategies as st

T = 1777534278120  # 2026-04-30T07:31:18.120Z


def _ms(d: dt.datetime) -> int:
    return (d - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


def test_format_example() -> None:
    assert format_time(T) == "2026-04-30T07:31:18.120Z"
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(1) == "1970-01-01T00:00:00.001Z"
    assert format_time(-1) == "1969-12-31T23:59:59.999Z"


def test_format_time_seconds() -> None:
    assert format_time_seconds(_ms(dt.datetime(2026, 5, 1, 3, tzinfo=dt.UTC))) == (
        "2026-05-01T03:00:00Z"
    )
    assert format_time_seconds(T) == "2026-04-30T07:31:18Z"  # sub-second part dropped
    assert format_time_seconds(-1) == "1969-12-31T23:59:59Z"  # floored, not rounded


@pytest.mark.parametrize("fn", [format_time, format_time_seconds])
def test_format_rejects_bad_input(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError):
        fn(1.5)
    with pytest.raises(TypeError):
        fn("0")
    with pytest.raises(ValueError):
        fn(10**18)  # beyond year 9999


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-04-30T07:31:18.120Z", T),
        ("2026-04-30T07:31:18.12Z", T),
        ("2026-04-30T07:31:18.1204999Z", T),  # truncated below the ms
        ("2026-04-30T07:31:18.1209Z", T),  # truncated, not rounded
        ("2026-04-30t07:31:18.120z", T),
        ("2026-04-30T09:31:18.120+02:00", T),
        ("2026-04-30T02:01:18.120-05:30", T),
        ("2026-04-30T07:31:18.120+00:00", T),
        ("2026-04-30T07:31:18.120-00:00", T),
        ("2026-04-30T07:31:18Z", T - 120),
        ("2026-04-30T07:31:18.1Z", T - 20),
        ("1969-12-31T23:59:59.9999Z", -1),
        ("2024-02-29T00:00:00Z", 1709164800000),
    ],
)
def test_parse_valid(text: str, expected: int) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-04-30T07:31:18",  # no offset
        "2026-04-30T07:31:18.120",
        "2026-04-30 07:31:18Z",
        "2026-04-30",
        "2026-04-30T07:31Z",
        "2026-4-30T07:31:18Z",
        "2026-04-30T07:31:18.Z",
        "2026-04-30T07:31:18+0200",
        "2026-04-30T07:31:18+02",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "2026-04-30T24:00:00Z",
        "2026-04-30T07:60:00Z",
        "2026-04-30T07:31:60Z",
        "2026-04-30T07:31:18+24:00",
        "2026-04-30T07:31:18+02:60",
        " 2026-04-30T07:31:18Z",
        "2026-04-30T07:31:18Z\n",
        "２０２６-04-30T07:31:18Z",  # fullwidth digits
        "0000-01-01T00:00:00Z",
    ],
)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


@pytest.mark.parametrize("value", [0, 1.5, None, True, b"2026-04-30T07:31:18Z"])
def test_parse_rejects_non_strings(value: object) -> None:
    with pytest.raises(ValueError):
        parse_time(value)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        parse_time_or_date(value)  # type: ignore[arg-type]


def test_parse_time_or_date() -> None:
    assert parse_time_or_date("2026-05-01") == _ms(dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    assert parse_time_or_date("1970-01-01") == 0
    assert parse_time_or_date("2026-04-30T07:31:18.120Z") == T
    for bad in ["2026-02-30", "2026-5-1", "2026-05-01T00:00:00", "20260501"]:
        with pytest.raises(ValueError):
            parse_time_or_date(bad)


_MIN_MS = _ms(dt.datetime(1, 1, 2, tzinfo=dt.UTC))
_MAX_MS = _ms(dt.datetime(9999, 12, 30, tzinfo=dt.UTC))


@given(st.integers(min_value=_MIN_MS, max_value=_MAX_MS))
def test_roundtrip(ms: int) -> None:
    text = format_time(ms)
    assert len(text) == 24 and text.endswith("Z")
    assert parse_time(text) == ms


@given(st.integers(min_value=_MIN_MS, max_value=_MAX_MS))
def test_format_matches_datetime(ms: int) -> None:
    d = dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ms)
    assert format_time(ms) == d.isoformat(timespec="milliseconds") + "Z"
    assert format_time_seconds(ms) == d.isoformat(timespec="seconds") + "Z"


@given(
    st.datetimes(
        min_value=dt.datetime(2, 1, 1),
        max_value=dt.datetime(9998, 12, 31),
    ),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
def test_parse_offsets_match_datetime(naive: dt.datetime, offset_min: int) -> None:
    aware = naive.replace(tzinfo=dt.timezone(dt.timedelta(minutes=offset_min)))
    sign = "-" if offset_min < 0 else "+"
    h, m = divmod(abs(offset_min), 60)
    text = naive.isoformat(timespec="microseconds") + f"{sign}{h:02d}:{m:02d}"
    expected = _ms(aware.replace(microsecond=naive.microsecond // 1000 * 1000))
    assert parse_time(text) == expected
