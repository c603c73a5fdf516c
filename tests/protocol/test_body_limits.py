"""ZAP body decoding under limits (issue 16, findings 3 and 6): lengths refused
from their headers before anything is built, nesting refused by a bounded walk.
Also JSON nesting (``protocol.nesting``), the same rule for HTTP and MCP bodies."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.nesting import deeper_than
from hypothesis import given
from hypothesis import strategies as st

LIMITS = Z.BodyLimits(max_str_len=1000, max_items=8, max_depth=5)


def nested(depth: int, leaf: Any = 1) -> Any:
    """``depth`` arrays around ``leaf`` (depth 0: the leaf itself)."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


def widest(value: Any) -> int:
    if isinstance(value, list):
        return max([len(value), *(widest(v) for v in value)])
    if isinstance(value, dict):
        return max([len(value), *(widest(v) for v in value.values())])
    return 0


def test_an_array_header_over_the_limit_is_refused_before_its_items_are_read() -> None:
    # A header claiming 16M items, followed by only 40: refused from the header
    # (without limits the same bytes are merely truncated msgpack).
    raw = b"\x81\xa1a\xdd" + (16 * 1024 * 1024).to_bytes(4, "big") + b"\xc0" * 40
    with pytest.raises(Z.BadBody, match="max_array_len"):
        Z.decode_body(raw, Z.HELLO_LIMITS)


def test_sixteen_million_nils_are_refused_fast_not_built() -> None:
    n = 16 * 1024 * 1024 - 64  # a HELLO frame of 16 MiB: {"client_id": [nil] * n}, by hand
    body = b"\x81\xa9client_id\xdd" + n.to_bytes(4, "big") + b"\xc0" * n
    started = time.perf_counter()
    with pytest.raises(Z.BadBody, match="max_array_len"):
        Z.decode_body(body, Z.HELLO_LIMITS)
    assert time.perf_counter() - started < 0.05  # building 16M Nones takes ~0.5 s and 128 MB


@pytest.mark.parametrize("body", [
    {"m": {str(i): i for i in range(9)}},       # a map of 9 entries
    {"s": "x" * 1001},                          # a string of 1001 bytes
    {"k" * 1001: 1},                            # a key of 1001 bytes
])
def test_maps_and_strings_over_their_limits_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(Z.BadBody, match="over its limit"):
        Z.decode_body(msgpack.packb(body), LIMITS)
    assert Z.decode_body(msgpack.packb(body)) == body  # no limits: accepted as before


def test_nesting_up_to_the_limit_passes_and_one_more_level_is_refused() -> None:
    ok = {"v": nested(4)}  # the body map is level 1
    assert Z.decode_body(msgpack.packb(ok), LIMITS) == ok
    with pytest.raises(Z.BadBody, match=r"deeper than 5 levels \(limits.max_depth\)"):
        Z.decode_body(msgpack.packb({"v": nested(5)}), LIMITS)
    with pytest.raises(Z.BadBody, match="limits.max_depth"):
        Z.decode_body(msgpack.packb({"a": 1, "v": [{"x": {"y": [[]]}}]}), LIMITS)


def test_a_body_nested_a_thousand_deep_is_refused_without_recursion() -> None:
    raw = msgpack.packb({"input": nested(1000)})
    with pytest.raises(Z.BadBody, match="limits.max_depth"):
        Z.decode_body(raw, Z.BodyLimits(1 << 20, 1 << 20, 64))


def test_hello_limits_refuse_what_no_hello_needs() -> None:
    hello = {"client_id": "w-1", "sdk_name": "py", "sdk_version": "1.0", "namespace": "default",
             "auth_token": "e30." + "x" * 4000 + ".sig"}
    assert Z.decode_body(msgpack.packb(hello), Z.HELLO_LIMITS) == hello
    for bad in ({"client_id": nested(4)}, {"client_id": [None] * 33}, {"auth_token": "x" * 20000},
                {str(i): i for i in range(33)}):
        with pytest.raises(Z.BadBody):
            Z.decode_body(msgpack.packb(bad), Z.HELLO_LIMITS)


def test_json_nesting_walk() -> None:
    assert not deeper_than(nested(64), 64)
    assert deeper_than(nested(65), 64)
    assert not deeper_than({"a": [1, 2, {"b": "c"}]}, 3)
    assert deeper_than({"a": [1, 2, {"b": []}]}, 3)
    assert not deeper_than("scalar", 1)
    assert deeper_than(nested(100_000), 64)  # no recursion


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=10) | st.dictionaries(st.text(max_size=3), inner, max_size=10),
    max_leaves=60,
)


@given(value=JSONISH, max_items=st.integers(1, 10), max_depth=st.integers(1, 8))
def test_decoding_under_limits_refuses_exactly_what_breaks_them(value: Any, max_items: int, max_depth: int) -> None:
    body = {"v": value}
    limits = Z.BodyLimits(max_str_len=1000, max_items=max_items, max_depth=max_depth)
    fits = widest(body) <= max_items and 1 + depth_of(value) <= max_depth
    try:
        decoded = Z.decode_body(msgpack.packb(body), limits)
    except Z.BadBody:
        assert not fits
    else:
        assert fits and decoded == body
