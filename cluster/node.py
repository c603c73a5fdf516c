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
from pathlib import Path
from typing import Any

from aiohttp import web

from cluster.http_api import HttpApi, json_response
from cluster.metrics import Metrics
from cluster.service import Service, wall_ms
from cluster.timers import ScheduleTimers
from protocol.names import storage_org
from replication import LocalReplicator

log = logging.getLogger("tasks.node")


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("hanzo-tasks")
    except Exception:
        return "0.0.0"


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


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
        self.replicator: Any = None
        self.service: Service | None = None
        self.timers: ScheduleTimers | None = None
        self.metrics = Metrics(self.version, self._stores)

    def _stores(self) -> list:
        if self.replicator is None:
            return []
        return [self.replicator.store(p) for p in range(self.replicator.partitions)]

    def org_of(self, request: web.Request) -> str:
        """The caller's org as stored. Auth arrives in a later issue: dev org."""
        return storage_org("")

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
        if cfg.replicator != "local":
            raise RuntimeError("replicator: raft arrives with the Raft issue; use replicator: local")
        self.replicator = LocalReplicator(
            self.data_dir,
            node_id=self.node_id,
            partitions=1,
            map_size=cfg.storage.map_size,
            map_size_max=cfg.storage.map_size_max,
            sync=cfg.durability == "sync",
            reserve_disk=cfg.storage.reserve_disk,
        )
        await self.replicator.start()
        self.service = Service(cfg, self.replicator, node_id=self.node_id, clock=self.clock)
        self.replicator.subscribe(lambda g, i, res: self.metrics.on_apply(res))
        self.timers = ScheduleTimers(self.service, self.metrics)
        await self.timers.start()
        api = HttpApi(self)
        self._runner = web.AppRunner(api.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = split_addr(cfg.http)
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        bound_port = sockets[0].getsockname()[1] if sockets else port
        shown = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        self.http_addr = f"{shown}:{bound_port}"
        self.http_url = f"http://{self.http_addr}"
        if host not in ("127.0.0.1", "localhost", "::1") and not cfg.auth.require_identity:
            log.warning("auth disabled and listening on %s", cfg.http)
        self.ready = True
        log.info("node %s serving http=%s data=%s", self.node_id, self.http_addr, self.data_dir)

    async def stop(self) -> None:
        self.ready = False
        if self._runner is not None:
            await self._runner.shutdown()
            await self._runner.cleanup()
            self._runner = None
        if self.timers is not None:
            await self.timers.stop()
        if self.replicator is not None:
            await self.replicator.stop()
        log.info("node %s stopped", self.node_id)

    # ---- service routes that describe the node -----------------------------

    def readyz_response(self) -> web.Response:
        if self.ready:
            return json_response(200, {"status": "ready", "nodeId": self.node_id}, self.node_id)
        return json_response(
            503, {"status": "not_ready", "nodeId": self.node_id, "reasons": ["starting"]}, self.node_id,
            {"Retry-After": "1"},
        )

    def settings(self) -> dict[str, Any]:
        s = self.cfg.settings
        return {
            "version": self.version,
            "nodeId": self.node_id,
            "zapAddr": None,
            "authRequired": bool(self.cfg.auth.require_identity),
            "namespaceWriteDisabled": s.namespace_write_disabled,
            "archivalEnabled": False,
            "visibilityArchivalEnabled": False,
            "advancedVisibilityEnabled": s.advanced_visibility_enabled,
            "workerHeartbeatsEnabled": s.worker_heartbeats_enabled,
            "codecEndpointsEnabled": s.codec_endpoints_enabled,
            "multiClusterEnabled": s.multi_cluster_enabled,
            "capabilities": {
                "signalAndQueryHeader": True,
                "internalErrorDifferentiation": True,
                "activityFailureIncludeHeartbeat": True,
                "supportsSchedules": True,
                "encodedFailureAttributes": True,
                "upsertMemo": True,
                "sdkMetadata": True,
                "countGroupByExecutionStatus": True,
                "eagerWorkflowStart": False,
            },
        }

    def cluster_info(self, org: str, size: int, token: str | None) -> dict[str, Any]:
        from cluster import inputs as I
        from shard import reads

        store = self.replicator.store(0)
        applied = store.applied_index()
        with store.read() as txn:
            shards = [s for s in reads.shards(txn) if s[0] == org]
        bound = org
        after = I.read_token(token, "cluster", bound)
        keys = [f"{o}\x00{n}" for o, n in shards]
        items = [k for k in keys if after is None or k.encode() > after]
        page, more = items[:size], len(items) > size
        member = {
            "nodeId": self.node_id,
            "httpAddr": self.http_addr,
            "zapAddr": None,
            "peerAddr": None,
            "state": "alive",
            "voter": True,
            "lastSeen": None,
        }
        return {
            "nodeId": self.node_id,
            "version": self.version,
            "replicator": "local",
            "replicationFactor": 1,
            "seed": self.cfg.seed,
            "members": [member],
            "metaLeader": self.node_id,
            "partitionCount": 1,
            "partitions": [
                {
                    "id": 0,
                    "leader": self.node_id,
                    "preferredLeader": self.node_id,
                    "replicas": [self.node_id],
                    "local": True,
                    "appliedIndex": applied,
                    "commitIndex": applied,
                    "term": 1,
                    "shards": len(shards),
                }
            ],
            "namespaces": [
                {"org": k.split("\x00")[0], "namespace": k.split("\x00")[1], "partition": 0,
                 "pinned": False, "fenced": False, "placementEpoch": 0}
                for k in page
            ],
            "nextPageToken": I.make_token("cluster", bound, page[-1].encode() if more else None),
            "stats": {
                "partitionsLocal": 1,
                "partitionsLeading": 1,
                "taskQueuesOwned": 0,
                "proposals": self.replicator.proposals,
                "proposalErrors": self.service.proposal_errors if self.service else 0,
                "forwarded": 0,
                "zapConnections": 0,
                "subscriptions": 0,
                "sseSubscribers": 0,
                "uptimeSeconds": int(time.monotonic() - self.started_at),
            },
        }


async def run_until_signalled(node: Node) -> None:
    """Serve until SIGTERM/SIGINT, then stop cleanly."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    await stop.wait()
    await node.stop()
