"""A closed-loop HTTP/1.1 load generator on raw asyncio streams, with keep-alive.

Why not aiohttp's client: on a 2-core machine the generator shares the cores
with the servers it measures, so it must cost as little CPU per request as
possible. Each client here is one coroutine on one keep-alive TCP connection
that sends a ready-made request (bytes from a factory), reads the status line,
the headers and a ``Content-Length`` (or chunked) body, and sends the next one
at once. Nothing else: no cookie jar, no header objects, no JSON decoding.

The result carries the generator's own CPU time over the run, so a report can
show that the generator was not the bottleneck (well below one core).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

RequestFactory = Callable[[int, int], bytes]  # (client index, sequence number) -> request bytes
GRACE_SECONDS = 30.0  # a request still open this long after the deadline counts as a timeout


def http_request(method: str, host: str, port: int, path: str, body: bytes,
                 content_type: str = "application/json") -> bytes:
    """One HTTP/1.1 request (keep-alive is HTTP/1.1's default) as bytes."""
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


@dataclass
class LoadResult:
    clients: int
    seconds: float  # from the first send to the last answer
    ok: int  # 2xx answers
    latencies: list[float]  # seconds, of the 2xx answers, sorted
    errors: dict[str, int] = field(default_factory=dict)
    generator_cpu_seconds: float = 0.0  # this process's CPU time over the run
    first_error_body: str = ""  # the body of the first non-2xx answer (truncated)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, server keeps the connection) of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    keep = b"\r\nconnection: close" not in lower
    i = lower.find(b"\r\ncontent-length:")
    if i >= 0:
        j = lower.index(b"\r\n", i + 2)
        return status, await reader.readexactly(int(lower[i + 17:j])), keep
    if b"\r\ntransfer-encoding: chunked" in lower:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # the empty trailer
                return status, b"".join(parts), keep
            parts.append((await reader.readexactly(size + 2))[:-2])
    return status, b"", keep


async def run_load(host: str, port: int, make_request: RequestFactory, clients: int,
                   seconds: float) -> LoadResult:
    """``clients`` connections sending requests back to back for ``seconds``.

    A request is sent only before the deadline; the run ends when every client
    has its last answer (or ``GRACE_SECONDS`` later, the rest counted as
    ``timeout``). Transport errors reconnect and count by exception name.
    """
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    first_error: list[str] = []
    perf = time.perf_counter

    async def client(i: int, deadline: float) -> None:
        reader = writer = None
        seq = 0
        try:
            while perf() < deadline:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                seq += 1
                request = make_request(i, seq)
                t0 = perf()
                try:
                    writer.write(request)
                    assert reader is not None
                    status, body, keep = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
                    errors[type(e).__name__] += 1
                    writer.close()
                    reader = writer = None
                    continue
                if 200 <= status < 300:
                    latencies.append(perf() - t0)
                else:
                    errors[f"HTTP {status}"] += 1
                    if not first_error:
                        first_error.append(body[:300].decode(errors="replace"))
                if not keep:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    cpu0 = time.process_time()
    begin = perf()
    tasks = [asyncio.ensure_future(client(i, begin + seconds)) for i in range(clients)]
    done, pending = await asyncio.wait(tasks, timeout=seconds + GRACE_SECONDS)
    for t in pending:
        t.cancel()
    if pending:
        errors["timeout"] += len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if t.exception() is not None:
            errors[f"client died: {type(t.exception()).__name__}"] += 1
    elapsed = perf() - begin
    cpu = time.process_time() - cpu0
    latencies.sort()
    return LoadResult(clients=clients, seconds=elapsed, ok=len(latencies), latencies=latencies,
                      errors=dict(errors), generator_cpu_seconds=cpu,
                      first_error_body=first_error[0] if first_error else "")
