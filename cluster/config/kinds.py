"""Value kinds of the config keys: each turns a raw value (a flag's or an
environment variable's string, or a native YAML value) into the typed value, or
raises ValueError with a reason shown after the key's name; plus ``host:port``
parsing (IPv6 hosts in brackets) and the peer list."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hanzo_tasks.protocol import hostport
from hanzo_tasks.protocol.durations import parse_duration

ENV_PREFIX = "TASKSD_"
CONFIG_ENV = "TASKSD_CONFIG"

NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SIZE_RE = re.compile(r"(\d+)\s*(b|kib|mib|gib|tib)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


class ConfigError(Exception):
    """A configuration that cannot be used. ``str(err)`` names the offending
    key, flag or value; ``key`` holds the dotted key when there is one."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# --------------------------------------------------------------------------- kinds
# A kind turns a raw value (a string from a flag or the environment, or a native
# YAML value) into the typed value, or raises ValueError with a reason that is
# shown after the key name.


class Kind:
    """Base of the value kinds; ``describe`` feeds --help, ``metavar`` the usage."""

    metavar = "VALUE"

    def convert(self, value: Any, typed: bool = False) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        return ""


class Str(Kind):
    def __init__(
        self,
        *,
        optional: bool = False,
        pattern: re.Pattern[str] | None = None,
        what: str = "",
        check: Callable[[str], str | None] | None = None,
        metavar: str = "TEXT",
    ) -> None:
        self.optional = optional
        self.pattern = pattern
        self.what = what
        self.check = check
        self.metavar = metavar

    def convert(self, value: Any, typed: bool = False) -> Any:
        if value is None:
            if self.optional:
                return None
            raise ValueError("a value is required")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        text = str(value).strip()
        if not text:
            if self.optional:
                return None
            raise ValueError("must not be empty")
        if self.pattern is not None and not self.pattern.fullmatch(text):
            raise ValueError(f"not a valid {self.what or 'value'}")
        if self.check is not None:
            problem = self.check(text)
            if problem:
                raise ValueError(problem)
        return text

    def describe(self) -> str:
        return self.what


class Bool(Kind):
    metavar = "BOOL"

    def convert(self, value: Any, typed: bool = False) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            text = value.strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
        raise ValueError("expected a boolean: 1/true/yes/on or 0/false/no/off")

    def describe(self) -> str:
        return "boolean"


class Int(Kind):
    metavar = "N"

    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def convert(self, value: Any, typed: bool = False) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected an integer, got a boolean")
        if isinstance(value, int):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            number = int(value)
        else:
            raise ValueError("expected an integer")
        if self.minimum is not None and number < self.minimum:
            raise ValueError(f"must be >= {self.minimum}")
        if self.maximum is not None and number > self.maximum:
            raise ValueError(f"must be <= {self.maximum}")
        return number

    def describe(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"integer {self.minimum}..{self.maximum}"
        if self.minimum is not None:
            return f"integer >= {self.minimum}"
        return "integer"


class Float(Kind):
    metavar = "N"

    def __init__(self, minimum: float = 0.0) -> None:
        self.minimum = minimum

    def convert(self, value: Any, typed: bool = False) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        if number < self.minimum:
            raise ValueError(f"must be >= {self.minimum:g}")
        return number

    def describe(self) -> str:
        return f"number >= {self.minimum:g}"


class Duration(Kind):
    """Go-style duration (SPEC §0), held in milliseconds.

    Plain numbers are refused (except 0) so that ``500`` cannot silently mean
    500 ms to one reader and 500 s to another; ``typed=True`` (used by
    :meth:`Config.replace`) accepts an int as milliseconds.
    """

    metavar = "DURATION"

    def __init__(self, minimum_ms: int = 1) -> None:
        self.minimum_ms = minimum_ms

    def convert(self, value: Any, typed: bool = False) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 500ms, 5s, 1h30m")
        if isinstance(value, int):
            if not typed and value != 0:
                raise ValueError(
                    f"a duration needs a unit: write e.g. '{value}ms' or '{value}s'"
                )
            ms = value
        elif isinstance(value, str):
            try:
                ms = parse_duration(value.strip())
            except ValueError as exc:
                raise ValueError(
                    f"expected a duration such as 500ms, 5s, 1h30m ({exc})"
                ) from None
        else:
            raise ValueError("expected a duration such as 500ms, 5s, 1h30m")
        if ms < self.minimum_ms:
            raise ValueError("must be positive" if self.minimum_ms == 1 else "must not be negative")
        return ms

    def describe(self) -> str:
        return "duration"


class Size(Kind):
    """Bytes, or an integer with a binary unit: ``4MiB``, ``1 GiB``, ``512KiB``."""

    metavar = "SIZE"

    def __init__(self, minimum: int = 0) -> None:
        self.minimum = minimum

    def convert(self, value: Any, typed: bool = False) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a size")
        if isinstance(value, int):
            number = value
        elif isinstance(value, str) and (m := _SIZE_RE.fullmatch(value.strip())):
            number = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
        else:
            raise ValueError("expected a size: bytes, or an integer with KiB, MiB or GiB")
        if number < self.minimum:
            raise ValueError(f"must be at least {self.minimum} bytes")
        return number

    def describe(self) -> str:
        return "size"


class Choice(Kind):
    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.metavar = "{" + ",".join(choices) + "}"

    def convert(self, value: Any, typed: bool = False) -> Any:
        if isinstance(value, str) and value.strip().lower() in self.choices:
            return value.strip().lower()
        raise ValueError(f"expected one of {', '.join(self.choices)}")

    def describe(self) -> str:
        return "|".join(self.choices)


def split_host_port(addr: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port``; the host comes back without brackets.

    The grammar is the one of :mod:`hanzo_tasks.protocol.hostport`; this adds the
    hints a person editing a config file needs. Raises ValueError for anything
    else, including an empty host or a bare IPv6 address (``::1:80`` is ambiguous).
    """
    text = addr.strip()
    try:
        return hostport.split_host_port(text)
    except ValueError:
        if not text.startswith("[") and text.count(":") > 1:
            raise ValueError("an IPv6 host must be written in brackets: [::1]:7243") from None
        if text.startswith(":"):
            raise ValueError("empty host (write 0.0.0.0:PORT for all interfaces)") from None
        raise


join_host_port = hostport.join_host_port


class Addr(Kind):
    """A ``host:port`` address, kept as a normalised string."""

    metavar = "HOST:PORT"

    def __init__(self, *, derived: bool = False) -> None:
        # derived: "" means "compute from the listen address" (advertise_*).
        self.derived = derived

    def convert(self, value: Any, typed: bool = False) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            if self.derived:
                return ""
            raise ValueError("expected host:port")
        if not isinstance(value, str):
            raise ValueError("expected host:port")
        host, port = split_host_port(value)
        return join_host_port(host, port)

    def describe(self) -> str:
        return "host:port"


@dataclass(frozen=True)
class Peer:
    """A static cluster member: its node id and peer address, and optionally the
    HTTP and ZAP addresses it serves clients on."""

    id: str
    peer: str
    http: str | None = None
    zap: str | None = None


class Peers(Kind):
    """``peers``: CSV ``id=host:port`` (env, flags), or in YAML a list of
    ``{id, peer, http?, zap?}`` maps, a list of ``id=host:port`` strings, or a
    mapping ``id: host:port`` / ``id: {peer, http?, zap?}``."""

    metavar = "ID=HOST:PORT,..."
    _FIELDS = ("id", "peer", "http", "zap")

    def convert(self, value: Any, typed: bool = False) -> Any:
        items: list[Any]
        if value is None:
            items = []
        elif isinstance(value, str):
            items = [part for part in (p.strip() for p in value.split(",")) if part]
        elif isinstance(value, Mapping):
            items = []
            for pid, spec in value.items():
                if isinstance(spec, Mapping):
                    items.append({"id": pid, **spec})
                else:
                    items.append({"id": pid, "peer": spec})
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise ValueError("expected a list of peers")
        peers: list[Peer] = []
        seen: set[str] = set()
        for index, item in enumerate(items):
            peer = self._one(item, index)
            if peer.id in seen:
                raise ValueError(f"peer id {peer.id!r} is listed twice")
            seen.add(peer.id)
            peers.append(peer)
        return tuple(peers)

    def _one(self, item: Any, index: int) -> Peer:
        where = f"peers[{index}]"
        if isinstance(item, Peer):
            fields: dict[str, Any] = dataclasses.asdict(item)
        elif isinstance(item, str):
            text_id, sep, addr = item.partition("=")
            if not sep:
                raise ValueError(f"{where}: expected id=host:port, got {item!r}")
            fields = {"id": text_id, "peer": addr}
        elif isinstance(item, Mapping):
            fields = dict(item)
            for name in fields:
                if name not in self._FIELDS:
                    raise ValueError(f"{where}: unknown field {name!r} (expected id, peer, http, zap)")
        else:
            raise ValueError(f"{where}: expected a map {{id, peer, http?, zap?}} or id=host:port")
        raw_id = fields.get("id")
        pid = str(raw_id).strip() if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else None
        if not pid or not NODE_ID_RE.fullmatch(pid):
            raise ValueError(f"{where}: invalid node id {fields.get('id')!r}")
        addrs: dict[str, str | None] = {}
        for name in ("peer", "http", "zap"):
            raw = fields.get(name)
            if raw is None or raw == "":
                if name == "peer":
                    raise ValueError(f"{where}: 'peer' address is required")
                addrs[name] = None
                continue
            if not isinstance(raw, str):
                raise ValueError(f"{where}.{name}: expected host:port")
            try:
                addrs[name] = join_host_port(*split_host_port(raw))
            except ValueError as exc:
                raise ValueError(f"{where}.{name}: {raw!r}: {exc}") from None
        return Peer(id=pid, peer=addrs["peer"] or "", http=addrs["http"], zap=addrs["zap"])

    def describe(self) -> str:
        return "list of peers"


def check_url(text: str) -> str | None:
    if not re.match(r"https?://[^/\s]+", text):
        return "expected an http:// or https:// URL"
    return None


def check_namespace(text: str) -> str | None:
    if not _NAMESPACE_RE.fullmatch(text) or text in (".", ".."):
        return "not a valid namespace name ([A-Za-z0-9_.-]{1,64}, not . or ..)"
    return None
