"""Go-style durations (SPEC §0)."""

from __future__ import annotations

import pytest
from hanzo_tasks.protocol.durations import format_duration, parse_duration
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("0", 0),
        ("+0", 0),
        ("-0", 0),
        ("0s", 0),
        ("1ms", 1),
        ("500ms", 500),
        ("1s", 1000),
        ("1.5s", 1500),
        (".5s", 500),
        ("1.s", 1000),
        ("1m", 60_000),
        ("1h", 3_600_000),
        ("1h30m", 5_400_000),
        ("30m1h", 5_400_000),
        ("1s1s", 2000),
        ("720h", 720 * 3_600_000),
        ("1m0.25s", 60_250),
        ("1.5h", 5_400_000),
        ("1500us", 1),
        ("1500\u00b5s", 1),  # micro sign
        ("1500\u03bcs", 1),  # Greek mu
        ("999999ns", 0),
        ("1000000ns", 1),
        ("2500000ns", 2),
        ("-1500us", -1),  # truncated toward zero
        ("-1.5s", -1500),
        ("+2s", 2000),
        ("0.0001s", 0),
        ("1.0009s", 1000),
        ("1.23456789s", 1234),
    ],
)
def test_parse_valid(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "   ",
        "-",
        "+",
        "5",  # a unit is required except for a lone 0
        "00",
        "1d",  # no day unit
        "2w",  # no week unit
        "1y",
        "s",
        ".s",
        "1.5.5s",
        " 5s",
        "5s ",
        "5 s",
        "1h 30m",
        "1S",
        "1H",
        "--1s",
        "1e3s",
        "١s",  # non-ASCII digit
        "9999999999999999999h",  # beyond Go's int64 nanoseconds
    ],
)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("value", [5, 0, 1.5, None, True, [], {"ms": 1}, b"5s"])
def test_parse_rejects_non_strings(value: object) -> None:
    # JSON numbers must not be read as durations (SPEC §0: 400).
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]


def test_parse_error_message_is_readable() -> None:
    with pytest.raises(ValueError, match="unknown unit 'd'"):
        parse_duration("1d")
    with pytest.raises(ValueError, match="missing unit"):
        parse_duration("5")


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (1, "1ms"),
        (500, "500ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (1050, "1.05s"),
        (1005, "1.005s"),
        (60_000, "1m"),
        (60_250, "1m0.25s"),
        (61_000, "1m1s"),
        (3_600_000, "1h"),
        (3_600_500, "1h0.5s"),
        (5_400_000, "1h30m"),
        (5_401_000, "1h30m1s"),
        (720 * 3_600_000, "720h"),
        (-500, "-500ms"),
        (-1500, "-1.5s"),
        (-5_400_000, "-1h30m"),
    ],
)
def test_format_canonical(ms: int, text: str) -> None:
    assert format_duration(ms) == text


@pytest.mark.parametrize("value", [1.5, "5s", None, True])
def test_format_rejects_non_int(value: object) -> None:
    with pytest.raises(TypeError):
        format_duration(value)  # type: ignore[arg-type]


_INT64_MS = (1 << 63) // 1_000_000 - 1


@given(st.integers(min_value=-_INT64_MS, max_value=_INT64_MS))
def test_roundtrip_format_then_parse(ms: int) -> None:
    assert parse_duration(format_duration(ms)) == ms


@given(st.integers(min_value=-_INT64_MS, max_value=_INT64_MS))
def test_format_is_canonical(ms: int) -> None:
    # Formatting is a function of the value only: re-formatting a parse gives
    # the same text, and sub-second values always use the ms form.
    text = format_duration(ms)
    assert format_duration(parse_duration(text)) == text
    if 0 < abs(ms) < 1000:
        assert text.endswith("ms")


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=10_000),
            st.sampled_from(["h", "m", "s", "ms", "us", "ns"]),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_parse_sums_components(parts: list[tuple[int, str]]) -> None:
    ns = {"h": 3_600_000_000_000, "m": 60_000_000_000, "s": 1_000_000_000, "ms": 1_000_000,
          "us": 1_000, "ns": 1}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == sum(n * ns[u] for n, u in parts) // 1_000_000
    assert parse_duration("-" + text) == -(sum(n * ns[u] for n, u in parts) // 1_000_000)
