"""The config tree: every key declared once, as a dataclass field carrying its
kind, its default and its help text; the key registry derived from those
declarations (flag and environment names, suggestions), and building a checked
:class:`Config` from layers of raw values."""

from __future__ import annotations

import dataclasses
import difflib
import re
import socket
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hanzo_tasks.cluster.config.kinds import (
    ENV_PREFIX,
    NODE_ID_RE,
    WILDCARD_HOSTS,
    Addr,
    Bool,
    Choice,
    ConfigError,
    Duration,
    Float,
    Int,
    Kind,
    Peer,
    Peers,
    Size,
    Str,
    check_namespace,
    check_url,
    join_host_port,
    split_host_port,
)
from hanzo_tasks.protocol.names import OWNER, ROLES

# ------------------------------------------------------------------ declarations


def _key(kind: Kind, default: Any, help: str, *, shown: str | None = None) -> Any:
    """Declare one config key as a dataclass field.

    ``default`` is written as a user would write it and converted here, so the
    dataclass default and the documented default are the same value by
    construction. ``shown`` overrides the default's text in --help.
    """
    meta = {"kind": kind, "help": help, "shown": shown if shown is not None else default}
    return field(default=kind.convert(default), metadata=meta)


def _group(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"group": cls, "help": help})


_DUR = Duration()
_DUR0 = Duration(minimum_ms=0)
_OPT_STR = Str(optional=True)
_OPT_PATH = Str(optional=True, what="path", metavar="PATH")


@dataclass(frozen=True)
class RaftConfig:
    """Raft timing (``raft.*``); all durations in ms."""

    election_timeout: int = _key(_DUR, "500ms", "Election timeout t; elections are randomised in [t, 2t]")
    heartbeat_interval: int = _key(_DUR, "100ms", "Leader heartbeat interval (must be below election_timeout)")
    idle_after: int = _key(_DUR, "30s", "A group with no writes for this long switches to slow heartbeats")
    idle_heartbeat_interval: int = _key(_DUR, "3s", "Heartbeat interval of idle groups")
    propose_timeout: int = _key(_DUR, "5s", "A proposal not committed within this answers 503 (outcome unknown)")
    read_index: bool = _key(Bool(), True, "Linearizable reads by ReadIndex (one heartbeat round, no log entry); off: a barrier entry per read")
    snapshot_every: int = _key(Int(minimum=1), 10000, "Log entries between compaction snapshots")


@dataclass(frozen=True)
class AuthConfig:
    """Token checking (``auth.*``, SPEC §9)."""

    require_identity: bool = _key(Bool(), False, "Require a valid token on every API call (needs a key source)")
    hs256_secret_file: str | None = _key(_OPT_PATH, None, "File holding the HS256 secret (>= 32 bytes)")
    jwks_file: str | None = _key(_OPT_PATH, None, "File holding a JWKS (RS/PS/ES keys)")
    jwks_url: str | None = _key(Str(optional=True, what="URL", check=check_url, metavar="URL"), None, "URL of a JWKS, fetched lazily and cached")
    jwks_ttl: int = _key(_DUR, "5m", "How long a fetched JWKS is cached")
    jwks_max_stale: int = _key(_DUR, "1h", "How long old keys are used while JWKS refreshes fail")
    leeway: int = _key(_DUR0, "60s", "Clock leeway for exp/nbf/iat")
    issuer: str | None = _key(_OPT_STR, None, "Required 'iss' claim, when set")
    audience: str | None = _key(_OPT_STR, None, "Required 'aud' claim, when set")
    org_claim: str = _key(Str(), "owner", "Claim that carries the org")
    role_claim: str = _key(Str(), "tasks_role", "Claim that carries the org role")
    default_role: str = _key(Choice(*ROLES), OWNER, "Org role when the token has no role claim")


@dataclass(frozen=True)
class LimitsConfig:
    """Request and payload limits (``limits.*``); sizes in bytes."""

    max_body: int = _key(Size(minimum=1), "4MiB", "Largest HTTP request body")
    max_frame: int = _key(Size(minimum=1), "16MiB", "Largest ZAP frame")
    max_payload: int = _key(Size(minimum=1), "2MiB", "Largest encoded payload (input, result, ...)")
    rate_per_org: float = _key(Float(0.0), 0, "Requests/s per org per node (0 = off)", shown="0 (off)")
    max_history_events: int = _key(Int(minimum=1), 50000, "Events per run before it is terminated")
    max_batch_size: int = _key(Int(minimum=1), 100000, "Most targets of one batch operation")
    max_zap_connections: int = _key(Int(minimum=1), 10000, "ZAP connections beyond this are closed at accept")
    # Decoding of client input (issue 16): judged before anything is built or stored.
    max_depth: int = _key(Int(minimum=2, maximum=200), 64,
                          "Deepest nesting of arrays/objects in a request body (the body is 1): HTTP, ZAP, MCP")
    max_items: int = _key(Int(minimum=1), 1048576,
                          "Most elements of one array or map in a ZAP body, refused from its header")


@dataclass(frozen=True)
class ListenersConfig:
    """Deadlines and connection caps of the HTTP, ZAP and peer listeners
    (``listeners.*``): what an unauthenticated or idle client may hold. A cap of
    0 turns that cap off. Behind a proxy or NAT every client shares one address:
    raise the per-address caps there."""

    zap_hello_timeout: int = _key(_DUR, "10s", "A ZAP connection that has not completed HELLO within this is closed")
    zap_idle_timeout: int = _key(_DUR0, "10m", "An authenticated ZAP connection with no frame, no request in flight and no subscription for this long is closed (0 = never)", shown="10m (0 = never)")
    zap_frame_timeout: int = _key(_DUR, "60s", "Once a ZAP frame's first byte has arrived, the whole frame must within this (else the connection is closed)")
    zap_max_unauthenticated_frame: int = _key(Size(minimum=64), "64KiB", "Largest ZAP frame before HELLO succeeds (checked from the length prefix, before buffering)")
    zap_max_connections_per_address: int = _key(Int(minimum=0), 1000, "ZAP connections from one remote address beyond this are closed at accept (0 = no cap)", shown="1000 (0 = no cap)")
    http_max_connections: int = _key(Int(minimum=0), 4096, "HTTP connections beyond this are answered 503 and closed at accept (0 = no cap)", shown="4096 (0 = no cap)")
    http_max_connections_per_address: int = _key(Int(minimum=0), 1000, "HTTP connections from one remote address beyond this are answered 503 and closed (0 = no cap)", shown="1000 (0 = no cap)")
    http_keepalive_timeout: int = _key(_DUR, "60s", "An HTTP connection with no complete request for this long is closed (idle keep-alive, and request headers that never end)")
    http_body_timeout: int = _key(_DUR, "60s", "An HTTP request body not received whole within this after its headers is answered 408 and its connection closed")
    peer_handshake_timeout: int = _key(_DUR, "5s", "A peer-port connection that has not authenticated (nonces and hello) within this is closed")
    peer_max_handshakes: int = _key(Int(minimum=1), 128, "Peer-port connections in the handshake at once; beyond it the oldest is dropped for the new one")
    peer_max_handshakes_per_address: int = _key(Int(minimum=1), 8, "Peer-port connections in the handshake at once from one remote address; beyond it the oldest from that address is dropped for the new one")


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
    bandwidth: int = _key(Size(minimum=1024), "64MiB", "Snapshot copy rate limit per job, bytes per second")


@dataclass(frozen=True)
class SseConfig:
    """Server-Sent Events (``sse.*``)."""

    buffer_events: int = _key(Int(minimum=1), 10000, "Events kept for Last-Event-ID resume")
    keepalive: int = _key(_DUR, "15s", "Interval of keep-alive comments")


@dataclass(frozen=True)
class StorageConfig:
    """LMDB sizing (``storage.*``); bytes."""

    map_size: int = _key(Size(minimum=1), "64MiB", "Initial LMDB map size per partition (doubles as needed)")
    map_size_max: int = _key(Size(minimum=1), "32GiB", "Largest LMDB map size per partition")
    reserve_disk: int = _key(Size(), "1GiB", "Writes are refused (507) when free disk falls below this")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics (``metrics.*``)."""

    max_task_queue_series: int = _key(Int(minimum=0), 100, "Distinct namespace/task_queue label pairs before '_other'")


@dataclass(frozen=True)
class SettingsConfig:
    """Feature flags reported by GET /v1/tasks/settings (``settings.*``)."""

    namespace_write_disabled: bool = _key(Bool(), False, "Refuse namespace create/metadata/delete (403)")
    advanced_visibility_enabled: bool = _key(Bool(), True, "Reported as advancedVisibilityEnabled")
    worker_heartbeats_enabled: bool = _key(Bool(), True, "Reported as workerHeartbeatsEnabled")
    codec_endpoints_enabled: bool = _key(Bool(), False, "Reported as codecEndpointsEnabled")
    multi_cluster_enabled: bool = _key(Bool(), False, "Reported as multiClusterEnabled")


@dataclass(frozen=True)
class TlsConfig:
    """TLS (``tls.*``, docs/tls.md): plaintext unless the files are given."""

    cert_file: str | None = _key(_OPT_PATH, None, "Certificate chain (PEM) of HTTPS and ZAP over TLS; with tls.key_file turns TLS on")
    key_file: str | None = _key(_OPT_PATH, None, "Private key (PEM, unencrypted) of tls.cert_file")
    client_ca_file: str | None = _key(_OPT_PATH, None, "CA bundle that HTTP and ZAP client certificates must chain to; set: clients are asked for one")
    client_auth: str = _key(Choice("required", "optional"), "required", "With tls.client_ca_file: a client without a certificate is refused (required) or let in (optional)")
    peer_cert_file: str | None = _key(_OPT_PATH, None, "Certificate of this node on the peer port (mutual TLS under the HMAC framing); may be tls.cert_file")
    peer_key_file: str | None = _key(_OPT_PATH, None, "Private key of tls.peer_cert_file")
    peer_ca_file: str | None = _key(_OPT_PATH, None, "CA bundle every peer's certificate must chain to")
    reload_interval: int = _key(_DUR, "5s", "How often the files are checked for changes (SIGHUP reloads at once)")


# A failure domain's name: a machine, rack or zone (Kubernetes node names are
# DNS subdomains of up to 253 characters).
ZONE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,252}")


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
            "kind": Str(pattern=NODE_ID_RE, what="node id ([A-Za-z0-9][A-Za-z0-9_.-]{0,63})", metavar="ID"),
            "help": "Node id, unique in the cluster",
            "shown": "short hostname",
        },
    )
    node_zone: str | None = _key(
        Str(optional=True, pattern=ZONE_RE, what="zone name", metavar="NAME"), None,
        "Failure domain: a machine, rack or zone; replicas of one partition are placed in "
        "distinct zones while there are enough zones", shown="none (the node is its own domain)",
    )
    data_dir: str = _key(Str(what="path", metavar="PATH"), "./tasks-data", "Partitions (LMDB), Raft journals, node.secret")
    http: str = _key(Addr(), "127.0.0.1:7243", "HTTP listen address")
    zap: str = _key(Addr(), "127.0.0.1:9999", "ZAP listen address")
    peer: str = _key(Addr(), "127.0.0.1:7300", "Peer (node-to-node) listen address")
    advertise_http: str = _key(Addr(derived=True), "", "HTTP address published to peers and clients", shown="http, wildcard host -> hostname")
    advertise_zap: str = _key(Addr(derived=True), "", "ZAP address published to peers and clients", shown="zap, wildcard host -> hostname")
    advertise_peer: str = _key(Addr(derived=True), "", "Peer address published to other nodes", shown="peer, wildcard host -> hostname")
    peers: tuple[Peer, ...] = _key(Peers(), None, "Static members: CSV id=host:port (peer addresses); YAML list of {id, peer, http?, zap?}", shown="none")
    replicator: str = _key(Choice("local", "raft"), "local", "local (single node) or raft")
    replication_factor: int = _key(Int(minimum=1), 3, "Replicas per partition (fewer when the cluster is smaller)")
    partitions: int = _key(Int(minimum=1, maximum=4096), 16, "Raft groups hosting the shards; fixed at bootstrap (local mode uses 1)")
    seed: str = _key(Str(), "tasks", "HRW routing seed")
    default_namespace: str = _key(Str(what="namespace", check=check_namespace, metavar="NS"), "default", "Namespace that exists implicitly in every org")
    region: str = _key(Str(), "embedded", "Reported as namespaceInfo.region")
    cluster_secret_file: str | None = _key(_OPT_PATH, None, "File with the cluster secret (>= 32 bytes); required for raft")
    durability: str = _key(Choice("sync", "nosync"), "sync", "sync: fsync before acknowledging; nosync: leave flushing to the OS")
    ui_dir: str | None = _key(_OPT_PATH, None, "Static UI bundle served under /_/tasks/")
    log_level: str = _key(Choice("debug", "info", "warning", "error"), "info", "Log level")
    log_format: str = _key(Choice("text", "json"), "text", "Log format")

    raft: RaftConfig = _group(RaftConfig, "Raft timing")
    auth: AuthConfig = _group(AuthConfig, "Authentication of API callers")
    limits: LimitsConfig = _group(LimitsConfig, "Limits")
    listeners: ListenersConfig = _group(ListenersConfig, "Listener deadlines and connection caps")
    timeouts: TimeoutsConfig = _group(TimeoutsConfig, "Engine timeouts")
    retention: RetentionConfig = _group(RetentionConfig, "Retention")
    migration: MigrationConfig = _group(MigrationConfig, "Migration")
    sse: SseConfig = _group(SseConfig, "Server-Sent Events")
    storage: StorageConfig = _group(StorageConfig, "Storage (LMDB)")
    metrics: MetricsConfig = _group(MetricsConfig, "Metrics")
    settings: SettingsConfig = _group(SettingsConfig, "Settings (feature flags)")
    tls: TlsConfig = _group(TlsConfig, "TLS")

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
        if key not in KEYS:
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
            if key not in KEYS:
                raise ConfigError(f"unknown config key {key!r}{suggest_key(key)}", key)
            layer[key] = (value, "replace()")
        return build_config([layer], typed=True)

    def as_dict(self) -> dict[str, Any]:
        """Every key as ``{dotted key: typed value}`` (e.g. for a debug dump)."""
        return {key: self.get(key) for key in KEYS}


def _advertise(listen: str) -> str:
    host, port = split_host_port(listen)
    if host in WILDCARD_HOSTS:
        host = _hostname()
    return join_host_port(host, port)


# --------------------------------------------------------------- key registry


@dataclass(frozen=True)
class _KeyDef:
    key: str
    kind: Kind
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


KEYS, GROUPS = _collect()


def keys() -> tuple[str, ...]:
    """Every dotted config key, in declaration order."""
    return tuple(KEYS)


def suggest_key(key: str) -> str:
    close = difflib.get_close_matches(key, list(KEYS) + list(GROUPS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

# A layer maps dotted keys to (raw value, description of its source).
Layer = dict[str, tuple[Any, str]]


def build_config(layers: Sequence[Layer], *, typed: bool = False) -> Config:
    """Convert every layer (later layers win), assemble the tree, check it."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        for key, (raw, origin) in layer.items():
            spec = KEYS[key]
            try:
                values[key] = spec.kind.convert(raw, typed=typed)
            except ValueError as exc:
                shown = raw if not isinstance(raw, str) or len(raw) <= 200 else raw[:200] + "..."
                raise ConfigError(f"invalid value for {key} ({origin}): {shown!r}: {exc}", key) from None
            sources[key] = origin
    top: dict[str, Any] = {}
    grouped: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
    for key, value in values.items():
        group, dot, name = key.partition(".")
        if dot:
            grouped[group][name] = value
        else:
            top[key] = value
    for group, cls in GROUPS.items():
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
    _check_tls(cfg.tls)
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


def _check_tls(tls: TlsConfig) -> None:
    """TLS files come in sets: a certificate with its key, a peer certificate
    with its key and CA; a client CA only where there is a certificate."""
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("tls.cert_file and tls.key_file are set together", "tls.cert_file")
    if tls.client_ca_file and not tls.cert_file:
        raise ConfigError("tls.client_ca_file needs tls.cert_file and tls.key_file", "tls.client_ca_file")
    peer = (tls.peer_cert_file, tls.peer_key_file, tls.peer_ca_file)
    if any(peer) and not all(peer):
        raise ConfigError(
            "peer TLS is mutual: set tls.peer_cert_file, tls.peer_key_file and tls.peer_ca_file together",
            "tls.peer_cert_file",
        )
