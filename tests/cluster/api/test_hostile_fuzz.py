"""Random hostile input against one node: ZAP byte frames, msgpack bodies deep
and wide, raw HTTP requests (issue 16, the hostile suite's fuzz part).

Whatever arrives, the node must answer no 5xx (501, the SPEC's answer to an
unknown ZAP opcode, excepted), log no ERROR record, go on answering
``/healthz``, and not grow in memory with the number of requests (its heap,
traced by ``tracemalloc`` with the fuzzer's own allocations filtered out:
hypothesis keeps much of what it draws).

``make test`` (the ``ci`` profile) draws a few fixed examples per test, a
couple of seconds in all; ``make fuzz`` (``HYPOTHESIS_PROFILE=fuzz``) draws
:data:`FUZZ_EXAMPLES` fresh ones per test and round (``HOSTILE_FUZZ_EXAMPLES``,
400 by default; ``make fuzz-hostile`` runs only this file, 2,000 a test).
"""

from __future__ import annotations

import gc
import logging
import os
import re
import socket
import struct
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hanzo_tasks.cluster.api.zap.routes import ROUTES
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.zap import Op
from hanzo_tasks.testing import TestNode, http_call
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZING = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
FUZZ_EXAMPLES = int(os.environ.get("HOSTILE_FUZZ_EXAMPLES", "400"))
EXAMPLES = FUZZ_EXAMPLES if FUZZING else 20
WARM_UP = 5
MEMORY_SLACK = 16 << 20
"""Heap the node may gain over a test's examples after the first ``WARM_UP``."""

fuzz_settings = settings(
    max_examples=EXAMPLES, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)
HELLO = {"client_id": "fuzz", "sdk_name": "pytest", "sdk_version": "1"}
pytestmark = pytest.mark.timeout(600 if FUZZING else 120)


NOT_THE_NODE = [tracemalloc.Filter(False, pattern) for pattern in (
    "*/hypothesis/*", "*/_pytest/*", "*/pluggy/*", "*/tracemalloc.py", "*/linecache.py", "*/re/*",
    __file__, "<frozen importlib._bootstrap*>", "<unknown>")]
"""Allocations of the fuzzer and of pytest, which keep what they draw: not counted."""


def traced_heap() -> int:
    """Bytes allocated since tracing started and still held, the fuzzer's excluded."""
    gc.collect()
    snap = tracemalloc.take_snapshot().filter_traces(NOT_THE_NODE)
    return sum(stat.size for stat in snap.statistics("filename"))


class Watch:
    """What every test checks: after each example the node serves /healthz; at
    the end, what the node allocated after the first ``WARM_UP`` examples and
    still holds (``tracemalloc``, started then, the fuzzer's own allocations
    filtered out) is under ``MEMORY_SLACK``."""

    def __init__(self, node: TestNode) -> None:
        self.node = node
        self.examples = 0
        self.tracing = False
        self.statuses: Counter[int] = Counter()
        """Statuses answered over the test's examples: a fuzzer that never got an answer tested nothing."""

    def after_example(self) -> None:
        self.examples += 1
        assert http_call(self.node.url, "GET", "/healthz", timeout=10)[0] == 200
        if self.examples == WARM_UP and not tracemalloc.is_tracing():
            tracemalloc.start(1)  # first uses of each path are allocated by now
            self.tracing = True

    def heap_growth(self) -> int:
        """Bytes the node gained since ``WARM_UP``; tracing stops."""
        if not self.tracing:
            return 0
        try:
            return traced_heap()
        finally:
            tracemalloc.stop()


@pytest.fixture(scope="module")
def node() -> Iterator[TestNode]:
    config = {"listeners.http_body_timeout": "1s", "listeners.http_keepalive_timeout": "2s",
              "listeners.zap_frame_timeout": "1s", "listeners.zap_hello_timeout": "2s"}
    with TestNode(config=config) as n:
        yield n


@pytest.fixture
def watch(node: TestNode, caplog: pytest.LogCaptureFixture) -> Iterator[Watch]:
    caplog.set_level(logging.INFO)
    w = Watch(node)
    yield w
    grown = w.heap_growth()
    print(f"\nstatuses answered: {dict(sorted(w.statuses.items()))}; "
          f"the node's heap grew {grown / 1024:.0f} KiB from example {WARM_UP} to {w.examples}")
    assert grown < MEMORY_SLACK, f"the node's heap grew {grown >> 20} MiB over {w.examples} examples"
    assert any(400 <= s < 500 for s in w.statuses), w.statuses
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, "\n".join(f"{r.name}: {r.getMessage()}" for r in errors[:5])


def zap_addr(node: TestNode) -> tuple[str, int]:
    assert node.zap_address is not None
    return node.zap_address


def read_frames(sock: socket.socket) -> list[Z.Frame]:
    """Every frame the server sends until it closes (or goes quiet for 3 s)."""
    reader = Z.FrameReader(1 << 26, Z.SERVER_KINDS)
    frames: list[Z.Frame] = []
    sock.settimeout(3.0)
    try:
        while data := sock.recv(65536):
            reader.feed(data)
            while (f := reader.next_frame()) is not None:
                frames.append(f)
    except (TimeoutError, ConnectionResetError):
        pass
    return frames


def assert_no_5xx(frames: list[Z.Frame], watch: Watch) -> None:
    for f in frames:
        body = Z.decode_body(f.body)
        status = body.get("status")
        assert isinstance(status, int), body
        watch.statuses[status] += 1
        assert status < 500 or status == 501, body


# ---------------------------------------------------------------------- ZAP bytes

header = st.builds(
    lambda length, version, kind, op, fid: struct.pack(">IBBHI", length, version, kind, op, fid),
    st.one_of(st.integers(0, 64), st.integers(8, 1 << 16), st.integers(0, 0xFFFFFFFF)),
    st.sampled_from([1, 1, 1, 0, 2, 255]),
    st.integers(0, 255),
    st.one_of(st.sampled_from(sorted(int(op) for op in ROUTES) + [int(Op.Hello)]), st.integers(0, 0xFFFF)),
    st.integers(0, 0xFFFFFFFF),
)
byte_frames = st.lists(st.one_of(st.binary(max_size=256), st.tuples(header, st.binary(max_size=4096))
                                 .map(lambda t: t[0] + t[1])), min_size=1, max_size=6)


@fuzz_settings
@given(chunks=byte_frames, hello_first=st.booleans())
def test_random_zap_bytes(node: TestNode, watch: Watch, chunks: list[bytes], hello_first: bool) -> None:
    with socket.create_connection(zap_addr(node), timeout=5) as sock:
        data = b"".join(chunks)
        if hello_first:
            data = Z.encode_frame(Z.REQUEST, Op.Hello, 1, HELLO) + data
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the node closed on the bad bytes already
        assert_no_5xx(read_frames(sock), watch)
    watch.after_example()


# ---------------------------------------------------------------------- msgpack bodies

leaves = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1),
                   st.floats(allow_nan=True), st.text(max_size=40), st.binary(max_size=40))
shallow = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=8), st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), inner, max_size=8),
), max_leaves=40)


def nest(depth: int, leaf: Any, as_map: bool) -> Any:
    for i in range(depth):
        leaf = {"k": leaf, "i": i} if as_map else [leaf]
    return leaf


deep = st.builds(nest, st.integers(1, 400), shallow, st.booleans())
wide = st.one_of(
    st.integers(0, 20000).map(lambda n: list(range(n))),
    st.integers(0, 5000).map(lambda n: {f"k{i}": i for i in range(n)}),
    st.integers(0, 2000).map(lambda n: [[[]]] * n),
)
values = st.one_of(shallow, deep, wide)
bodies = st.one_of(
    values,
    st.fixed_dictionaries({"workflow_type": st.one_of(st.text(max_size=20), values)},
                          optional={"workflow_id": st.one_of(st.text(max_size=30), values),
                                    "task_queue": st.one_of(st.text(max_size=20), values),
                                    "namespace": st.one_of(st.just("default"), st.text(max_size=20), values),
                                    "input": values, "memo": values, "search_attributes": values,
                                    "retry_policy": values, "execution_timeout_ms": values}),
)
ops = st.one_of(st.sampled_from(sorted(int(op) for op in ROUTES)), st.integers(0, 0xFFFF))


@fuzz_settings
@given(requests=st.lists(st.tuples(ops, bodies), min_size=1, max_size=4), as_hello=st.booleans())
def test_random_msgpack_bodies(node: TestNode, watch: Watch, requests: list[tuple[int, Any]],
                               as_hello: bool) -> None:
    frames = [] if as_hello else [Z.encode_frame(Z.REQUEST, Op.Hello, 1, HELLO)]
    for i, (op, body) in enumerate(requests):
        try:
            packed = msgpack.packb(body, use_bin_type=True)
        except (ValueError, OverflowError):
            continue  # not encodable by msgpack itself: nothing to send
        op = Op.Hello if as_hello and i == 0 else op
        payload = struct.pack(">BBHI", 1, Z.REQUEST, op, i + 2) + packed
        frames.append(struct.pack(">I", len(payload)) + payload)
    with socket.create_connection(zap_addr(node), timeout=5) as sock:
        try:
            sock.sendall(b"".join(frames))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        assert_no_5xx(read_frames(sock), watch)
    watch.after_example()


# ---------------------------------------------------------------------- HTTP

PATHS = ["/healthz", "/readyz", "/metrics", "/v1/tasks/namespaces", "/v1/tasks/namespaces/default",
         "/v1/tasks/namespaces/default/workflows", "/v1/tasks/namespaces/default/workflows/w1",
         "/v1/tasks/namespaces/default/workflows/w1/signal/s", "/v1/tasks/namespaces/default/schedules",
         "/v1/tasks/cluster", "/v1/tasks/settings", "/mcp"]
token = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
request_lines = st.one_of(
    st.builds(lambda m, p, q, v: f"{m} {p}{q} {v}".encode(),
              st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]) | token,
              st.sampled_from(PATHS) | token.map(lambda t: "/" + t),
              st.just("") | token.map(lambda t: "?" + t),
              st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9", "XYZ"])),
    st.binary(max_size=200),
)
header_lines = st.lists(st.one_of(
    st.sampled_from([b"Content-Type: application/json", b"Transfer-Encoding: chunked",
                     b"Content-Encoding: gzip", b"Connection: close", b"Expect: 100-continue"]),
    st.integers(-5, 1 << 40).map(lambda n: b"Content-Length: %d" % n),
    st.tuples(token, st.binary(max_size=100)).map(lambda t: t[0].encode() + b": " + t[1]),
    st.binary(max_size=60),
), max_size=6)
json_bodies = st.one_of(
    st.binary(max_size=2000),
    st.builds(nest, st.integers(1, 400), st.just(1), st.booleans()).map(
        lambda v: repr(v).replace("'", '"').encode()),
    st.integers(1, 300).map(lambda d: b"[" * d + b"]" * d),
    st.integers(1, 300).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
    shallow.map(lambda v: repr(v).encode()),
)


@fuzz_settings
@given(line=request_lines, headers=header_lines, body=json_bodies, length_right=st.booleans())
def test_random_http_requests(node: TestNode, watch: Watch, line: bytes, headers: list[bytes], body: bytes,
                              length_right: bool) -> None:
    head = [line, b"Host: fuzz"] + headers
    if length_right:
        head.append(b"Content-Length: %d" % len(body))
    raw = b"\r\n".join(head) + b"\r\n\r\n" + body
    host, port = node.url.split("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        got = b""
        sock.settimeout(5.0)
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    for status in re.findall(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3}) ", got):
        watch.statuses[int(status)] += 1
        assert int(status) < 500, got[:500]
    watch.after_example()
