"""Validation of names and ids (SPEC §1).

Names are checked before they touch a path, an LMDB key or a log line, on
every transport alike. Each check returns the value or raises ApiError(400).
"""

from __future__ import annotations

import re

from hanzo_tasks.protocol.errors import ApiError

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_ATTR = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_EMAIL = re.compile(r"[^@\s/]+@[^@\s/]+")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

DEV_ORG = "_"

#: The roles of SPEC §5.13, in increasing power.
VIEWER, DEVELOPER, ADMIN, OWNER = "viewer", "developer", "admin", "owner"
ROLES: tuple[str, ...] = (VIEWER, DEVELOPER, ADMIN, OWNER)


def _bad(what: str, value: object) -> ApiError:
    shown = value if isinstance(value, str) and len(value) <= 80 else "…"
    return ApiError("invalid_argument", f"invalid {what}: {shown!r}")


def is_namespace(value: object) -> bool:
    return isinstance(value, str) and bool(_NAME.fullmatch(value)) and value not in (".", "..")


def check_namespace(value: object) -> str:
    if not is_namespace(value):
        raise _bad("namespace", value)
    return value  # type: ignore[return-value]


def check_org(value: object) -> str:
    """An org from a token claim; "" is the dev org (auth off)."""
    if value == "":
        return ""
    if not is_namespace(value) or value == "_":
        raise ApiError("unauthenticated", "invalid org claim")
    return value  # type: ignore[return-value]


def storage_org(org: str) -> str:
    """The org as stored: the dev org "" becomes "_"."""
    return org or DEV_ORG


def is_id(value: object, max_bytes: int = 255) -> bool:
    if not isinstance(value, str) or value in (".", ".."):
        return False
    n = len(value.encode("utf-8", "surrogatepass"))
    if n < 1 or n > max_bytes:
        return False
    return "/" not in value and not _CONTROL.search(value)


def check_id(value: object, what: str = "id", max_bytes: int = 255) -> str:
    if not is_id(value, max_bytes):
        raise _bad(what, value)
    return value  # type: ignore[return-value]


def check_node_id(value: object) -> str:
    if not isinstance(value, str) or not _NODE_ID.fullmatch(value):
        raise _bad("node id", value)
    return value


def check_request_id(value: object) -> str:
    if not isinstance(value, str) or not _REQUEST_ID.fullmatch(value):
        raise _bad("requestId", value)
    return value


def check_run_id(value: object) -> str:
    if not isinstance(value, str) or not _RUN_ID.fullmatch(value):
        raise _bad("runId", value)
    return value


def check_attr_name(value: object) -> str:
    if not isinstance(value, str) or not _ATTR.fullmatch(value):
        raise _bad("search attribute name", value)
    return value


def check_email(value: object) -> str:
    if not isinstance(value, str) or len(value.encode()) > 254 or not _EMAIL.fullmatch(value):
        raise _bad("email", value)
    return value.lower()
