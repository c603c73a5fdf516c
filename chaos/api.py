"""HTTP calls to the nodes, and what an answer means for a write.

The history must say, for every write, whether it took effect: ``ok``
(acknowledged), ``failed`` (certainly not applied) or ``unknown`` (it may have
been applied, now or later). Getting this wrong in the safe direction only
weakens the checks; getting it wrong the other way makes false alarms, so
anything not proven to have failed is ``unknown``:

- 2xx: ok.
- 400/404/409/413/429/507 (SPEC §4.1): refused before or by the state
  machine, nothing applied: failed.
- 503 (a proposal that did not commit in time), 500, 504, any other status,
  a timeout, or a connection that broke after the request was sent: unknown.
- a connection that could not be opened: failed (nothing was sent).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

OK, FAILED, UNKNOWN = "ok", "failed", "unknown"
DEFINITE_FAILURES = frozenset({400, 401, 403, 404, 405, 409, 413, 429, 507})


@dataclass
class Reply:
    """One HTTP exchange: ``status`` is None when no answer came back."""

    status: int | None
    body: Any
    served_by: str | None
    error: str | None
    sent: bool  # False only when the connection could not be opened
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None

    def write_outcome(self) -> str:
        """ok / failed / unknown for a write (see the module doc)."""
        if self.ok:
            return OK
        if self.status is None:
            return UNKNOWN if self.sent else FAILED
        if self.status in DEFINITE_FAILURES:
            return FAILED
        return UNKNOWN

    def brief(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.served_by:
            out["node"] = self.served_by
        if self.error:
            out["error"] = self.error
        elif not self.ok and self.code:
            out["code"] = self.code
        return out


class Api:
    """One aiohttp session shared by every client of a run."""

    def __init__(self, *, connect_timeout: float = 2.0, limit: int = 64) -> None:
        self._connect_timeout = connect_timeout
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            conn = aiohttp.TCPConnector(limit=self._limit, force_close=False, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=conn)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self,
        base_url: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float = 10.0,
    ) -> Reply:
        """One request; never raises for network trouble (see ``Reply``)."""
        assert self._session is not None, "Api not opened"
        started = time.monotonic()
        data = None if body is None else json.dumps(body)
        to = aiohttp.ClientTimeout(total=timeout, sock_connect=self._connect_timeout)
        try:
            async with self._session.request(
                method, base_url + path, data=data, timeout=to,
                headers={"Content-Type": "application/json"} if data is not None else None,
            ) as resp:
                raw = await resp.read()
                try:
                    parsed: Any = json.loads(raw) if raw else None
                except ValueError:
                    parsed = raw[:200].decode(errors="replace")
                return Reply(resp.status, parsed, resp.headers.get("X-Tasks-Node"), None, True,
                             time.monotonic() - started)
        except aiohttp.ClientConnectorError as e:
            return Reply(None, None, None, f"connect: {e.os_error or e}", False, time.monotonic() - started)
        except TimeoutError:
            return Reply(None, None, None, "timeout", True, time.monotonic() - started)
        except (aiohttp.ClientError, OSError) as e:
            return Reply(None, None, None, f"{type(e).__name__}: {e}", True, time.monotonic() - started)

    async def text(self, base_url: str, path: str, *, timeout: float = 5.0) -> str | None:
        """A GET's whole body as text (``/metrics``), or None on any error or non-2xx status."""
        assert self._session is not None, "Api not opened"
        to = aiohttp.ClientTimeout(total=timeout, sock_connect=self._connect_timeout)
        try:
            async with self._session.get(base_url + path, timeout=to) as resp:
                raw = await resp.read()
                return raw.decode(errors="replace") if 200 <= resp.status < 300 else None
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    async def get(self, base_url: str, path: str, *, timeout: float = 10.0) -> Reply:
        return await self.call(base_url, "GET", path, timeout=timeout)

    async def post(self, base_url: str, path: str, body: Any = None, *, timeout: float = 10.0) -> Reply:
        return await self.call(base_url, "POST", path, {} if body is None else body, timeout=timeout)
