"""The HTTP transport: one JSON request per call, and every failure (an error
answer, a proxy's page, an unreachable server) classified as an ApiError code."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from hanzo_tasks.ctl.errors import ApiError

DEFAULT_URL = "http://127.0.0.1:7243"
HTTP_TIMEOUT = 10.0  # seconds, per request (SPEC §2.4 uses the same)

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
# Codes worth retrying: the server (or the way to it) may answer in a moment.
TRANSIENT = frozenset({"unavailable", "timeout", "rate_limited"})


class Api:
    """A minimal JSON-over-HTTP client for one server URL."""

    def __init__(
        self, url: str, token: str | None, timeout: float = HTTP_TIMEOUT,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.tls = tls  # verifies an https:// server (None: the system's CA store)

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        accept: Iterable[int] = (),
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        """Send one request; return ``(status, parsed JSON body)``.

        Non-2xx answers raise ApiError, except the statuses listed in ``accept``
        (used by ``cluster health``, whose 503 body is a report, not an error).
        ``timeout`` replaces the client's for this request (long polls).
        """
        timeout = self.timeout if timeout is None else timeout
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
            with urllib.request.urlopen(request, timeout=timeout, context=self.tls) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read() if exc.fp is not None else b""
            if status not in set(accept):
                raise error_from_response(status, raw, exc.reason) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise ApiError("timeout", f"no answer from {self.url} within {timeout:g}s") from None
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise ApiError("unavailable", f"TLS: the certificate of {self.url} is not trusted "
                               f"({reason.verify_message}); pass --ca-file (or TASKS_CA_FILE) with "
                               "the CA bundle that signed it") from None
            if isinstance(reason, ssl.SSLError):
                raise ApiError("unavailable", f"TLS with {self.url} failed: {reason.reason or reason}"
                               " (a server that requires a client certificate: --cert-file/--key-file)"
                               ) from None
            raise ApiError("unavailable", f"cannot reach {self.url}: {_reason(reason)}") from None
        except TimeoutError:
            raise ApiError("timeout", f"no answer from {self.url} within {timeout:g}s") from None
        except (OSError, ValueError) as exc:  # reset connections, malformed URLs, ...
            hint = ""
            if isinstance(exc, ConnectionResetError) and self.url.startswith("https://"):
                hint = (" (a server that requires a client certificate closes the connection of "
                        "a client without one: --cert-file/--key-file)")
            raise ApiError("unavailable", f"cannot reach {self.url}: {_reason(exc)}{hint}") from None
        return status, _parse_body(raw, status)


def tls_context(ca_file: str | None = None, cert_file: str | None = None,
                key_file: str | None = None) -> ssl.SSLContext:
    """The context that verifies an https:// server against ``ca_file`` (None:
    the system's CA store) and presents ``cert_file``; ValueError naming the
    file that cannot be loaded."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("--cert-file and --key-file are given together")
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--ca-file {ca_file}: cannot load it: {_reason(exc)}") from None
    if cert_file:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--cert-file {cert_file}: cannot load it with its key: {_reason(exc)}") from None
    return ctx


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


def error_from_response(status: int, raw: bytes, reason: str) -> ApiError:
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


def seg(value: str) -> str:
    """Percent-encode one path segment (ids may contain spaces, '?', '#', ...)."""
    return urllib.parse.quote(value, safe="")


def ns_path(ns: str) -> str:
    return f"/v1/tasks/namespaces/{seg(ns)}"
