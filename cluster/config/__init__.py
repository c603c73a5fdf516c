"""Node configuration for ``tasksd`` (SPEC §10.1).

One typed, frozen tree (:class:`Config`) built from four layers, highest first:

    flag  >  environment  >  YAML file (--config PATH or TASKSD_CONFIG)  >  default

Every key is declared exactly once, as a dataclass field carrying its kind, its
default (written the way a user would write it: ``"500ms"``, ``"4MiB"``) and its
help text. The flag parser, the environment lookup, the YAML validation, the
``--help`` output and the dataclass defaults are all derived from that one
declaration, so they cannot drift apart.

Units inside the tree: durations are ``int`` milliseconds, sizes are ``int``
bytes, addresses are ``"host:port"`` strings (IPv6 hosts in brackets), optional
values are ``None`` when unset.

Every bad input raises :class:`ConfigError` with a message that names the key
and where the value came from (flag, env variable or file); the CLI turns it
into exit code 2. Secret files are only checked for being configured here; the
code that uses them reads and checks their contents.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import socket
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hanzo_tasks.protocol.durations import parse_duration

__all__ = [
    "AuthConfig",
    "Config",
    "ConfigError",
    "LimitsConfig",
    "MetricsConfig",
    "MigrationConfig",
    "Peer",
    "RaftConfig",
    "RetentionConfig",
    "SettingsConfig",
    "SseConfig",
    "StorageConfig",
    "TimeoutsConfig",
    "build_arg_parser",
    "config_from_mapping",
    "env_name",
    "flag_name",
    "join_host_port",
    "keys",
    "load_config",
    "split_host_port",
]

ENV_PREFIX = "TASKSD_"
CONFIG_ENV = "TASKSD_CONFIG"

_NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SIZE_RE = re.compile(r"(\d+)\s*(b|kib|mib|gib|tib)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


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


class _Kind:
    """Base of the value kinds; ``describe`` feeds --help, ``metavar`` the usage."""

    metavar = "VALUE"

    def convert(self, value: Any, typed: bool = False) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        return ""


class _Str(_Kind):
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


class _Bool(_Kind):
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


class _Int(_Kind):
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


class _Float(_Kind):
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


class _Duration(_Kind):
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


class _Size(_Kind):
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


class _Choice(_Kind):
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

    Raises ValueError for anything else, including an empty host or a bare IPv6
    address (``::1:80`` is ambiguous, so brackets are required).
    """
    text = addr.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError("expected [ipv6]:port")
        host, port_text = text[1:close], text[close + 2 :]
        if not host:
            raise ValueError("empty host")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("expected host:port")
        if ":" in host:
            raise ValueError("an IPv6 host must be written in brackets: [::1]:7243")
    if not host:
        raise ValueError("empty host (write 0.0.0.0:PORT for all interfaces)")
    if any(c.isspace() for c in host):
        raise ValueError("the host contains whitespace")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0-65535, got {port_text!r}")
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    """The inverse of :func:`split_host_port` (brackets IPv6 hosts)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Addr(_Kind):
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


class _Peers(_Kind):
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
            pid, sep, addr = item.partition("=")
            if not sep:
                raise ValueError(f"{where}: expected id=host:port, got {item!r}")
            fields = {"id": pid, "peer": addr}
        elif isinstance(item, Mapping):
            fields = dict(item)
            for name in fields:
                if name not in self._FIELDS:
                    raise ValueError(f"{where}: unknown field {name!r} (expected id, peer, http, zap)")
        else:
            raise ValueError(f"{where}: expected a map {{id, peer, http?, zap?}} or id=host:port")
        pid = fields.get("id")
        pid = str(pid).strip() if isinstance(pid, str | int) and not isinstance(pid, bool) else None
        if not pid or not _NODE_ID_RE.fullmatch(pid):
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


def _check_url(text: str) -> str | None:
    if not re.match(r"https?://[^/\s]+", text):
        return "expected an http:// or https:// URL"
    return None


def _check_namespace(text: str) -> str | None:
    if not _NAMESPACE_RE.fullmatch(text) or text in (".", ".."):
        return "not a valid namespace name ([A-Za-z0-9_.-]{1,64}, not . or ..)"
    return None


# ------------------------------------------------------------------ declarations


def _key(kind: _Kind, default: Any, help: str, *, shown: str | None = None) -> Any:
    """Declare one config key as a dataclass field.

    ``default`` is written as a user would write it and converted here, so the
    dataclass default and the documented default are the same value by
    construction. ``shown`` overrides the default's text in --help.
    """
    meta = {"kind": kind, "help": help, "shown": shown if shown is not None else default}
    return field(default=kind.convert(default), metadata=meta)


def _group(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"group": cls, "help": help})


_DUR = _Duration()
_DUR0 = _Duration(minimum_ms=0)
_OPT_STR = _Str(optional=True)
_OPT_PATH = _Str(optional=True, what="path", metavar="PATH")


@dataclass(frozen=True)
class RaftConfig:
    """Raft timing (``raft.*``); all durations in ms."""

    election_timeout: int = _key(_DUR, "500ms", "Election timeout t; elections are randomised in [t, 2t]")
    heartbeat_interval: int = _key(_DUR, "100ms", "Leader heartbeat interval (must be below election_timeout)")
    idle_after: int = _key(_DUR, "30s", "A group with no writes for this long switches to slow heartbeats")
    idle_heartbeat_interval: int = _key(_DUR, "3s", "Heartbeat interval of idle groups")
    propose_timeout: int = _key(_DUR, "5s", "A proposal not committed within this answers 503 (outcome unknown)")
    snapshot_every: int = _key(_Int(minimum=1), 10000, "Log entries between compaction snapshots")


@dataclass(frozen=True)
class AuthConfig:
    """Token checking (``auth.*``, SPEC §9)."""

    require_identity: bool = _key(_Bool(), False, "Require a valid token on every API call (needs a key source)")
    hs256_secret_file: str | None = _key(_OPT_PATH, None, "File holding the HS256 secret (>= 32 bytes)")
    jwks_file: str | None = _key(_OPT_PATH, None, "File holding a JWKS (RS/PS/ES keys)")
    jwks_url: str | None = _key(_Str(optional=True, what="URL", check=_check_url, metavar="URL"), None, "URL of a JWKS, fetched lazily and cached")
    jwks_ttl: int = _key(_DUR, "5m", "How long a fetched JWKS is cached")
    jwks_max_stale: int = _key(_DUR, "1h", "How long old keys are used while JWKS refreshes fail")
    leeway: int = _key(_DUR0, "60s", "Clock leeway for exp/nbf/iat")
    issuer: str | None = _key(_OPT_STR, None, "Required 'iss' claim, when set")
    audience: str | None = _key(_OPT_STR, None, "Required 'aud' claim, when set")
    org_claim: str = _key(_Str(), "owner", "Claim that carries the org")
    role_claim: str = _key(_Str(), "tasks_role", "Claim that carries the org role")
    default_role: str = _key(_Choice("viewer", "developer", "admin", "owner"), "owner", "Org role when the token has no role claim")


@dataclass(frozen=True)
class LimitsConfig:
    """Request and payload limits (``limits.*``); sizes in bytes."""

    max_body: int = _key(_Size(minimum=1), "4MiB", "Largest HTTP request body")
    max_frame: int = _key(_Size(minimum=1), "16MiB", "Largest ZAP frame")
    max_payload: int = _key(_Size(minimum=1), "2MiB", "Largest encoded payload (input, result, ...)")
    rate_per_org: float = _key(_Float(0.0), 0, "Requests/s per org per node (0 = off)", shown="0 (off)")
    max_history_events: int = _key(_Int(minimum=1), 50000, "Events per run before it is terminated")
    max_batch_size: int = _key(_Int(minimum=1), 100000, "Most targets of one batch operation")
    max_zap_connections: int = _key(_Int(minimum=1), 10000, "ZAP connections beyond this are closed at accept")


@dataclass(frozen=True)
class TimeoutsConfig:
    """Engine timeouts (``timeouts.*``), in ms."""

    cancel_ack: int = _key(_DUR, "60s", "Wait for a worker to acknowledge a cancel before forcing CANCELED")
    push_ack: int = _key(_DUR, "10s", "Wait for a worker to acknowledge a pushed task")
    activity_start_to_close: int = _key(_DUR, "10m", "Default activity start-to-close timeout")
    query_default: int = _key(_DUR, "5s", "Query timeout when the request gives none")
    query_max: int = _key(_DUR, "30s", "Longest query timeout a request may ask for")


@dataclass(frozen=True)
class RetentionConfig:
    """Retention sweeping (``retention.*``)."""

    sweep_interval: int = _key(_DUR, "1h", "How often the shard leader sweeps expired runs")


@dataclass(frozen=True)
class MigrationConfig:
    """Namespace migration (``migration.*``)."""

    max_fence: int = _key(_DUR, "5s", "Longest write pause of a cutover; overrunning aborts the job")
    fence_wait: int = _key(_DUR, "5s", "How long a write waits on a fence before 503")
    bandwidth: int = _key(_Size(minimum=1024), "64MiB", "Snapshot copy rate limit per job, bytes per second")


@dataclass(frozen=True)
class SseConfig:
    """Server-Sent Events (``sse.*``)."""

    buffer_events: int = _key(_Int(minimum=1), 10000, "Events kept for Last-Event-ID resume")
    keepalive: int = _key(_DUR, "15s", "Interval of keep-alive comments")


@dataclass(frozen=True)
class StorageConfig:
    """LMDB sizing (``storage.*``); bytes."""

    map_size: int = _key(_Size(minimum=1), "64MiB", "Initial LMDB map size per partition (doubles as needed)")
    map_size_max: int = _key(_Size(minimum=1), "32GiB", "Largest LMDB map size per partition")
    reserve_disk: int = _key(_Size(), "1GiB", "Writes are refused (507) when free disk falls below this")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics (``metrics.*``)."""

    max_task_queue_series: int = _key(_Int(minimum=0), 100, "Distinct namespace/task_queue label pairs before '_other'")


@dataclass(frozen=True)
class SettingsConfig:
    """Feature flags reported by GET /v1/tasks/settings (``settings.*``)."""

    namespace_write_disabled: bool = _key(_Bool(), False, "Refuse namespace create/metadata/delete (403)")
    advanced_visibility_enabled: bool = _key(_Bool(), True, "Reported as advancedVisibilityEnabled")
    worker_heartbeats_enabled: bool = _key(_Bool(), True, "Reported as workerHeartbeatsEnabled")
    codec_endpoints_enabled: bool = _key(_Bool(), False, "Reported as codecEndpointsEnabled")
    multi_cluster_enabled: bool = _key(_Bool(), False, "Reported as multiClusterEnabled")


def _hostname() -> str:
    """The machine's hostname (a function so tests can replace it)."""
    return socket.gethostname() or "localhost"


def default_node_id() -> str:
    """The short hostname, sanitised to the node-id pattern (SPEC §1)."""
    short = _hostname().split(".", 1)[0]
    clean = re.sub(r"[^A-Za-z0-9_.-]", "-", short).lstrip("_.-")[:64]
    return clean or "node"


@dataclass(frozen=True)
class Config:
    """The whole configuration of one node. Immutable; build it with
    :func:`load_config` (CLI), :func:`config_from_mapping` (embedded) or
    ``Config()`` for all defaults. ``sources`` maps each key that was set
    explicitly to where it came from (for logs and error messages)."""

    node_id: str = field(
        default_factory=default_node_id,
        metadata={
            "kind": _Str(pattern=_NODE_ID_RE, what="node id ([A-Za-z0-9][A-Za-z0-9_.-]{0,63})", metavar="ID"),
            "help": "Node id, unique in the cluster",
            "shown": "short hostname",
        },
    )
    data_dir: str = _key(_Str(what="path", metavar="PATH"), "./tasks-data", "Partitions (LMDB), Raft journals, node.secret")
    http: str = _key(_Addr(), "127.0.0.1:7243", "HTTP listen address")
    zap: str = _key(_Addr(), "127.0.0.1:9999", "ZAP listen address")
    peer: str = _key(_Addr(), "127.0.0.1:7300", "Peer (node-to-node) listen address")
    advertise_http: str = _key(_Addr(derived=True), "", "HTTP address published to peers and clients", shown="http, wildcard host -> hostname")
    advertise_zap: str = _key(_Addr(derived=True), "", "ZAP address published to peers and clients", shown="zap, wildcard host -> hostname")
    advertise_peer: str = _key(_Addr(derived=True), "", "Peer address published to other nodes", shown="peer, wildcard host -> hostname")
    peers: tuple[Peer, ...] = _key(_Peers(), None, "Static members: CSV id=host:port (peer addresses); YAML list of {id, peer, http?, zap?}", shown="none")
    replicator: str = _key(_Choice("local", "raft"), "local", "local (single node) or raft")
    replication_factor: int = _key(_Int(minimum=1), 3, "Replicas per partition (fewer when the cluster is smaller)")
    partitions: int = _key(_Int(minimum=1, maximum=4096), 16, "Raft groups hosting the shards; fixed at bootstrap (local mode uses 1)")
    seed: str = _key(_Str(), "tasks", "HRW routing seed")
    default_namespace: str = _key(_Str(what="namespace", check=_check_namespace, metavar="NS"), "default", "Namespace that exists implicitly in every org")
    region: str = _key(_Str(), "embedded", "Reported as namespaceInfo.region")
    cluster_secret_file: str | None = _key(_OPT_PATH, None, "File with the cluster secret (>= 32 bytes); required for raft")
    durability: str = _key(_Choice("sync", "nosync"), "sync", "sync: fsync before acknowledging; nosync: leave flushing to the OS")
    ui_dir: str | None = _key(_OPT_PATH, None, "Static UI bundle served under /_/tasks/")
    log_level: str = _key(_Choice("debug", "info", "warning", "error"), "info", "Log level")
    log_format: str = _key(_Choice("text", "json"), "text", "Log format")

    raft: RaftConfig = _group(RaftConfig, "Raft timing")
    auth: AuthConfig = _group(AuthConfig, "Authentication of API callers")
    limits: LimitsConfig = _group(LimitsConfig, "Limits")
    timeouts: TimeoutsConfig = _group(TimeoutsConfig, "Engine timeouts")
    retention: RetentionConfig = _group(RetentionConfig, "Retention")
    migration: MigrationConfig = _group(MigrationConfig, "Migration")
    sse: SseConfig = _group(SseConfig, "Server-Sent Events")
    storage: StorageConfig = _group(StorageConfig, "Storage (LMDB)")
    metrics: MetricsConfig = _group(MetricsConfig, "Metrics")
    settings: SettingsConfig = _group(SettingsConfig, "Settings (feature flags)")

    sources: Mapping[str, str] = field(
        default_factory=lambda: types.MappingProxyType({}), compare=False, hash=False, repr=False
    )

    def __post_init__(self) -> None:
        # advertise_* left empty follow their listen address (wildcard -> hostname).
        for name in ("http", "zap", "peer"):
            if not getattr(self, f"advertise_{name}"):
                object.__setattr__(self, f"advertise_{name}", _advertise(getattr(self, name)))

    def get(self, key: str) -> Any:
        """The value of a dotted key, e.g. ``cfg.get("raft.election_timeout")``."""
        if key not in _KEYS:
            raise KeyError(f"unknown config key {key!r}")
        value: Any = self
        for part in key.split("."):
            value = getattr(value, part)
        return value

    def replace(self, **overrides: Any) -> Config:
        """A copy with some keys changed, validated like the other sources.

        Keys are dotted (pass them with ``**{"raft.election_timeout": "1s"}``) or
        use ``__`` for the dot (``raft__election_timeout=1000``). Values may be
        already typed (ints as ms for durations, bytes for sizes) or strings.
        advertise_* that were not set explicitly follow a changed listen address.
        """
        layer: dict[str, tuple[Any, str]] = {
            key: (self.get(key), source) for key, source in self.sources.items()
        }
        for raw_key, value in overrides.items():
            key = raw_key.replace("__", ".")
            if key not in _KEYS:
                raise ConfigError(f"unknown config key {key!r}{_suggest(key)}", key)
            layer[key] = (value, "replace()")
        return _build([layer], typed=True)

    def as_dict(self) -> dict[str, Any]:
        """Every key as ``{dotted key: typed value}`` (e.g. for a debug dump)."""
        return {key: self.get(key) for key in _KEYS}


def _advertise(listen: str) -> str:
    host, port = split_host_port(listen)
    if host in _WILDCARD_HOSTS:
        host = _hostname()
    return join_host_port(host, port)


# --------------------------------------------------------------- key registry


@dataclass(frozen=True)
class _KeyDef:
    key: str
    kind: _Kind
    help: str
    shown: Any

    @property
    def env(self) -> str:
        return env_name(self.key)

    @property
    def flag(self) -> str:
        return flag_name(self.key)


def env_name(key: str) -> str:
    """``auth.jwks_url`` -> ``TASKSD_AUTH_JWKS_URL``."""
    return ENV_PREFIX + key.upper().replace(".", "_")


def flag_name(key: str) -> str:
    """``auth.jwks_url`` -> ``--auth-jwks-url``."""
    return "--" + key.replace(".", "-").replace("_", "-")


def _collect() -> tuple[dict[str, _KeyDef], dict[str, type]]:
    keys: dict[str, _KeyDef] = {}
    groups: dict[str, type] = {}
    for f in dataclasses.fields(Config):
        if "group" in f.metadata:
            groups[f.name] = f.metadata["group"]
            for sub in dataclasses.fields(f.metadata["group"]):
                key = f"{f.name}.{sub.name}"
                keys[key] = _KeyDef(key, sub.metadata["kind"], sub.metadata["help"], sub.metadata["shown"])
        elif "kind" in f.metadata:
            keys[f.name] = _KeyDef(f.name, f.metadata["kind"], f.metadata["help"], f.metadata["shown"])
    return keys, groups


_KEYS, _GROUPS = _collect()


def keys() -> tuple[str, ...]:
    """Every dotted config key, in declaration order."""
    return tuple(_KEYS)


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(_KEYS) + list(_GROUPS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# Compatibility aliases of the original (SPEC §10.1): read only when the
# canonical variable is unset. Each maps the alias's text to the key's text.


def _all_interfaces(text: str) -> str:
    """TASKS_HTTP_ADDR: ``:7243`` (or ``7243``) means all interfaces."""
    text = text.strip()
    if text.isdigit():
        return f"0.0.0.0:{text}"
    if text.startswith(":"):
        return "0.0.0.0" + text
    return text


def _zap_port(text: str) -> str:
    text = text.strip()
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"expected a port number 0-65535, got {text!r}")
    return f"0.0.0.0:{text}"


def _same(text: str) -> str:
    return text


_ALIASES: dict[str, tuple[str, Callable[[str], str]]] = {
    "http": ("TASKS_HTTP_ADDR", _all_interfaces),
    "zap": ("TASKS_ZAP_PORT", _zap_port),
    "data_dir": ("TASKS_DATA_DIR", _same),
    "default_namespace": ("TASKS_NAMESPACE", _same),
    "auth.require_identity": ("TASKSD_REQUIRE_IDENTITY", _same),
    "auth.jwks_url": ("TASKSD_JWKS_URL", _same),
    "auth.issuer": ("TASKSD_JWT_ISSUER", _same),
    "auth.audience": ("TASKSD_JWT_AUDIENCE", _same),
}
for _k in _KEYS:
    if _k.startswith("settings."):
        # settings.namespace_write_disabled -> TASKSD_NAMESPACE_WRITE_DISABLED,
        # settings.worker_heartbeats_enabled -> TASKSD_WORKER_HEARTBEATS_ENABLED, ...
        _ALIASES[_k] = (ENV_PREFIX + _k.split(".", 1)[1].upper(), _same)


# -------------------------------------------------------------------- layers

# A layer maps dotted keys to (raw value, description of its source).
_Layer = dict[str, tuple[Any, str]]


def _flatten(doc: Any, origin: str) -> _Layer:
    """Validate a YAML document / mapping and flatten it to dotted keys.

    Accepts nested groups (``raft: {election_timeout: 500ms}``) and dotted keys
    (``raft.election_timeout: 500ms``), but not the same key twice.
    """
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError(
            f"{origin}: the top level must be a mapping of keys (e.g. 'http: 127.0.0.1:7243'), "
            f"got {type(doc).__name__}"
        )
    layer: _Layer = {}

    def put(key: str, value: Any) -> None:
        if key not in _KEYS:
            raise ConfigError(f"{origin}: unknown key {key!r}{_suggest(key)}", key)
        if key in layer:
            raise ConfigError(f"{origin}: key {key!r} is given twice", key)
        layer[key] = (value, origin)

    for name, value in doc.items():
        if not isinstance(name, str):
            raise ConfigError(f"{origin}: key {name!r} is not a string")
        if name in _GROUPS:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                example = dataclasses.fields(_GROUPS[name])[0].name
                raise ConfigError(
                    f"{origin}: {name!r} is a group of keys and needs a mapping, "
                    f"e.g. '{name}: {{{example}: ...}}'",
                    name,
                )
            for sub, sub_value in value.items():
                if not isinstance(sub, str):
                    raise ConfigError(f"{origin}: key {name}.{sub!r} is not a string")
                put(f"{name}.{sub}", sub_value)
        else:
            put(name, value)
    return layer


def _read_yaml(path: str, origin: str) -> _Layer:
    import yaml  # imported here: only a node with a config file needs it

    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (from {origin})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} (from {origin}): {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: invalid YAML: {exc}") from None
    return _flatten(doc, f"config file {path}")


def _env_layer(env: Mapping[str, str]) -> _Layer:
    """Canonical TASKSD_* variables, then aliases for keys still unset.

    An empty variable counts as unset, as in the client (SPEC §2.1), so that a
    blank ``TASKSD_X=`` in a compose file does not override the YAML.
    """
    layer: _Layer = {}
    for key, spec in _KEYS.items():
        value = env.get(spec.env)
        if value is not None and value.strip() != "":
            layer[key] = (value, f"env {spec.env}")
            continue
        alias = _ALIASES.get(key)
        if alias is None:
            continue
        name, transform = alias
        value = env.get(name)
        if value is None or value.strip() == "":
            continue
        try:
            layer[key] = (transform(value), f"env {name}")
        except ValueError as exc:
            raise ConfigError(f"invalid value for {key} (env {name}): {value!r}: {exc}", key) from None
    return layer


def _build(layers: Sequence[_Layer], *, typed: bool = False) -> Config:
    """Convert every layer (later layers win), assemble the tree, check it."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        for key, (raw, origin) in layer.items():
            spec = _KEYS[key]
            try:
                values[key] = spec.kind.convert(raw, typed=typed)
            except ValueError as exc:
                shown = raw if not isinstance(raw, str) or len(raw) <= 200 else raw[:200] + "..."
                raise ConfigError(f"invalid value for {key} ({origin}): {shown!r}: {exc}", key) from None
            sources[key] = origin
    top: dict[str, Any] = {}
    grouped: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
    for key, value in values.items():
        group, dot, name = key.partition(".")
        if dot:
            grouped[group][name] = value
        else:
            top[key] = value
    for group, cls in _GROUPS.items():
        top[group] = cls(**grouped[group])
    try:
        cfg = Config(**top, sources=types.MappingProxyType(sources))
    except ValueError as exc:  # advertise derivation from a bad listen address
        raise ConfigError(str(exc)) from None
    _check(cfg)
    return cfg


def _check(cfg: Config) -> None:
    """Checks that involve more than one key (startup errors of SPEC §9/§10)."""
    if cfg.replicator == "raft" and not cfg.cluster_secret_file:
        raise ConfigError(
            "replicator: raft requires cluster_secret_file "
            f"(set --cluster-secret-file or {env_name('cluster_secret_file')}); "
            "peer traffic is authenticated with it",
            "cluster_secret_file",
        )
    auth = cfg.auth
    if auth.require_identity and not (auth.hs256_secret_file or auth.jwks_file or auth.jwks_url):
        raise ConfigError(
            "auth.require_identity is on but no key source is configured: "
            "set auth.hs256_secret_file, auth.jwks_file or auth.jwks_url",
            "auth.require_identity",
        )
    if cfg.raft.heartbeat_interval >= cfg.raft.election_timeout:
        raise ConfigError(
            "raft.heartbeat_interval must be below raft.election_timeout "
            f"({cfg.raft.heartbeat_interval}ms >= {cfg.raft.election_timeout}ms)",
            "raft.heartbeat_interval",
        )
    if cfg.timeouts.query_default > cfg.timeouts.query_max:
        raise ConfigError(
            "timeouts.query_default must not exceed timeouts.query_max", "timeouts.query_default"
        )
    if cfg.storage.map_size > cfg.storage.map_size_max:
        raise ConfigError("storage.map_size must not exceed storage.map_size_max", "storage.map_size")


# ---------------------------------------------------------------- public API


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises ConfigError instead of exiting, so that
    callers (tasksd, embed, tests) decide what a usage error does."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise ConfigError(message)


_EPILOG = """\
Sources, highest first: flag > environment > YAML file (--config or
TASKSD_CONFIG) > default. Each key KEY has the flag --KEY (dots and
underscores as dashes) and the variable TASKSD_KEY (upper case, dots as
underscores); e.g. raft.election_timeout: --raft-election-timeout,
TASKSD_RAFT_ELECTION_TIMEOUT. In YAML, nest groups or use dotted keys:

  raft:
    election_timeout: 500ms
  auth.require_identity: true

Formats: durations 500ms, 5s, 1h30m (no days); sizes bytes or 4MiB, 1GiB;
booleans 1/true/yes/on, 0/false/no/off; lists comma-separated.

Examples:
  tasksd serve --data-dir /var/lib/tasks --http 0.0.0.0:7243
  tasksd serve --config node.yaml --node-id n1 --replicator raft \\
      --cluster-secret-file /etc/tasks/cluster.secret
  TASKSD_LOG_LEVEL=debug tasksd serve --peers n1=10.0.0.1:7300,n2=10.0.0.2:7300
"""


def build_arg_parser(prog: str = "tasksd serve") -> argparse.ArgumentParser:
    """The ``serve`` flag parser: one flag per key, help showing default and env.

    Flags default to "not given" (argparse.SUPPRESS), so that only flags the
    user typed override the lower layers. Boolean flags may be given bare
    (``--auth-require-identity``) or with a value.
    """
    parser = _Parser(
        prog=prog,
        usage="%(prog)s [--config PATH] [--KEY VALUE ...]",
        description="Run a Hanzo Tasks node. Every key below can also be set in the\n"
        "YAML file or the environment (see the end of this help).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        exit_on_error=False,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config", metavar="PATH", help=f"YAML config file (env {CONFIG_ENV})"
    )
    sections: dict[str, argparse._ArgumentGroup] = {"": parser.add_argument_group("node")}
    for name in _GROUPS:
        group_help = next(f.metadata["help"] for f in dataclasses.fields(Config) if f.name == name)
        sections[name] = parser.add_argument_group(f"{name}.*", group_help)
    for key, spec in _KEYS.items():
        section = sections[key.split(".")[0] if "." in key else ""]
        shown = "unset" if spec.shown is None else spec.shown
        if isinstance(shown, bool):
            shown = str(shown).lower()
        text = f"{spec.help}. Default: {shown}. Env {spec.env}"
        alias = _ALIASES.get(key)
        if alias:
            text += f" (or {alias[0]})"
        kwargs: dict[str, Any] = {"dest": key, "metavar": spec.kind.metavar, "help": text.replace("%", "%%")}
        if isinstance(spec.kind, _Bool):
            kwargs.update(nargs="?", const="true")
        section.add_argument(spec.flag, **kwargs)
    return parser


def load_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Config:
    """Build the node's Config from ``serve`` arguments, the environment and the
    YAML file they name. ``env`` defaults to ``os.environ``. Raises ConfigError
    (the caller exits 2); ``--help`` prints and raises SystemExit(0) as usual."""
    environ: Mapping[str, str] = os.environ if env is None else env
    try:
        parsed = vars(build_arg_parser().parse_args(list(argv)))
    except argparse.ArgumentError as exc:  # exit_on_error=False raises these
        raise ConfigError(str(exc)) from None
    layers: list[_Layer] = []
    path = parsed.pop("config", None)
    origin = "--config"
    if path is None:
        path = environ.get(CONFIG_ENV) or None
        origin = f"env {CONFIG_ENV}"
    if path is not None:
        if not path.strip():
            raise ConfigError("--config needs a file path")
        layers.append(_read_yaml(path, origin))
    layers.append(_env_layer(environ))
    layers.append({key: (value, f"flag {_KEYS[key].flag}") for key, value in parsed.items()})
    return _build(layers)


def config_from_mapping(values: Mapping[str, Any]) -> Config:
    """A Config from a mapping, for embedded use (``tasks.embed(config=...)``).

    Keys are dotted names or nested group dicts; values are validated exactly
    like YAML values. The environment is not consulted.
    """
    return _build([_flatten(values, "config mapping")])
