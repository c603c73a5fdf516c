"""Prometheus metrics of one node (SPEC §11).

Each node has its own registry, so that several embedded nodes in one process
(tests, ``tasks.embed()``) never share or clash on series.
"""

from __future__ import annotations

from collections.abc import Callable

from hanzo_tasks.shard import OPS
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# Why replication stopped (RaftReplicator.fatal_kind; "apply" also for local mode's apply thread).
FATAL_REASONS = ("raft_thread", "journal", "apply")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _StorageCollector:
    """LMDB gauges read at scrape time from the node's stores."""

    def __init__(self, stores: Callable[[], list]) -> None:
        self._stores = stores

    def collect(self):
        stores = self._stores()
        size = GaugeMetricFamily("tasks_lmdb_map_size_bytes", "LMDB map size, summed over local partitions")
        used = GaugeMetricFamily("tasks_lmdb_used_bytes", "LMDB bytes in use, summed over local partitions")
        envs = GaugeMetricFamily("tasks_lmdb_envs_open", "Open LMDB environments")
        total_size = total_used = 0
        for s in stores:
            try:
                total_size += s.map_size
                total_used += s.used_bytes()
            except Exception:  # a store closing under a scrape
                continue
        size.add_metric([], total_size)
        used.add_metric([], total_used)
        envs.add_metric([], len(stores))
        yield size
        yield used
        yield envs


class _PeerCollector:
    """Peer-port rejections, read from the node's PeerMux at scrape time."""

    REASONS = ("bad_mac", "replay", "malformed", "too_large")

    def __init__(self, rejected: Callable[[], dict[str, int]]) -> None:
        self._rejected = rejected

    def collect(self):
        fam = CounterMetricFamily(
            "tasks_peer_frames_rejected", "Peer frames rejected (connection closed)", labels=["reason"]
        )
        counts = self._rejected()
        for reason in self.REASONS:
            fam.add_metric([reason], counts.get(reason, 0))
        yield fam


class _FatalCollector:
    """The watchdog (issue 23): replication failures that stop the node (it
    exits 1 a second later), read at scrape time so that the first scrape
    after the failure shows it (at most 1 per process: it stops)."""

    def __init__(self, kind: Callable[[], str | None]) -> None:
        self._kind = kind

    def collect(self):
        fam = CounterMetricFamily(
            "tasks_fatal_errors", "Replication failures that stop the node", labels=["reason"]
        )
        kind = self._kind()
        for reason in FATAL_REASONS:
            fam.add_metric([reason], 1 if kind == reason else 0)
        yield fam


class _RaftCollector:
    """Raft gauges of the node's groups, read at scrape time (empty in local mode)."""

    def __init__(self, replicator: Callable[[], object]) -> None:
        self._rep = replicator

    def collect(self):
        rep = self._rep()
        commit = GaugeMetricFamily("tasks_raft_commit_index", "Commit index", labels=["group_kind"])
        applied = GaugeMetricFamily("tasks_raft_applied_index", "Applied index", labels=["group_kind"])
        lag = GaugeMetricFamily("tasks_raft_apply_lag_entries", "Commit minus applied (max)", labels=["group_kind"])
        groups = GaugeMetricFamily("tasks_raft_groups", "Groups by role", labels=["group_kind", "role"])
        changes = CounterMetricFamily("tasks_raft_leader_changes", "Leader changes seen", labels=["group_kind"])
        if rep is None or not rep.clustered:
            return
        yield GaugeMetricFamily(
            "tasks_raft_thread_alive", "1 while the Raft thread runs and replication has not failed (else 0)",
            value=1 if rep.raft_thread_alive() else 0,  # type: ignore[attr-defined]
        )
        sums: dict[str, list[int]] = {"meta": [0, 0, 0], "partition": [0, 0, 0]}
        roles: dict[tuple[str, str], int] = {}
        for g in [*rep.local_partitions(), rep.meta_group]:  # type: ignore[attr-defined]
            kind = "meta" if g == rep.meta_group else "partition"  # type: ignore[attr-defined]
            st = rep.group_status(g)  # type: ignore[attr-defined]
            acc = sums[kind]
            acc[0] += st["commitIndex"]
            acc[1] += st["appliedIndex"]
            acc[2] = max(acc[2], st["commitIndex"] - st["appliedIndex"])
            role = "leader" if rep.is_leader(g) else "follower"  # type: ignore[attr-defined]
            roles[(kind, role)] = roles.get((kind, role), 0) + 1
        for kind, (c, a, lg) in sums.items():
            commit.add_metric([kind], c)
            applied.add_metric([kind], a)
            lag.add_metric([kind], lg)
        for kind in ("meta", "partition"):
            for role in ("leader", "follower"):
                groups.add_metric([kind, role], roles.get((kind, role), 0))
        for kind, n in rep.leader_changes_by_kind.items():  # type: ignore[attr-defined]
            changes.add_metric([kind], n)
        proposals = CounterMetricFamily(
            "tasks_raft_proposals", "Proposals by outcome", labels=["group_kind", "outcome"]
        )
        for (kind, outcome), n in sorted(rep.outcomes.items()):  # type: ignore[attr-defined]
            proposals.add_metric([kind, outcome], n)
        yield proposals
        snaps = CounterMetricFamily(
            "tasks_raft_snapshots", "Log compaction snapshots", labels=["group_kind", "direction"]
        )
        counts = rep.snapshot_counts()  # type: ignore[attr-defined]
        snaps.add_metric(["partition", "taken"], counts["taken"])
        snaps.add_metric(["partition", "installed"], counts["installed"])
        yield snaps
        yield commit
        yield applied
        yield lag
        yield groups
        yield changes


# Connections a listener refused or closed by one of its limits (``listeners.*``),
# as (listener, reason) pairs: the label values are this fixed set.
CONNECTION_LIMITS: dict[str, tuple[str, ...]] = {
    "zap": ("max_connections", "per_address", "hello_timeout", "idle_timeout", "frame_timeout",
            "unauthenticated_too_large"),
    "http": ("max_connections", "per_address", "body_timeout"),
    "peer": ("handshake_timeout", "handshake_evicted", "per_address_evicted"),
}


class _ConnectionLimitCollector:
    """``tasks_connection_limits_total{listener,reason}``: the ZAP and HTTP counts kept
    here, the peer port's read at scrape time from the replicator's PeerMux (which
    lives below this layer and keeps plain counters)."""

    def __init__(self, counts: dict[tuple[str, str], int], replicator: Callable[[], object]) -> None:
        self._counts = counts
        self._replicator = replicator

    def collect(self):
        fam = CounterMetricFamily(
            "tasks_connection_limits",
            "Connections refused or closed by a listener limit (listeners.*)",
            labels=["listener", "reason"],
        )
        mux = getattr(self._replicator(), "mux", None)
        peer = dict(getattr(mux, "limited", None) or {})
        for listener, reasons in CONNECTION_LIMITS.items():
            for reason in reasons:
                n = peer.get(reason, 0) if listener == "peer" else self._counts.get((listener, reason), 0)
                fam.add_metric([listener, reason], n)
        yield fam


MIGRATION_STATUSES = ("pending", "snapshotting", "catching-up", "cutover", "done", "failed")


class Metrics:
    def __init__(
        self,
        version: str,
        stores: Callable[[], list],
        peer_rejected: Callable[[], dict[str, int]] | None = None,
        replicator: Callable[[], object] | None = None,
        fatal_kind: Callable[[], str | None] | None = None,
    ) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(_StorageCollector(stores))
        r.register(_PeerCollector(peer_rejected or dict))
        r.register(_RaftCollector(replicator or (lambda: None)))
        r.register(_FatalCollector(fatal_kind or (lambda: None)))
        self._limited: dict[tuple[str, str], int] = {}
        r.register(_ConnectionLimitCollector(self._limited, replicator or (lambda: None)))
        Gauge("tasks_build_info", "Build information", ["version"], registry=r).labels(version).set(1)
        self.http_requests = Counter(
            "tasks_http_requests_total", "HTTP requests", ["route", "method", "code"], registry=r
        )
        self.http_duration = Histogram(
            "tasks_http_request_duration_seconds", "HTTP request duration", ["route", "method"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.commands_applied = Counter(
            "tasks_commands_applied_total", "Commands applied by the state machine", ["op"], registry=r
        )
        for op in OPS:
            self.commands_applied.labels(op)
        self.workflows_started = Counter("tasks_workflows_started_total", "Runs started", registry=r)
        self.workflows_closed = Counter(
            "tasks_workflows_closed_total", "Runs closed", ["status"], registry=r
        )
        self.schedule_fires = Counter(
            "tasks_schedule_fires_total", "Schedule fires by outcome", ["outcome"], registry=r
        )
        self.fire_lateness = Histogram(
            "tasks_schedule_fire_lateness_seconds",
            "Actual start minus (nominal time + jitter)",
            buckets=LATENCY_BUCKETS + (30, 60),
            registry=r,
        )
        self.map_grows = Counter("tasks_lmdb_map_grows_total", "LMDB map doublings", registry=r)
        self.storage_full = Counter("tasks_storage_full_total", "Writes refused for full storage", registry=r)
        self.rate_limited = Counter("tasks_rate_limited_total", "Requests refused by rate limits", ["scope"], registry=r)
        self.auth_failures = Counter(
            "tasks_auth_failures_total", "Callers refused for a missing or invalid token (SPEC §9)", ["reason"], registry=r
        )
        self.proposal_duration = Histogram(
            "tasks_raft_proposal_duration_seconds", "Proposal latency (commit + apply)", ["group_kind"],
            buckets=LATENCY_BUCKETS, registry=r,
        )

        # ZAP (SPEC §8, §11): opcode labels are names from the fixed opcode table
        # (or "unknown"), so the series stay bounded whatever clients send.
        self.zap_requests = Counter(
            "tasks_zap_requests_total", "ZAP requests answered", ["opcode", "status"], registry=r
        )
        self.zap_duration = Histogram(
            "tasks_zap_request_duration_seconds", "ZAP request duration", ["opcode"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.zap_connections = Gauge("tasks_zap_connections", "Open ZAP connections", registry=r)
        self.zap_frames_rejected = Counter(
            "tasks_zap_frames_rejected_total", "ZAP frames rejected", ["reason"], registry=r
        )
        for reason in ("too_large", "bad_version", "bad_body", "protocol"):
            self.zap_frames_rejected.labels(reason)
        # Client mistakes and abuse (issue 16): counted, logged quietly (cluster/api/client_errors.py).
        # Labels are fixed names: listener (http, zap, mcp), kind (bad_body, too_deep, body_incomplete,
        # malformed_request, disconnect).
        self.client_errors = Counter(
            "tasks_client_errors_total", "Requests refused or cut short by the client's doing",
            ["listener", "kind"], registry=r,
        )
        for listener, kind in (("http", "body_incomplete"), ("http", "malformed_request"), ("http", "disconnect"),
                               ("http", "too_deep"), ("zap", "bad_body"), ("mcp", "too_deep")):
            self.client_errors.labels(listener, kind)
        self.migrations = Gauge("tasks_migrations", "Migration jobs known to the meta group", ["status"], registry=r)
        self.migration_fenced = Histogram(
            "tasks_migration_fenced_seconds", "Write pause of migration cutovers",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.migration_bytes = Counter("tasks_migration_bytes_total", "Bytes copied by migrations", registry=r)
        for status in MIGRATION_STATUSES:
            self.migrations.labels(status)
        # Server-Sent Events (SPEC §6): open streams, and gap events (resume past the ring, slow consumers).
        self.sse_subscribers = Gauge("tasks_sse_subscribers", "Open SSE streams", registry=r)
        self.sse_gaps = Counter("tasks_sse_gaps_total", "SSE gap events queued", registry=r)
        # MCP (SPEC §7): tool calls by tool (a fixed set of names) and outcome (ok, error).
        self.mcp_calls = Counter("tasks_mcp_calls_total", "MCP tool calls", ["tool", "outcome"], registry=r)
        self._job_status: dict[str, str] = {}

    def connection_limited(self, listener: str, reason: str) -> None:
        """One connection refused or closed by a listener limit (loop thread)."""
        key = (listener, reason)
        self._limited[key] = self._limited.get(key, 0) + 1

    def on_migration(self, job: dict) -> None:
        """A job record changed in the meta group (called on every node)."""
        old = self._job_status.get(job["id"])
        new = job["status"]
        if old == new:
            return
        if old is not None:
            self.migrations.labels(old).dec()
        self.migrations.labels(new).inc()
        self._job_status[job["id"]] = new
        if new == "done":
            self.migration_fenced.observe((job.get("fencedMs") or 0) / 1000.0)
            self.migration_bytes.inc(job.get("bytes") or 0)

    def on_apply(self, result: dict) -> None:
        op = result.get("_op")
        if op in OPS:
            self.commands_applied.labels(op).inc()
        for ev in result.get("_events", ()):
            kind = ev["kind"]
            if kind == "workflow.started":
                self.workflows_started.inc()
            elif kind.startswith("workflow.") and kind[9:] in (
                "completed", "failed", "canceled", "terminated", "timed_out", "continued_as_new"
            ):
                self.workflows_closed.labels(kind[9:].upper()).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
