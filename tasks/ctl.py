"""``tasksctl``: the command-line client of the HTTP API (SPEC §10.3).

It needs nothing of the server: the standard library, and of ``protocol`` only
``durations`` (itself standard library only), so that a spec is an interval
here exactly when the server reads it as one. (Being ``hanzo_tasks.ctl``, it is
loaded after the package's face, which imports the client library: that, not
this module, sets the start-up time.)

Every subcommand is one (or, when paging, a few) HTTP calls; the command
prints the body as JSON (``--output json``, exactly what the API answered,
pretty-printed) or as a compact human table.

Exit codes: 0 ok, 1 API or connection error, 2 usage error. Errors go to
stderr as ``error: <code>: <message>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

from hanzo_tasks.protocol.durations import parse_duration

DEFAULT_URL = "http://127.0.0.1:7243"
HTTP_TIMEOUT = 10.0  # seconds, per request (SPEC §2.4 uses the same)
POLL_INTERVAL = 0.5  # seconds between migration polls (migrate --wait)
POLL_TOLERANCE = 20  # consecutive transient poll failures tolerated (~10 s)

# The code to show for an error answer that carries none (a proxy's page). Not
# protocol.errors.CODE_STATUS turned round: that maps codes to statuses, several
# codes share a status (409, 503), and a proxy adds 502.
_STATUS_CODE = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "failed_precondition",
    413: "too_large",
    429: "rate_limited",
    500: "internal",
    501: "not_implemented",
    502: "unavailable",  # a proxy in front of the server
    503: "unavailable",
    504: "timeout",
    507: "storage_full",
}
_TRANSIENT = frozenset({"unavailable", "timeout", "rate_limited"})
_PREFIXES = (
    "WORKFLOW_EXECUTION_STATUS_",
    "NAMESPACE_STATE_",
    "EVENT_TYPE_",
    "SCHEDULE_OVERLAP_POLICY_",
)
_MIGRATION_STAGES = ("pending", "snapshotting", "catching-up", "cutover", "done")


class UsageError(Exception):
    """Bad command line (exit 2)."""


class ApiError(Exception):
    """An error answer from the server, or a failure to reach it (exit 1)."""

    def __init__(
        self, code: str, message: str, status: int = 0, details: Any = None, body: Any = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details = details
        self.body = body


# ------------------------------------------------------------------------ HTTP


class Api:
    """A minimal JSON-over-HTTP client for one server URL."""

    def __init__(self, url: str, token: str | None, timeout: float = HTTP_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        accept: Iterable[int] = (),
    ) -> tuple[int, Any]:
        """Send one request; return ``(status, parsed JSON body)``.

        Non-2xx answers raise ApiError, except the statuses listed in ``accept``
        (used by ``cluster health``, whose 503 body is a report, not an error).
        """
        url = self.url + path
        params = {k: _query_value(v) for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None
        headers = {"Accept": "application/json", "User-Agent": "tasksctl"}
        if method in ("POST", "PUT", "PATCH"):
            data = json.dumps({} if body is None else body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read() if exc.fp is not None else b""
            if status not in set(accept):
                raise _error_from_response(status, raw, exc.reason) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise ApiError("timeout", f"no answer from {self.url} within {self.timeout:g}s") from None
            raise ApiError("unavailable", f"cannot reach {self.url}: {_reason(reason)}") from None
        except TimeoutError:
            raise ApiError("timeout", f"no answer from {self.url} within {self.timeout:g}s") from None
        except (OSError, ValueError) as exc:  # reset connections, malformed URLs, ...
            raise ApiError("unavailable", f"cannot reach {self.url}: {_reason(exc)}") from None
        return status, _parse_body(raw, status)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _reason(reason: Any) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _parse_body(raw: bytes, status: int) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(
            "internal", f"the server answered {status} with a body that is not JSON", status
        ) from None


def _error_from_response(status: int, raw: bytes, reason: str) -> ApiError:
    """Map an error response to ApiError, tolerating non-JSON bodies (proxies)."""
    try:
        body = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = None
    code = _STATUS_CODE.get(status, "unknown")
    message = f"HTTP {status} {reason}".strip()
    details = None
    if isinstance(body, dict):
        code = str(body.get("code") or code)
        message = str(body.get("message") or message)
        details = body.get("details")
    elif raw.strip():
        snippet = raw.decode("utf-8", "replace").strip().splitlines()[0][:200]
        message = f"{message}: {snippet}"
    return ApiError(code, message, status, details, body)


def _seg(value: str) -> str:
    """Percent-encode one path segment (ids may contain spaces, '?', '#', ...)."""
    return urllib.parse.quote(value, safe="")


def _ns_path(ns: str) -> str:
    return f"/v1/tasks/namespaces/{_seg(ns)}"


# ---------------------------------------------------------------------- output


class Ctx:
    """What a subcommand needs: the API, parsed arguments, output mode and streams."""

    def __init__(self, api: Api, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.api = api
        self.args = args
        self.out = out
        self.err = err
        self.json = args.output == "json"
        self.namespace: str = args.namespace

    @property
    def ns(self) -> str:
        return _ns_path(self.namespace)

    def emit(self, body: Any, table: Callable[[Any], None] | None = None) -> None:
        """Print ``body`` as JSON, or with ``table`` (default: key: value lines)."""
        if self.json:
            self.out.write(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
        elif table is not None:
            table(body)
        else:
            self.record(body)

    def record(self, body: Any) -> None:
        if isinstance(body, dict):
            for line in _record_lines(body):
                self.out.write(line + "\n")
        else:
            self.out.write(_scalar(body) + "\n")

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        _write_table(self.out, headers, rows)


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value and "\n" not in value else json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _record_lines(obj: Mapping[str, Any], indent: int = 0) -> list[str]:
    """A record as indented ``key: value`` lines (nested maps indent, lists use ``-``)."""
    pad = " " * indent
    lines: list[str] = []
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            lines.extend(_record_lines(value, indent + 2))
        elif isinstance(value, list) and value:
            lines.append(f"{pad}{key}:")
            for item in value:
                if isinstance(item, dict) and item:
                    sub = _record_lines(item, indent + 4)
                    sub[0] = f"{pad}  - " + sub[0][indent + 4 :]
                    lines.extend(sub)
                else:
                    lines.append(f"{pad}  - {_scalar(item)}")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def _write_table(out: TextIO, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    for row in [list(headers), *cells]:
        out.write("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() + "\n")


def _cell(value: Any) -> str:
    if value == "":
        return ""
    if isinstance(value, str):
        for prefix in _PREFIXES:
            if value.startswith(prefix):
                return value[len(prefix) :]
    text = _scalar(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _get(obj: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _human_bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"  # pragma: no cover


# ------------------------------------------------------------------- arguments


def _json_arg(text: str | None, flag: str) -> Any:
    """``--input`` value: JSON text, ``@file`` (JSON in a file) or ``@-`` (stdin)."""
    if text is None:
        return None
    source = text
    if text.startswith("@"):
        path = text[1:]
        try:
            if path == "-":
                source = sys.stdin.read()
            else:
                with open(path, encoding="utf-8") as fh:
                    source = fh.read()
        except OSError as exc:
            raise UsageError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{flag}: not valid JSON ({exc.msg}); quote strings as JSON, e.g. {flag} '\"text\"'"
        ) from None


def _paged(
    ctx: Ctx, path: str, key: str, query: dict[str, Any], all_pages: bool
) -> dict[str, Any]:
    """GET a list route; with ``all_pages`` follow nextPageToken and merge the pages."""
    _, body = ctx.api.call("GET", path, query=query)
    if not all_pages or not isinstance(body, dict):
        return body
    items = list(body.get(key) or [])
    token = body.get("nextPageToken") or ""
    seen: set[str] = set()
    while token and token not in seen:
        seen.add(token)
        _, page = ctx.api.call("GET", path, query={**query, "nextPageToken": token})
        if not isinstance(page, dict):
            break
        items.extend(page.get(key) or [])
        token = page.get("nextPageToken") or ""
    return {**body, key: items, "nextPageToken": ""}


def _more_hint(ctx: Ctx, body: Any) -> None:
    if not ctx.json and isinstance(body, dict) and body.get("nextPageToken"):
        ctx.err.write("(more results: add --all to fetch every page)\n")


# ---------------------------------------------------------------- subcommands


def _call_and_emit(ctx: Ctx, method: str, path: str, **kw: Any) -> int:
    """One API call whose answer is printed as it is: most subcommands."""
    _, body = ctx.api.call(method, path, **kw)
    ctx.emit(body)
    return 0


def cmd_cluster_status(ctx: Ctx) -> int:
    _, body = ctx.api.call("GET", "/v1/tasks/cluster")

    def table(b: dict[str, Any]) -> None:
        for key in ("nodeId", "version", "replicator", "replicationFactor", "seed", "metaLeader", "partitionCount"):
            if key in b:
                ctx.out.write(f"{key}: {_scalar(b[key])}\n")
        ctx.out.write("\nMEMBERS\n")
        ctx.table(
            ["NODE ID", "STATE", "VOTER", "HTTP", "ZAP", "PEER"],
            [[m.get("nodeId"), m.get("state"), m.get("voter"), m.get("httpAddr"), m.get("zapAddr"), m.get("peerAddr")] for m in b.get("members") or []],
        )
        ctx.out.write("\nPARTITIONS\n")
        ctx.table(
            ["ID", "LEADER", "PREFERRED", "REPLICAS", "LOCAL", "SHARDS"],
            [[p.get("id"), p.get("leader"), p.get("preferredLeader"), ",".join(map(str, p.get("replicas") or [])), p.get("local"), p.get("shards")] for p in b.get("partitions") or []],
        )
        if b.get("namespaces"):
            ctx.out.write("\nNAMESPACES\n")
            ctx.table(
                ["ORG", "NAMESPACE", "PARTITION", "PINNED", "FENCED"],
                [[n.get("org"), n.get("namespace"), n.get("partition"), n.get("pinned"), n.get("fenced")] for n in b["namespaces"]],
            )
        if isinstance(b.get("stats"), dict):
            ctx.out.write("\nSTATS\n")
            for line in _record_lines(b["stats"]):
                ctx.out.write(line + "\n")

    ctx.emit(body, table if isinstance(body, dict) else None)
    return 0


def cmd_cluster_health(ctx: Ctx) -> int:
    status, body = ctx.api.call("GET", "/v1/tasks/cluster/health", accept=(503,))
    if status == 503 and isinstance(body, dict) and "status" not in body:
        err = _error_from_response(503, json.dumps(body).encode(), "Service Unavailable")
        raise err
    ctx.emit(body)
    return 1 if status == 503 else 0


def _ns_table(ctx: Ctx) -> Callable[[Any], None]:
    def table(body: Any) -> None:
        ctx.table(
            ["NAME", "STATE", "RETENTION", "REGION", "DESCRIPTION"],
            [
                [
                    _get(n, "namespaceInfo", "name"),
                    _get(n, "namespaceInfo", "state"),
                    _get(n, "config", "workflowExecutionRetentionTtl"),
                    _get(n, "namespaceInfo", "region"),
                    _get(n, "namespaceInfo", "description") or "",
                ]
                for n in body.get("namespaces") or []
            ],
        )

    return table


def cmd_ns_list(ctx: Ctx) -> int:
    a = ctx.args
    body = _paged(ctx, "/v1/tasks/namespaces", "namespaces", {"pageSize": a.page_size}, a.all)
    ctx.emit(body, _ns_table(ctx))
    _more_hint(ctx, body)
    return 0


def cmd_ns_create(ctx: Ctx) -> int:
    a = ctx.args
    info: dict[str, Any] = {"name": a.name}
    if a.description is not None:
        info["description"] = a.description
    payload: dict[str, Any] = {"namespaceInfo": info}
    if a.retention is not None:
        payload["config"] = {"workflowExecutionRetentionTtl": a.retention}
    return _call_and_emit(ctx, "POST", "/v1/tasks/namespaces", body=payload)


def cmd_ns_describe(ctx: Ctx) -> int:
    return _call_and_emit(ctx, "GET", _ns_path(ctx.args.name))


def cmd_ns_delete(ctx: Ctx) -> int:
    return _call_and_emit(ctx, "DELETE", _ns_path(ctx.args.name))


def _wf(ctx: Ctx, wid: str, suffix: str = "") -> str:
    return f"{ctx.ns}/workflows/{_seg(wid)}{suffix}"


def cmd_wf_start(ctx: Ctx) -> int:
    a = ctx.args
    payload: dict[str, Any] = {"workflowType": {"name": a.type}, "taskQueue": {"name": a.queue}}
    if a.id is not None:
        payload["workflowId"] = a.id
    if a.input is not None:
        payload["input"] = _json_arg(a.input, "--input")
    if a.request_id is not None:
        payload["requestId"] = a.request_id
    return _call_and_emit(ctx, "POST", f"{ctx.ns}/workflows", body=payload)


def cmd_wf_describe(ctx: Ctx) -> int:
    a = ctx.args
    return _call_and_emit(ctx, "GET", _wf(ctx, a.id), query={"runId": a.run})


def cmd_wf_list(ctx: Ctx) -> int:
    a = ctx.args
    query = {"query": a.query, "pageSize": a.page_size}
    body = _paged(ctx, f"{ctx.ns}/workflows", "executions", query, a.all)

    def table(b: Any) -> None:
        ctx.table(
            ["WORKFLOW ID", "RUN ID", "TYPE", "STATUS", "START"],
            [
                [
                    _get(w, "execution", "workflowId"),
                    _get(w, "execution", "runId"),
                    _get(w, "type", "name"),
                    w.get("status"),
                    w.get("startTime"),
                ]
                for w in b.get("executions") or []
            ],
        )

    ctx.emit(body, table if isinstance(body, dict) else None)
    _more_hint(ctx, body)
    return 0


def cmd_wf_signal(ctx: Ctx) -> int:
    a = ctx.args
    payload: dict[str, Any] = {"name": a.name}
    if a.input is not None:
        payload["payload"] = _json_arg(a.input, "--input")
    if a.request_id is not None:
        payload["requestId"] = a.request_id
    return _call_and_emit(ctx, "POST", _wf(ctx, a.id, "/signal"), query={"runId": a.run}, body=payload)


def _wf_end(ctx: Ctx, action: str) -> int:
    """``wf cancel`` / ``wf terminate``: the same request to two routes."""
    a = ctx.args
    payload = {"reason": a.reason} if a.reason is not None else {}
    return _call_and_emit(ctx, "POST", _wf(ctx, a.id, action), query={"runId": a.run}, body=payload)


def cmd_wf_cancel(ctx: Ctx) -> int:
    return _wf_end(ctx, "/cancel")


def cmd_wf_terminate(ctx: Ctx) -> int:
    return _wf_end(ctx, "/terminate")


def cmd_wf_history(ctx: Ctx) -> int:
    a = ctx.args
    query = {"runId": a.run, "reverse": True if a.reverse else None, "pageSize": a.page_size}
    body = _paged(ctx, _wf(ctx, a.id, "/history"), "events", query, True)
    if isinstance(body, dict) and "nextCursor" in body:
        body["nextCursor"] = 0

    def table(b: Any) -> None:
        ctx.table(
            ["EVENT ID", "TIME", "TYPE", "ATTRIBUTES"],
            [[e.get("eventId"), e.get("eventTime"), e.get("eventType"), e.get("attributes") or ""] for e in b.get("events") or []],
        )

    ctx.emit(body, table if isinstance(body, dict) else None)
    return 0


def cmd_wf_query(ctx: Ctx) -> int:
    a = ctx.args
    payload: dict[str, Any] = {"queryType": a.query_type}
    if a.args is not None:
        payload["args"] = _json_arg(a.args, "--args")
    if a.timeout is not None:
        payload["timeout"] = a.timeout
    _, body = ctx.api.call("POST", _wf(ctx, a.id, "/query"), query={"runId": a.run}, body=payload)

    def table(b: Any) -> None:
        result = b.get("queryResult") if isinstance(b, dict) else b
        if isinstance(result, dict | list):
            ctx.out.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        else:
            ctx.out.write(_scalar(result) + "\n")

    ctx.emit(body, table)
    return 0


def cmd_wf_reset(ctx: Ctx) -> int:
    a = ctx.args
    payload: dict[str, Any] = {"eventId": a.event_id}
    for key, value in (("runId", a.run), ("reason", a.reason), ("requestId", a.request_id)):
        if value is not None:
            payload[key] = value
    return _call_and_emit(ctx, "POST", _wf(ctx, a.id, "/reset"), body=payload)


def _sched(ctx: Ctx, sid: str, suffix: str = "") -> str:
    return f"{ctx.ns}/schedules/{_seg(sid)}{suffix}"


def schedule_spec(spec: str) -> dict[str, Any]:
    """``--spec``: a Go-style duration is an interval, anything else a cron string
    (the same classification as the client library, SPEC §2.2)."""
    text = spec.strip()
    if not text:
        raise UsageError("--spec must not be empty")
    try:
        parse_duration(text)
    except ValueError:
        return {"cronString": [text]}
    return {"interval": [{"interval": text}]}


def cmd_schedule_create(ctx: Ctx) -> int:
    a = ctx.args
    action: dict[str, Any] = {"workflowType": {"name": a.type}, "taskQueue": a.queue}
    if a.input is not None:
        action["input"] = _json_arg(a.input, "--input")
    payload: dict[str, Any] = {
        "scheduleId": a.id,
        "spec": schedule_spec(a.spec),
        "action": action,
        "state": {"paused": a.paused},
    }
    if a.overlap is not None:
        payload["policies"] = {"overlapPolicy": a.overlap}
    if a.note is not None:
        payload["state"]["note"] = a.note
    query = {"upsert": True} if a.upsert else None
    return _call_and_emit(ctx, "POST", f"{ctx.ns}/schedules", query=query, body=payload)


def _schedule_spec_text(s: Any) -> str:
    spec = s.get("spec") or {}
    parts = list(spec.get("cronString") or [])
    parts += [f"every {i.get('interval')}" for i in spec.get("interval") or [] if isinstance(i, dict)]
    return "; ".join(parts)


def cmd_schedule_list(ctx: Ctx) -> int:
    a = ctx.args
    body = _paged(ctx, f"{ctx.ns}/schedules", "schedules", {"pageSize": a.page_size}, a.all)

    def table(b: Any) -> None:
        ctx.table(
            ["SCHEDULE ID", "WORKFLOW TYPE", "SPEC", "PAUSED", "NEXT ACTION"],
            [
                [
                    s.get("scheduleId"),
                    _get(s, "action", "workflowType", "name"),
                    _schedule_spec_text(s),
                    _get(s, "state", "paused"),
                    _get(s, "info", "nextActionTime"),
                ]
                for s in b.get("schedules") or []
            ],
        )

    ctx.emit(body, table if isinstance(body, dict) else None)
    _more_hint(ctx, body)
    return 0


def cmd_schedule_describe(ctx: Ctx) -> int:
    return _call_and_emit(ctx, "GET", _sched(ctx, ctx.args.id))


def _schedule_toggle(ctx: Ctx, action: str) -> int:
    a = ctx.args
    payload = {"note": a.note} if a.note is not None else {}
    return _call_and_emit(ctx, "POST", _sched(ctx, a.id, action), body=payload)


def cmd_schedule_pause(ctx: Ctx) -> int:
    return _schedule_toggle(ctx, "/pause")


def cmd_schedule_unpause(ctx: Ctx) -> int:
    return _schedule_toggle(ctx, "/unpause")


def cmd_schedule_trigger(ctx: Ctx) -> int:
    a = ctx.args
    payload: dict[str, Any] = {}
    if a.overlap is not None:
        payload["overlapPolicy"] = a.overlap
    if a.request_id is not None:
        payload["requestId"] = a.request_id
    return _call_and_emit(ctx, "POST", _sched(ctx, a.id, "/trigger"), body=payload)


def cmd_schedule_delete(ctx: Ctx) -> int:
    return _call_and_emit(ctx, "DELETE", _sched(ctx, ctx.args.id))


def cmd_schedule_times(ctx: Ctx) -> int:
    a = ctx.args
    _, body = ctx.api.call(
        "GET", _sched(ctx, a.id, "/matching-times"), query={"from": a.from_, "to": a.to}
    )

    def table(b: Any) -> None:
        ctx.table(["TIME"], [[t] for t in b.get("matchingTimes") or []])

    ctx.emit(body, table if isinstance(body, dict) else None)
    return 0


def _migrations_table(ctx: Ctx) -> Callable[[Any], None]:
    def table(b: Any) -> None:
        ctx.table(
            ["ID", "NAMESPACE", "FROM", "TO", "STATUS", "BYTES", "TAIL", "FENCED MS", "STARTED"],
            [
                [
                    j.get("id"),
                    j.get("namespace"),
                    j.get("from"),
                    j.get("to"),
                    j.get("status"),
                    _human_bytes(j.get("bytes")),
                    j.get("tailEntries"),
                    j.get("fencedMs"),
                    j.get("startedAt"),
                ]
                for j in b.get("jobs") or []
            ],
        )

    return table


def _progress_line(job: Mapping[str, Any]) -> str:
    status = str(job.get("status") or "?")
    stage = _MIGRATION_STAGES.index(status) if status in _MIGRATION_STAGES else 0
    width = 24
    filled = width * stage // (len(_MIGRATION_STAGES) - 1)
    bar = "#" * filled + "-" * (width - filled)
    return (
        f"[{bar}] {status:<12} bytes={_human_bytes(job.get('bytes'))} "
        f"tail={_scalar(job.get('tailEntries'))} fenced={_scalar(job.get('fencedMs'))}ms"
    )


def cmd_migrate(ctx: Ctx) -> int:
    a = ctx.args
    _, job = ctx.api.call("POST", f"{_ns_path(a.ns)}/migrate", body={"toNode": a.to})
    if not a.wait:
        ctx.emit(job)
        return 0
    job_id = job.get("id") if isinstance(job, dict) else None
    if not job_id:
        raise ApiError("internal", "the migrate answer carries no job id")
    tty = hasattr(ctx.err, "isatty") and ctx.err.isatty()
    last_line = ""
    failures = 0
    while True:
        line = _progress_line(job)
        if line != last_line:
            if tty:
                ctx.err.write("\r" + line.ljust(len(last_line)))
            else:
                ctx.err.write(line + "\n")
            ctx.err.flush()
            last_line = line
        if job.get("status") in ("done", "failed"):
            break
        time.sleep(POLL_INTERVAL)
        try:
            _, job = ctx.api.call("GET", f"/v1/tasks/migrations/{_seg(job_id)}")
            failures = 0
        except ApiError as exc:
            failures += 1
            if exc.code not in _TRANSIENT or failures >= POLL_TOLERANCE:
                if tty:
                    ctx.err.write("\n")
                raise
    if tty:
        ctx.err.write("\n")
    ctx.emit(job)
    if job.get("status") == "failed":
        ctx.err.write(f"error: failed: migration {job_id} failed: {job.get('error') or 'unknown reason'}\n")
        return 1
    return 0


def cmd_migrations_list(ctx: Ctx) -> int:
    a = ctx.args
    body = _paged(ctx, "/v1/tasks/migrations", "jobs", {"pageSize": a.page_size}, a.all)
    ctx.emit(body, _migrations_table(ctx))
    _more_hint(ctx, body)
    return 0


def cmd_migrations_describe(ctx: Ctx) -> int:
    return _call_and_emit(ctx, "GET", f"/v1/tasks/migrations/{_seg(ctx.args.id)}")


# ------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """Raises UsageError instead of printing and exiting, so main() owns the
    error format and the exit code."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(message, self)


_MAIN_EPILOG = """\
environment:
  TASKS_URL          server URL (default http://127.0.0.1:7243)
  TASKS_AUTH_TOKEN   bearer token
  TASKS_NAMESPACE    namespace (default "default")

examples:
  tasksctl wf start charge-card --input '{"amount": 42}'
  tasksctl -n prod wf list --query 'ExecutionStatus="Running"'
  tasksctl schedule create nightly --spec '0 3 * * *' --type report
  tasksctl --output json cluster status

Exit status: 0 ok, 1 API or connection error, 2 usage error.
"""


def _globals_parent(suppress: bool) -> argparse.ArgumentParser:
    """The global options. Added to the root parser and, with defaults
    suppressed, to every subcommand, so they work before or after it."""
    p = argparse.ArgumentParser(add_help=False)
    d = argparse.SUPPRESS if suppress else None
    p.add_argument("--url", default=d, help=f"server URL (env TASKS_URL; default {DEFAULT_URL})")
    p.add_argument("--token", default=d, help="bearer token (env TASKS_AUTH_TOKEN)")
    p.add_argument("-n", "--namespace", default=d, help="namespace (env TASKS_NAMESPACE; default 'default')")
    p.add_argument("-o", "--output", choices=("json", "table"), default=d, help="output format (default table)")
    return p


class _Builder:
    """Helper that adds subcommands with a description, examples and globals."""

    def __init__(self) -> None:
        self.parent = _globals_parent(suppress=True)

    def group(self, subs: Any, name: str, help: str, epilog: str) -> tuple[argparse.ArgumentParser, Any]:
        parser = subs.add_parser(
            name, help=help, description=help, epilog=epilog, parents=[self.parent],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(func=None, help_parser=parser)
        return parser, parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(
        self, subs: Any, name: str, help: str, func: Callable[[Ctx], int], epilog: str = ""
    ) -> argparse.ArgumentParser:
        parser = subs.add_parser(
            name, help=help, description=help, epilog=epilog or None, parents=[self.parent],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(func=func, help_parser=parser)
        return parser


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page-size", type=int, metavar="N", help="items per page (1-1000)")
    parser.add_argument("--all", action="store_true", help="follow nextPageToken and print every page")


def build_parser() -> argparse.ArgumentParser:
    """The whole tasksctl command tree."""
    root = _Parser(
        prog="tasksctl",
        description="Command-line client for a Hanzo Tasks server (HTTP API).",
        epilog=_MAIN_EPILOG,
        parents=[_globals_parent(suppress=False)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    root.set_defaults(func=None, help_parser=root)
    b = _Builder()
    top = root.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)

    # cluster
    _, cl = b.group(top, "cluster", "cluster membership, partitions and health",
                    "examples:\n  tasksctl cluster status\n  tasksctl cluster health || echo degraded")
    b.command(cl, "status", "show members, partitions, shards and stats (GET /v1/tasks/cluster)", cmd_cluster_status)
    b.command(cl, "health", "quorum health of this node's groups; exits 1 when degraded", cmd_cluster_health)

    # namespaces
    _, ns = b.group(top, "ns", "list, create, describe and delete namespaces",
                    "examples:\n  tasksctl ns create payments --retention 168h --description 'card payments'\n  tasksctl ns list")
    p = b.command(ns, "list", "list namespaces", cmd_ns_list)
    _paging(p)
    p = b.command(ns, "create", "register a namespace", cmd_ns_create,
                  "example:\n  tasksctl ns create payments --retention 720h")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--retention", metavar="DURATION", help="closed-run retention, e.g. 720h (default 720h)")
    p.add_argument("--description", metavar="TEXT")
    p = b.command(ns, "describe", "show one namespace", cmd_ns_describe)
    p.add_argument("name", metavar="NAME")
    p = b.command(ns, "delete", "mark a namespace DELETED (purged after its retention)", cmd_ns_delete)
    p.add_argument("name", metavar="NAME")

    # workflows
    _, wf = b.group(top, "wf", "start, inspect and control workflows (in --namespace)",
                    "examples:\n  tasksctl wf start charge-card --id order-17 --input @order.json\n"
                    "  tasksctl wf history order-17\n  tasksctl wf signal order-17 approve --input true")
    p = b.command(wf, "start", "start a workflow", cmd_wf_start,
                  "examples:\n  tasksctl wf start charge-card --input '{\"amount\": 42}'\n"
                  "  tasksctl wf start report --id daily-report --queue reports --request-id r-1")
    p.add_argument("type", metavar="TYPE", help="workflow type")
    p.add_argument("--id", help="workflow id (default: generated from the type)")
    p.add_argument("--queue", default="default", metavar="Q", help="task queue (default 'default')")
    p.add_argument("--input", metavar="JSON|@FILE", help="input as JSON, @file or @- for stdin")
    p.add_argument("--request-id", metavar="R", help="idempotency key: a retry with it starts nothing new")
    p = b.command(wf, "describe", "show a workflow run (latest run by default)", cmd_wf_describe)
    p.add_argument("id", metavar="ID")
    p.add_argument("--run", metavar="RUN_ID")
    p = b.command(wf, "list", "list workflow runs, newest first", cmd_wf_list,
                  "examples:\n  tasksctl wf list --query 'WorkflowType=\"charge-card\"' --all")
    p.add_argument("--query", metavar="Q", help="visibility query")
    _paging(p)
    p = b.command(wf, "signal", "send a signal to a running workflow", cmd_wf_signal,
                  "example:\n  tasksctl wf signal order-17 approve --input '{\"by\": \"ana\"}'")
    p.add_argument("id", metavar="ID")
    p.add_argument("name", metavar="NAME", help="signal name")
    p.add_argument("--input", metavar="JSON|@FILE", help="signal payload")
    p.add_argument("--run", metavar="RUN_ID")
    p.add_argument("--request-id", metavar="R")
    p = b.command(wf, "cancel", "request cancellation (the worker may clean up)", cmd_wf_cancel)
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason", metavar="TEXT")
    p.add_argument("--run", metavar="RUN_ID")
    p = b.command(wf, "terminate", "stop a workflow at once, without running its code", cmd_wf_terminate)
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason", metavar="TEXT")
    p.add_argument("--run", metavar="RUN_ID")
    p = b.command(wf, "history", "print the event history of a run (every page)", cmd_wf_history)
    p.add_argument("id", metavar="ID")
    p.add_argument("--run", metavar="RUN_ID")
    p.add_argument("--reverse", action="store_true", help="newest event first")
    p.add_argument("--page-size", type=int, metavar="N", help="events per request")
    p = b.command(wf, "query", "query a workflow (answered by its worker)", cmd_wf_query,
                  "example:\n  tasksctl wf query order-17 __workflow_metadata")
    p.add_argument("id", metavar="ID")
    p.add_argument("query_type", metavar="TYPE", help="query type")
    p.add_argument("--args", metavar="JSON|@FILE", help="query arguments")
    p.add_argument("--run", metavar="RUN_ID")
    p.add_argument("--timeout", metavar="DURATION", help="how long to wait (default 5s, max 30s)")
    p = b.command(wf, "reset", "start a new run from a point in the history", cmd_wf_reset,
                  "example:\n  tasksctl wf reset order-17 --event-id 4 --reason 'bad deploy'")
    p.add_argument("id", metavar="ID")
    p.add_argument("--event-id", type=int, required=True, metavar="N", help="last event kept (1..historyLength)")
    p.add_argument("--run", metavar="RUN_ID")
    p.add_argument("--reason", metavar="TEXT")
    p.add_argument("--request-id", metavar="R")

    # schedules
    _, sc = b.group(top, "schedule", "create and control durable schedules (in --namespace)",
                    "examples:\n  tasksctl schedule create nightly --spec '0 3 * * *' --type report\n"
                    "  tasksctl schedule create poll --spec 30s --type poll-feed --overlap skip\n"
                    "  tasksctl schedule times nightly")
    p = b.command(sc, "create", "create a schedule that starts a workflow type", cmd_schedule_create,
                  "--spec is an interval when it is a duration (30s, 1h30m), else a cron\n"
                  "expression ('0 3 * * *', '@hourly', 'CRON_TZ=Europe/Paris 0 9 * * MON').\n\n"
                  "examples:\n  tasksctl schedule create nightly --spec '0 3 * * *' --type report\n"
                  "  tasksctl schedule create tick --spec 5m --type tick --paused")
    p.add_argument("id", metavar="ID")
    p.add_argument("--spec", required=True, metavar="SPEC", help="duration (interval) or cron expression")
    p.add_argument("--type", required=True, metavar="T", help="workflow type to start")
    p.add_argument("--queue", default="default", metavar="Q", help="task queue (default 'default')")
    p.add_argument("--input", metavar="JSON|@FILE", help="workflow input")
    p.add_argument("--overlap", metavar="POLICY", help="skip, buffer_one, buffer_all, cancel_other, terminate_other, allow_all")
    p.add_argument("--paused", action="store_true", help="create it paused")
    p.add_argument("--note", metavar="TEXT", help="state note")
    p.add_argument("--upsert", action="store_true", help="replace an existing schedule of that id")
    p = b.command(sc, "list", "list schedules", cmd_schedule_list)
    _paging(p)
    p = b.command(sc, "describe", "show a schedule with its next and recent actions", cmd_schedule_describe)
    p.add_argument("id", metavar="ID")
    p = b.command(sc, "pause", "stop firing (times passed while paused are not replayed)", cmd_schedule_pause)
    p.add_argument("id", metavar="ID")
    p.add_argument("--note", metavar="TEXT")
    p = b.command(sc, "unpause", "resume firing", cmd_schedule_unpause)
    p.add_argument("id", metavar="ID")
    p.add_argument("--note", metavar="TEXT")
    p = b.command(sc, "trigger", "start the action now, even when paused", cmd_schedule_trigger)
    p.add_argument("id", metavar="ID")
    p.add_argument("--overlap", metavar="POLICY", help="overlap policy for this trigger")
    p.add_argument("--request-id", metavar="R")
    p = b.command(sc, "delete", "delete a schedule (started workflows keep running)", cmd_schedule_delete)
    p.add_argument("id", metavar="ID")
    p = b.command(sc, "times", "list the times the schedule matches (default: next 24h)", cmd_schedule_times,
                  "example:\n  tasksctl schedule times nightly --from 2026-05-01T00:00:00Z --to 2026-05-08T00:00:00Z")
    p.add_argument("id", metavar="ID")
    p.add_argument("--from", dest="from_", metavar="TIME", help="RFC 3339 start (default now)")
    p.add_argument("--to", metavar="TIME", help="RFC 3339 end (default from + 24h)")

    # migration
    p = b.command(top, "migrate", "move a namespace to a partition led by another node", cmd_migrate,
                  "examples:\n  tasksctl migrate payments --to n2\n  tasksctl migrate payments --to n3 --wait")
    p.add_argument("ns", metavar="NS", help="namespace to move")
    p.add_argument("--to", required=True, metavar="NODE", help="destination node id")
    p.add_argument("--wait", action="store_true", help="follow the job with a progress bar; exit 1 if it fails")
    _, mg = b.group(top, "migrations", "list and inspect namespace migration jobs",
                    "examples:\n  tasksctl migrations list\n  tasksctl migrations describe mig-0123456789abcdef")
    p = b.command(mg, "list", "list migration jobs, newest first", cmd_migrations_list)
    _paging(p)
    p = b.command(mg, "describe", "show one migration job", cmd_migrations_describe)
    p.add_argument("id", metavar="ID")
    return root


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value else None  # an empty variable counts as unset


def main(argv: list[str] | None = None) -> int:
    """Run tasksctl; returns the exit code (the console script exits with it)."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    out, err = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except UsageError as exc:
        bad_parser = exc.args[1] if len(exc.args) > 1 else parser
        err.write(bad_parser.format_usage())
        err.write(f"error: usage: {exc.args[0]}\n")
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    if args.func is None:  # a group without its subcommand: teach, then usage error
        args.help_parser.print_help(err)
        return 2
    url = getattr(args, "url", None) or _env(os.environ, "TASKS_URL") or DEFAULT_URL
    if not re.match(r"https?://[^/]", url):
        err.write(f"error: usage: --url must be an http:// or https:// URL, got {url!r}\n")
        return 2
    args.namespace = getattr(args, "namespace", None) or _env(os.environ, "TASKS_NAMESPACE") or "default"
    args.output = getattr(args, "output", None) or "table"
    token = getattr(args, "token", None) or _env(os.environ, "TASKS_AUTH_TOKEN")
    ctx = Ctx(Api(url, token), args, out, err)
    try:
        return args.func(ctx)
    except BrokenPipeError:  # `tasksctl wf list | head`: the reader left; that is not an error
        with contextlib.suppress(Exception):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UsageError as exc:
        err.write(f"error: usage: {exc.args[0]}\n")
        return 2
    except ApiError as exc:
        err.write(f"error: {exc.code}: {exc.message}\n")
        if exc.details:
            err.write(f"details: {json.dumps(exc.details, ensure_ascii=False)}\n")
        return 1
    except KeyboardInterrupt:
        err.write("\ninterrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
