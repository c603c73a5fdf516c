"""One node: configuration, storage, replicator, service, timers and listeners.

``Node.start()`` opens every local partition (replaying nothing: LMDB is
already the applied state), starts the replicator, the timer service and the
HTTP listener. ``Node.stop()`` reverses that: stop accepting, drain HTTP, stop
timers, flush and close storage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from aiohttp import web
from hanzo_tasks.cluster.api.http.listener import HttpRunner, HttpSite
from hanzo_tasks.cluster.api.http.server import HttpApi
from hanzo_tasks.cluster.api.sse import SseHub
from hanzo_tasks.cluster.api.zap.server import ZapServer
from hanzo_tasks.cluster.auth import Authenticator
from hanzo_tasks.cluster.config import ConfigError
from hanzo_tasks.cluster.dispatch.dispatcher import Dispatcher
from hanzo_tasks.cluster.health import replication_failure, replication_failure_kind
from hanzo_tasks.cluster.leader.batches import BatchRunner
from hanzo_tasks.cluster.leader.timers import ScheduleTimers
from hanzo_tasks.cluster.membership import Members
from hanzo_tasks.cluster.metrics import Metrics
from hanzo_tasks.cluster.replica_sets import ReplicaKeeper
from hanzo_tasks.cluster.service import Service, wall_ms
from hanzo_tasks.cluster.tls import NodeTls, node_tls, on_sighup
from hanzo_tasks.migration import Migrations, shard_counts
from hanzo_tasks.protocol import hostport, names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.replication import LocalReplicator, NodeReplicator
from hanzo_tasks.replication.raft.replicator import RaftReplicator
from hanzo_tasks.routing import Membership, MembershipWatcher
from hanzo_tasks.shard import moving, reads

log = logging.getLogger("tasks.node")

# The watchdog (issue 23): how often it looks, and how long a failed node keeps
# answering /readyz (503, with the reason) and /metrics before it stops, so
# that probes and scrapes see why.
WATCHDOG_PERIOD_S = 0.1
FATAL_LINGER_S = 1.0


def package_version() -> str:
    try:
        return version("hanzo-tasks")
    except Exception:
        return "0.0.0"


class ConfigMismatch(Exception):
    """This node's configuration contradicts the cluster's (exit 2)."""


def read_secret(path: str | None) -> bytes:
    """The cluster secret: at least 32 bytes (trailing newline stripped)."""
    if not path:
        raise ValueError("replicator: raft needs cluster_secret_file")
    data = Path(path).read_bytes().rstrip(b"\n")
    if len(data) < 32:
        raise ValueError(f"cluster secret in {path} is shorter than 32 bytes")
    return data


def load_tls(cfg: Any) -> NodeTls:
    """The node's TLS contexts (docs/tls.md); a file that cannot be used is a
    startup error (ConfigError, exit 2) naming the keys to look at."""
    try:
        return node_tls(cfg.tls)
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        raise ConfigError(f"tls: cannot load the certificate files: {e}", "tls.cert_file") from None


def split_addr(addr: str) -> tuple[str, int]:
    """A listen address (validated by the config) -> (host, port); no host = every interface."""
    host, port = hostport.split_host_port(addr, empty_host=True)
    return host or "0.0.0.0", port


class Node:
    def __init__(self, cfg: Any, *, clock=wall_ms) -> None:
        self.cfg = cfg
        self.node_id: str = cfg.node_id
        self.version = package_version()
        self.started_at = time.monotonic()
        self.data_dir = Path(cfg.data_dir)
        self.clock = clock
        self.ready = False
        self.http_url: str | None = None
        self.http_addr: str | None = None
        self._runner: web.AppRunner | None = None
        self.zap_enabled = True  # embedded.start(zap=None) turns the ZAP listener off
        self.zap_addr: str | None = None
        self.public_http: str | None = None
        self.public_zap: str | None = None
        self._zap: ZapServer | None = None
        self.replicator: Any = None
        self.service: Service | None = None
        self.timers: ScheduleTimers | None = None
        self.batches: BatchRunner | None = None
        self.dispatcher: Any = None
        self.migrations: Any = None
        self.sse: Any = None  # cluster.sse.SseHub, from start()
        self.metrics = Metrics(self.version, self._stores, self._peer_rejected, lambda: self.replicator,
                               lambda: replication_failure_kind(self.replicator))
        # Reads the key files now: a bad key source is a startup error (ConfigError).
        self.auth = Authenticator(cfg.auth, on_failure=lambda reason: self.metrics.auth_failures.labels(reason).inc())
        self.tls = load_tls(cfg)  # likewise: a bad certificate or key is a startup error
        self.fatal: str | None = None
        self.failure: str | None = None  # set by the watchdog: replication failed, the node stops (exit 1)
        self.leaving = False
        self.members = Members(self)
        self.stopping = asyncio.Event()
        self._bg: list[asyncio.Task] = []

    def _stores(self) -> list:
        if self.replicator is None:
            return []
        rep = self.replicator
        return [rep.store(p) for p in rep.local_partitions() if rep.is_local(p)]

    def _peer_rejected(self) -> dict[str, int]:
        return self.replicator.peer_rejected() if self.replicator is not None else {}

    def node_secret(self) -> bytes:
        """``<data_dir>/node.secret``: 32 random bytes, created once (task tokens)."""
        path = self.data_dir / "node.secret"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        return path.read_bytes()

    async def start(self) -> None:
        cfg = self.cfg
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.node_secret()
        self.replicator = self._make_replicator()
        self.membership = MembershipWatcher(
            Membership(frozenset(self.members.member_ids()), frozenset({self.node_id}))
        )
        if self.replicator.clustered:
            self.replicator.on_peer_change(self.members.on_peer_changed)
            self.replicator.subscribe(self.members.on_meta_apply)
            have = self.replicator.meta.partitions()
            if have is not None and have != cfg.partitions:
                raise ConfigMismatch(
                    f"this cluster was bootstrapped with {have} partitions; "
                    f"this node is configured with partitions: {cfg.partitions}"
                )
        await self.replicator.start()
        self._bg.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        if self.tls.all:
            self._bg.append(asyncio.create_task(self.tls.watch(cfg.tls.reload_interval / 1000), name="tls-reload"))
        if self.replicator.clustered:
            self.replica_keeper = ReplicaKeeper(self.replicator, replication_factor=cfg.replication_factor,
                                                seed=cfg.seed)
            self._bg.append(asyncio.create_task(self.members.join_meta(), name="meta-join"))
            self._bg.append(asyncio.create_task(self.members.balance_leaders(), name="leader-balance"))
            self._bg.append(asyncio.create_task(self.replica_keeper.run(), name="replica-sets"))
        self.service = Service(cfg, self.replicator, node_id=self.node_id, clock=self.clock)
        if self.service.forwarder is not None:
            self.replicator.rpc.register("shardinfo", self._serve_shard_info)
        duration = self.metrics.proposal_duration.labels("partition")
        self.service.on_proposed = duration.observe
        self.replicator.subscribe(lambda g, i, res: self.metrics.on_apply(res))
        self.sse = SseHub(self, buffer_events=cfg.sse.buffer_events, keepalive_ms=cfg.sse.keepalive,
                          clock=self.clock, metrics=self.metrics)
        self.replicator.subscribe(self.sse.on_apply)
        self.sse.attach(self.replicator)
        self.timers = ScheduleTimers(self.service, self.metrics)
        await self.timers.start()
        self.batches = BatchRunner(self.service)
        await self.batches.start()
        secret = read_secret(cfg.cluster_secret_file) if cfg.replicator == "raft" else self.node_secret()
        self.dispatcher = Dispatcher(self, secret)
        await self.dispatcher.start()
        self.service.query_handler = self.dispatcher.query
        metrics_on_migration = getattr(self.metrics, "on_migration", None)
        sse = self.sse

        def on_migration(job: dict[str, Any]) -> None:
            if metrics_on_migration is not None:
                metrics_on_migration(job)
            sse.on_migration(job)

        self.migrations = Migrations(
            self.replicator, node_id=self.node_id, clock=self.clock, max_fence_ms=cfg.migration.max_fence,
            bandwidth=cfg.migration.bandwidth,
            on_change=on_migration,
        )
        self.sse.seen_jobs(self.migrations.jobs())  # jobs of earlier runs: no SSE for their past transitions
        await self.migrations.start()
        loop = asyncio.get_running_loop()
        timers = self.timers
        self.membership.subscribe(lambda old, new: loop.call_soon_threadsafe(timers.on_membership_change, old, new))
        api = HttpApi(self)
        # SPEC §10.2: drain HTTP for at most 5 s on SIGTERM (aiohttp waits 60 s by default).
        self._runner = HttpRunner(api.app, cfg, self.metrics, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await self._runner.setup()
        host, port = split_addr(cfg.http)
        api_tls = self.tls.api.context if self.tls.api is not None else None
        site = HttpSite(self._runner, host, port, reuse_address=True, ssl_context=api_tls)
        await site.start()
        bound = self._runner.addresses  # what the listening sockets are bound to
        bound_port = bound[0][1] if bound else port
        shown = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        self.http_addr = f"{shown}:{bound_port}"
        self.http_url = f"{'https' if api_tls else 'http'}://{self.http_addr}"
        if host not in ("127.0.0.1", "localhost", "::1") and not cfg.auth.require_identity:
            log.warning("auth disabled and listening on %s", cfg.http)
        await self._start_zap()
        # What peers and clients are told: the configured advertise_* address when
        # one was set (a pod's DNS name), else the bound one (port 0 resolved).
        if "advertise_http" in cfg.sources:
            self.public_http = cfg.advertise_http
        else:
            self.public_http = self.http_addr
        if self.zap_addr is not None and "advertise_zap" in cfg.sources:
            self.public_zap = cfg.advertise_zap
        else:
            self.public_zap = self.zap_addr
        self.ready = True
        zap = f" zap={self.zap_addr}" if self.zap_addr else ""
        log.info("node %s serving http=%s%s data=%s", self.node_id, self.http_addr, zap, self.data_dir)

    async def _start_zap(self) -> None:
        """Listen for ZAP on ``cfg.zap``; ``zap_addr`` is the bound address.

        A ZAP address that was set explicitly must bind, like HTTP. The default
        one (127.0.0.1:9999) may be taken by another node on the same machine
        (tests and dev setups that set only --http): then this node serves
        without ZAP and says so, instead of refusing to start.
        """
        if not self.zap_enabled:
            return
        host, port = split_addr(self.cfg.zap)
        zap = ZapServer(self)
        try:
            bound = await zap.start(host, port, tls=self.tls.api.context if self.tls.api else None)
        except OSError as e:
            if "zap" in self.cfg.sources:
                raise
            log.warning("ZAP not served: cannot listen on the default %s (%s); set zap to serve it", self.cfg.zap, e)
            return
        self._zap = zap
        if host not in ("127.0.0.1", "localhost", "::1") and not self.cfg.auth.require_identity:
            log.warning("auth disabled and listening on %s", self.cfg.zap)
        shown = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        self.zap_addr = f"[{shown}]:{bound}" if ":" in shown else f"{shown}:{bound}"

    def _make_replicator(self) -> NodeReplicator:
        cfg = self.cfg
        storage = {
            "map_size": cfg.storage.map_size,
            "map_size_max": cfg.storage.map_size_max,
            "reserve_disk": cfg.storage.reserve_disk,
            "sync": cfg.durability == "sync",
        }
        if cfg.replicator == "local":
            return LocalReplicator(self.data_dir, node_id=self.node_id, partitions=1, **storage)
        secret = read_secret(cfg.cluster_secret_file)
        peers = {p.id: p.peer for p in cfg.peers}
        peers.setdefault(self.node_id, cfg.advertise_peer)
        rep = RaftReplicator(
            self.data_dir,
            node_id=self.node_id,
            listen=cfg.peer,
            peers=peers,
            secret=secret,
            partitions=cfg.partitions,
            election_timeout_ms=cfg.raft.election_timeout,
            heartbeat_interval_ms=cfg.raft.heartbeat_interval,
            propose_timeout_ms=cfg.raft.propose_timeout,
            snapshot_every=cfg.raft.snapshot_every,
            idle_after_ms=cfg.raft.idle_after,
            idle_heartbeat_ms=cfg.raft.idle_heartbeat_interval,
            await_layout=True,
            max_frame=cfg.limits.max_frame,
            peer_limits={
                "handshake_timeout": cfg.listeners.peer_handshake_timeout / 1000.0,
                "max_handshakes": cfg.listeners.peer_max_handshakes,
                "max_handshakes_per_address": cfg.listeners.peer_max_handshakes_per_address,
            },
            tls=self.tls.peer.contexts if self.tls.peer is not None else None,
            **storage,
        )
        known = rep.meta.members()
        if known:  # the meta group's member list is authoritative once there is one
            rep.set_peer_addresses({mid: m["peer"] for mid, m in known.items() if m.get("peer")})
        return rep

    async def _watchdog(self) -> None:
        """Deliverable 4 of issue 23: a replicator that cannot make progress any
        more (its Raft thread died, a journal failed, an apply failed) cannot
        recover in-process. /readyz answers 503 with the reason from that moment
        (``readiness_reasons`` asks the replicator itself, so does the metric
        ``tasks_fatal_errors_total``); this logs why, keeps answering for FATAL_LINGER_S,
        then stops the node: ``tasksd`` exits 1 and its supervisor restarts it,
        which recovers from disk (the journal is replayed)."""
        rep = self.replicator
        while (reason := replication_failure(rep)) is None:
            await asyncio.sleep(WATCHDOG_PERIOD_S)
        self.failure = reason
        log.critical("watchdog: %s; this node is not ready and stops in %.1f s (exit 1) for its supervisor "
                     "to restart it", reason, FATAL_LINGER_S)
        await asyncio.sleep(FATAL_LINGER_S)
        self.stopping.set()

    async def hand_over(self, timeout: float = 5.0) -> None:
        """Before stopping: give away every group this node leads (SIGTERM path)."""
        rep = self.replicator
        if not rep.clustered:
            return
        groups = list(range(rep.partitions)) + [rep.meta_group]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leading = [g for g in groups if rep.is_leader(g)]
            if not leading:
                return
            for g in leading:
                rep.transfer_leadership(g, None)
            await asyncio.sleep(0.2)
        log.warning("stopping while still leading %d groups", sum(1 for g in groups if rep.is_leader(g)))

    async def stop(self) -> None:
        for t in self._bg:
            t.cancel()
        if self.ready and self.failure is None:  # a failed replicator hands nothing over
            try:
                await self.hand_over()
            except Exception:
                log.exception("leadership hand-over failed")
        self.ready = False
        if self.sse is not None:
            self.sse.close()  # ends every event stream, so that draining HTTP does not wait on them
        if self.service is not None:
            self.service.results.close()  # parked result waits answer now, for the same reason
        if self._zap is not None:
            await self._zap.stop()
            self._zap = None
        if self._runner is not None:
            await self._runner.shutdown()
            await self._runner.cleanup()
            self._runner = None
        if self.migrations is not None:
            await self.migrations.stop()
        if self.batches is not None:
            await self.batches.stop()
        if self.timers is not None:
            await self.timers.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        if self.replicator is not None:
            await self.replicator.stop()
        await self.auth.close()
        log.info("node %s stopped", self.node_id)

    # ---- migration (SPEC §4.10) ---------------------------------------------

    def shard_info(self, org: str, ns: str, partition: int) -> dict[str, Any]:
        """A shard as GET /v1/tasks/cluster lists it: where it lives and whether it is moving."""
        pin = self.service.pins.get((org, ns)) if self.service else None
        with self.replicator.store(partition).read() as txn:
            st = moving.read_state(txn, org, ns)
        fenced = st is not None and (st["role"] != "src" or bool(st.get("fenced")))
        return {"org": org, "namespace": ns, "partition": partition, "pinned": pin is not None,
                "fenced": fenced, "placementEpoch": pin["epoch"] if pin else 0}

    async def remote_leaders(self) -> dict[int, str | None]:
        """Leaders of the partitions this node does not hold, as their replicas see them (1 s bound)."""
        rep = self.replicator
        missing = [p for p in range(rep.partitions) if not rep.is_local(p)]
        peers = {n for p in missing for n in rep.replicas(p) if n != self.node_id and rep.peer_connected(n)}
        answers = await asyncio.gather(*(rep.rpc.call(n, "leaders", {}, 1.0) for n in sorted(peers)),
                                       return_exceptions=True)
        out: dict[int, str | None] = {}
        for answer in answers:
            if isinstance(answer, dict):
                for p, leader in answer.items():
                    if leader and int(p) in missing:
                        out.setdefault(int(p), leader)
        return out

    async def _serve_shard_info(self, peer: str, a: Any) -> Any:
        """A peer lists the shards of a partition it does not hold (org None: all orgs)."""
        p, org = a["p"], a.get("org")
        if not self.replicator.is_local(p):
            return {"not_replica": True}
        with self.replicator.store(p).read() as txn:
            found = [(o, n) for o, n in reads.shards(txn) if org is None or o == org]
        return {"ok": [self.shard_info(o, n, p) for o, n in found]}

    def serving(self) -> Service:
        """The service, once the node has started (a request before that: 503)."""
        if self.service is None:
            raise ApiError("unavailable", "the node is starting", retry_after=1)
        return self.service

    async def remote_shard_infos(self, partition: int, org: str | None) -> list[dict[str, Any]]:
        """The shards (of ``org``; None: of every org) of a partition this node holds
        no replica of, as a replica of it describes them."""
        forwarder = self.serving().forwarder
        if forwarder is None:
            raise ApiError("unavailable", f"no replica of partition {partition} here", retry_after=1)
        infos: list[dict[str, Any]] = await forwarder.call(partition, "shardinfo",
                                                          {"p": partition, "org": org}, 5.0)
        return infos

    async def migrate(self, org: str, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST NS/migrate: resolve the destination partition and record the job."""
        names.check_namespace(ns)
        rep = self.replicator
        service = self.serving()
        await service.ensure_namespace(org, ns)
        if await service.read(org, ns, "namespace") is None:
            raise ApiError("not_found", f"namespace {ns} not found")
        src = service.partition(org, ns)
        if not isinstance(body, dict) or ("toNode" in body) == ("toPartition" in body):
            raise ApiError("invalid_argument", "give exactly one of toNode or toPartition")
        if "toPartition" in body:
            dst = body["toPartition"]
            if not isinstance(dst, int) or isinstance(dst, bool) or not 0 <= dst < rep.partitions:
                raise ApiError("invalid_argument", f"toPartition must be a partition id from 0 to {rep.partitions - 1}")
        else:
            to = body["toNode"]
            if not isinstance(to, str) or to not in set(self.members.member_ids()) | {self.node_id}:
                raise ApiError("invalid_argument", f"unknown node {to!r}")
            if not rep.clustered:
                raise ApiError("failed_precondition", "migration needs replicator: raft")
            if to != self.node_id and not self.membership.current.is_alive(to):
                raise ApiError("failed_precondition", f"node {to} is not alive")
            # Partitions X leads (for partitions this node does not hold, as
            # their replicas see it, else their preferred leader).
            preferred = self.members.preferred_leaders()
            elsewhere = await self.remote_leaders()
            led = [p for p in range(rep.partitions)
                   if (rep.leader(p) if rep.is_local(p) else elsewhere.get(p, preferred[p])) == to]
            if src in led:
                dst = src  # already home on a partition that node leads
            elif not led:
                raise ApiError("failed_precondition", f"node {to} leads no partition right now; retry")
            else:
                counts = shard_counts(rep)
                for p in led:
                    if not rep.is_local(p):
                        try:
                            counts[p] = len(await self.remote_shard_infos(p, None))
                        except ApiError:
                            counts[p] = 1 << 30
                dst = min(led, key=lambda p: (counts.get(p, 0), p))
        if not rep.clustered:
            raise ApiError("failed_precondition", "migration needs replicator: raft")
        leaders = await self.remote_leaders()
        job = await self.migrations.create(org, ns, src, dst, leaders)
        return job


async def run_until_signalled(node: Node) -> None:
    """Serve until SIGTERM/SIGINT, then stop cleanly."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    on_sighup(loop, lambda: node.tls.reload(force=True))  # docs/tls.md: reload the certificates
    await node.start()
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(node.stopping.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    await node.stop()
