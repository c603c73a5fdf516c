"""What every HTTP-facing module of a node shares: the request as handlers see
it (:class:`Call`), the route table, JSON bodies in and out, and the key under
which the node hangs on the aiohttp app.

It sits below ``server`` (the route table and handlers) and beside ``sse``,
``mcp``, ``records`` and ``migrations``, which all import it, so that none of
them has to import the server module back.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

from aiohttp import web
from hanzo_tasks.cluster.api.client_errors import CLIENT_CAUSED, client_error
from hanzo_tasks.cluster.auth import DEV_CALLER, Caller
from hanzo_tasks.cluster.service import Service
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.protocol.names import ADMIN, DEVELOPER, VIEWER, check_run_id
from hanzo_tasks.protocol.nesting import deeper_than, depth_message

Json = dict[str, Any]
NS = "/v1/tasks/namespaces/{ns}"
NODE_KEY: web.AppKey[Any] = web.AppKey("node", object)


@dataclass
class Call:
    """One request as the handlers see it."""

    request: web.Request
    params: dict[str, str]
    org: str
    caller: Caller = DEV_CALLER
    _body: Json | None = field(default=None)

    @property
    def query(self) -> Any:
        return self.request.query

    def body(self) -> Json:
        assert self._body is not None
        return self._body

    def run_id(self) -> str | None:
        rid = self.query.get("runId") or self.query.get("execution.runId")
        if rid:
            check_run_id(rid)
        return rid or None


Handler = Callable[[Service, Call], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    parts: tuple[str, ...]
    status: int = 200
    role: str | None = None
    """The least role that may call it when auth is on (SPEC §4, column Role); None: no token needed."""
    operator: bool = False
    """Cluster-wide, not an org's: with auth on, only an operator token (claim tasks_cluster_admin)."""
    raw_body: bool = False
    """The handler reads and judges its own body (MCP: bad JSON is a JSON-RPC error, not a 400)."""
    query_token: bool = False
    """The token may come as ``?access_token=`` (SSE: a browser's EventSource cannot set headers)."""


# The roles of SPEC §5.13, short, as the route table names them.
V, D, A = VIEWER, DEVELOPER, ADMIN


class _Pattern(NamedTuple):
    route: Route
    literals: tuple[tuple[int, str], ...]
    params: tuple[tuple[int, str], ...]


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []
        # Routes by number of path segments, in order of addition, each with its
        # literal segments and its parameters by position: a path is compared only
        # with the routes of its own length, and only on their literals.
        self._by_length: dict[int, list[_Pattern]] = {}

    def add(self, method: str, template: str, handler: Handler, status: int = 200, *,
            role: str | None, operator: bool = False, raw_body: bool = False, query_token: bool = False) -> None:
        """``role`` must be given for every route (None only for the health and
        settings routes), so that no route is ever added without a decision."""
        parts = tuple(template.strip("/").split("/")) if template != "/" else ()
        route = Route(method, template, handler, parts, status, role, operator, raw_body, query_token)
        self.routes.append(route)
        literals = tuple((i, p) for i, p in enumerate(parts) if not p.startswith("{"))
        params = tuple((i, p[1:-1]) for i, p in enumerate(parts) if p.startswith("{"))
        self._by_length.setdefault(len(parts), []).append(_Pattern(route, literals, params))

    def match(self, segments: list[str], method: str) -> tuple[Route | None, dict[str, str], list[str], str]:
        """(route, params, allowed methods, template of the path)."""
        allowed: list[str] = []
        found: Route | None = None
        found_params: dict[str, str] = {}
        template = "unmatched"
        best_literals = -1
        for r, literal_at, param_at in self._by_length.get(len(segments), ()):
            for i, lit in literal_at:
                if segments[i] != lit:
                    break
            else:
                if r.method == method or (method == "HEAD" and r.method == "GET"):
                    if len(literal_at) > best_literals:
                        found, best_literals = r, len(literal_at)
                        found_params = {name: segments[i] for i, name in param_at}
                        template = r.template
                if r.method not in allowed:
                    allowed.append(r.method)
                if template == "unmatched":
                    template = r.template
        return found, found_params, allowed, template


def json_response(status: int, body: Any, node_id: str, headers: dict[str, str] | None = None) -> web.Response:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    h = {"X-Tasks-Node": node_id}
    if headers:
        h.update(headers)
    return web.Response(status=status, text=text, content_type="application/json", headers=h)


def error_response(e: ApiError, node_id: str) -> web.Response:
    headers: dict[str, str] = {}
    if e.status in (429, 503):
        headers["Retry-After"] = str(max(1, int(e.retry_after or 1)))
    if e.status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return json_response(e.status, e.body(), node_id, headers)


async def read_body(request: web.Request, limit: int, max_depth: int | None = None) -> Json:
    """The JSON object body; 413 past ``limits.max_body``, judged before or while reading;
    400 when it nests deeper than ``max_depth`` (``limits.max_depth``) or is cut short."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError("too_large", f"request body over {limit} bytes")
    raw = await read_raw(request, limit)
    if not raw.strip():
        return {}
    body = parse_json(raw, max_depth if max_depth is not None else max_depth_of(request), request)
    if not isinstance(body, dict):
        raise ApiError("invalid_argument", "the JSON body must be an object")
    return body


async def read_raw(request: web.Request, limit: int) -> bytes:
    """The body's bytes, at most ``limit`` (413 past it).

    A body that ends before its Content-Length (the client lied or went away)
    is the client's doing: counted and logged quietly, answered 400 (if
    anyone is still there to read it), never logged as a bug.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = await request.content.readany()
        except CLIENT_CAUSED as e:
            _client_error(request, "body_incomplete", "http: %s %s: body cut short: %s",
                          request.method, request.rel_url.path, type(e).__name__)
            raise ApiError("invalid_argument", "the request body was cut short or badly framed") from None
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ApiError("too_large", f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes, max_depth: int | None, request: web.Request | None = None) -> Any:
    """JSON text -> value, or ``ApiError(invalid_argument)``: bad JSON, NaN/Infinity,
    or nesting deeper than ``max_depth`` (the top level is 1)."""
    try:
        value = json.loads(raw, parse_constant=reject_constant, parse_float=finite_float)
    except RecursionError:  # deeper than Python's own limit (~1000): deeper than any max_depth
        value = None
        too_deep = True
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError("invalid_argument", f"invalid JSON body: {e}") from None
    else:
        too_deep = max_depth is not None and deeper_than(value, max_depth)
    if too_deep:
        limit = max_depth if max_depth is not None else sys.getrecursionlimit()
        if request is not None:
            _client_error(request, "too_deep", "http: %s %s: body nests deeper than %d",
                          request.method, request.rel_url.path, limit)
        raise ApiError("invalid_argument", depth_message(limit), {"max_depth": limit})
    return value


DEFAULT_MAX_DEPTH = 64
"""``limits.max_depth`` when no node is at hand (the config key's default)."""


def max_depth_of(request: web.Request) -> int:
    """``limits.max_depth`` of the node serving ``request``."""
    node = request.app.get(NODE_KEY)
    cfg = getattr(node, "cfg", None)
    return int(getattr(getattr(cfg, "limits", None), "max_depth", DEFAULT_MAX_DEPTH))


def _client_error(request: web.Request, kind: str, msg: str, *args: Any) -> None:
    node = request.app.get(NODE_KEY)
    client_error(getattr(node, "metrics", None), "http", kind, msg, *args)


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def ui_response(ui_dir: str, segments: list[str], node_id: str) -> web.StreamResponse:
    """The static UI bundle with an SPA fallback; ``/`` redirects to it.

    The file is resolved inside ``ui_dir`` and must stay there: ``..`` or a
    symlink out of the bundle falls back to ``index.html``, never escapes.
    """
    if segments in ([""], []):
        raise web.HTTPFound("/_/tasks/")
    root = Path(ui_dir).resolve()
    rel = "/".join(x for x in segments[2:] if x)
    target = (root / rel).resolve() if rel else root / "index.html"
    if not (target.is_relative_to(root) and target.is_file()):
        target = root / "index.html"
    if not target.is_file():
        return json_response(404, {"code": "not_found", "message": "no UI bundle"}, node_id)
    return web.FileResponse(target, headers={"X-Tasks-Node": node_id})


def finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def split_path(raw_path: str) -> list[str]:
    """Raw path -> percent-decoded segments (empty segments kept; they match nothing)."""
    parts = raw_path.split("/")[1:]
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]
    out = []
    for p in parts:
        try:
            out.append(unquote(p, errors="strict"))
        except UnicodeDecodeError:
            raise ApiError("invalid_argument", "path is not valid UTF-8") from None
    return out


def node_of(c: Call) -> Any:
    """The node serving this request (the HTTP app holds it under ``NODE_KEY``)."""
    return c.request.app[NODE_KEY]


