"""Task queues and the worker registry (SPEC §4.5, §5.1 "Worker").

A task queue has no record of its own: it exists while it has runs, pending
tasks or subscribers, so each view is computed from shard state (runs, the
pending-task indexes) plus the live subscriptions.

Workers are not stored either. SPEC §5.1 keeps them "in memory by the nodes
that hold the subscriptions, separately per org", so a worker is known from
its subscriptions:

- **Connected workers.** Every node reports the subscriptions of its own ZAP
  connections (``relay.routes`` in raft mode, wherever each one is dispatched
  from) and the ones it dispatches (``dispatcher.subs``; for a worker held by
  a peer, the conn is a ``RemoteConn`` and only this node knows its
  ``inFlight``). A request on any node merges its own report with those of
  every connected peer (the ``workers`` relay message, at most
  ``FANOUT_TIMEOUT`` s; a peer that does not answer in time is left out),
  first by subscription id, then by identity. A connected worker is being
  seen, so its ``lastHeartbeat`` is the time of the request.
- **Departed workers.** When a subscription ends (unsubscribe, connection
  closed, relay link lost) the node that dispatched it keeps a small per-org
  record (:class:`WorkerBook`) for ``WORKER_TTL_MS`` (10 min). Such a worker is
  listed with ``subscriptions: []`` and ``lastHeartbeat`` = when its last
  subscription ended, then dropped; it counts in no queue's ``workers``.
  These records live on the dispatching node, so for a worker relayed to an
  owner the SDK name/version (known only to the holder) are not kept.

``nodeId`` of a subscription is the node the worker is connected to.

Cost: the queue views read every run record of the namespace (O(runs), see
``shard.reads.queue_run_stats``) and every pending-task key; fine for an
operator view, not for a hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hanzo_tasks.cluster.dispatch.relay import RemoteConn
from hanzo_tasks.cluster.service import inputs as I
from hanzo_tasks.cluster.service import render
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.shard.keys import ShardKeys

if TYPE_CHECKING:
    from hanzo_tasks.cluster.service import Service

Json = dict[str, Any]

WORKER_TTL_MS = 10 * 60 * 1000
"""A worker not seen for this long is dropped (SPEC §5.1)."""
MAX_DEPARTED_PER_ORG = 1000
"""Departed-worker records kept per org and node; the oldest go first (memory stays bounded)."""
FANOUT_TIMEOUT = 1.0
"""Seconds a request waits for peers' worker reports; a slower peer is left out of the answer."""
MAX_REPORT = 10_000
"""Subscriptions one node reports per request (keeps a reply far below ``limits.max_frame``)."""
DEFAULT_QUEUE = "default"


# ---- the per-node book -------------------------------------------------------------


@dataclass
class Departed:
    """A worker whose last subscription on this node ended, kept for ``WORKER_TTL_MS``."""

    task_queue: str
    sdk_name: str
    sdk_version: str
    build_id: str
    first_seen: int
    last_seen: int


class WorkerBook:
    """What one node remembers about workers beyond its live subscriptions.

    The dispatcher calls :meth:`ended` whenever it drops a subscription;
    :meth:`report` is this node's part of a worker listing, asked locally or
    by a peer over the relay.
    """

    def __init__(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher
        self.departed: dict[str, dict[tuple[str, str], Departed]] = {}  # org -> (ns, identity) -> record
        # sid -> when a report first saw it, for routes relayed elsewhere: ``_Route`` has no timestamp.
        # Only a fallback: the owner's ``Subscription.created`` is earlier and wins when the owner answers.
        self._first: dict[str, int] = {}

    def now(self) -> int:
        return int(self.dispatcher.service.clock())

    def ended(self, sub: Any) -> None:
        """A subscription was dropped here: remember its worker for ``WORKER_TTL_MS``."""
        now = self.now()
        book = self.departed.setdefault(sub.org, {})
        sdk_name, sdk_version = _sdk(sub.conn)
        rec = book.get((sub.ns, sub.identity))
        first = sub.created or now
        if rec is None:
            book[(sub.ns, sub.identity)] = Departed(sub.task_queue, sdk_name, sdk_version, sub.build_id, first, now)
        else:
            rec.task_queue, rec.last_seen = sub.task_queue, now
            rec.first_seen = min(rec.first_seen, first)
            rec.sdk_name, rec.sdk_version = rec.sdk_name or sdk_name, rec.sdk_version or sdk_version
            rec.build_id = sub.build_id or rec.build_id
        self._prune(sub.org, now)

    def _prune(self, org: str, now: int) -> None:
        book = self.departed.get(org)
        if not book:
            return
        for key in [k for k, r in book.items() if now - r.last_seen >= WORKER_TTL_MS]:
            del book[key]
        if len(book) > MAX_DEPARTED_PER_ORG:
            by_age = sorted(book, key=lambda k: book[k].last_seen)
            for key in by_age[: len(book) - MAX_DEPARTED_PER_ORG]:
                del book[key]
        if not book:
            del self.departed[org]

    def report(self, org: str, ns: str) -> Json:
        """This node's view of the workers of ``(org, ns)``: live subscriptions and departed workers.

        A plain msgpack-able map, the same whether used here or sent to a peer.
        """
        d = self.dispatcher
        now = self.now()
        self_id = d.node.node_id
        subs: dict[str, Json] = {}
        for sub in list(d.subs.values()):
            if sub.org != org or sub.ns != ns or sub.conn.closed:
                continue
            remote = isinstance(sub.conn, RemoteConn)
            sdk_name, sdk_version = ("", "") if remote else _sdk(sub.conn)
            subs[sub.id] = {
                "sid": sub.id, "identity": sub.identity, "tq": sub.task_queue, "kind": sub.kind,
                "max": sub.max_concurrent, "inFlight": len(sub.in_flight),
                "node": sub.conn.peer if remote else self_id,
                "sdk": [sdk_name, sdk_version], "build": sub.build_id, "created": sub.created or now,
            }
        relay = d.relay
        if relay is not None:
            live: set[str] = set()
            for sid, route in list(relay.routes.items()):
                live.add(sid)
                if route.org != org or route.ns != ns or route.conn.closed:
                    continue
                sdk_name, sdk_version = _sdk(route.conn)
                build = route.body.get("build_id")
                entry = subs.get(sid)
                if entry is not None:  # dispatched here: fill in what only the holder knows
                    entry["sdk"] = [entry["sdk"][0] or sdk_name, entry["sdk"][1] or sdk_version]
                    entry["build"] = entry["build"] or (build if names.is_id(build) else "")
                    continue
                try:
                    tq, mc, _types = d.validate_subscription(route.body)
                except ApiError:
                    continue
                subs[sid] = {
                    "sid": sid, "identity": str(route.body.get("identity") or ""), "tq": tq, "kind": route.kind,
                    "max": mc, "inFlight": None,  # the owner dispatching it knows
                    "node": self_id, "sdk": [sdk_name, sdk_version],
                    "build": build if names.is_id(build) else "",
                    "created": self._first.setdefault(sid, now),
                }
            for sid in [s for s in self._first if s not in live]:
                del self._first[sid]
        self._prune(org, now)
        gone = [
            {"identity": ident, "tq": r.task_queue, "sdk": [r.sdk_name, r.sdk_version], "build": r.build_id,
             "first": r.first_seen, "last": r.last_seen}
            for (rns, ident), r in (self.departed.get(org) or {}).items() if rns == ns
        ]
        return {"subs": list(subs.values())[:MAX_REPORT], "gone": gone[:MAX_REPORT]}


def _sdk(conn: Any) -> tuple[str, str]:
    """(sdk name, sdk version) from HELLO on a local ZAP connection; empty when not known."""
    sdk = getattr(getattr(conn, "session", None), "sdk", None)
    if isinstance(sdk, tuple | list) and len(sdk) == 2:
        return str(sdk[0] or ""), str(sdk[1] or "")
    return "", ""


# ---- merging reports into Worker records -------------------------------------------


def _int(v: Any, default: int = 0) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _pair(v: Any) -> tuple[str, str]:
    if isinstance(v, list | tuple) and len(v) == 2:
        return _str(v[0]), _str(v[1])
    return "", ""


@dataclass
class _Worker:
    identity: str
    first: int
    last: int
    tq: str = ""
    tq_at: int = -1
    sdk: tuple[str, str] = ("", "")
    build: str = ""
    live: bool = False
    subs: list[Json] | None = None


def merge(reports: list[Json], ns: str, now: int) -> dict[str, Json]:
    """Worker records (SPEC §5.1) by identity, from the reports of every node that answered.

    A subscription seen by its holder and by the owner dispatching it is one
    subscription (same id): ``inFlight`` comes from the owner, SDK facts from
    the holder, ``firstSeen`` is the earliest either has.
    """
    subs: dict[str, Json] = {}
    for rep in reports:
        for e in rep.get("subs") or ():
            if not isinstance(e, dict) or not isinstance(e.get("sid"), str) or not _str(e.get("identity")):
                continue
            cur = subs.get(e["sid"])
            if cur is None:
                subs[e["sid"]] = dict(e)
                continue
            if not isinstance(cur.get("inFlight"), int):
                cur["inFlight"] = e.get("inFlight")
            cur["created"] = min(_int(cur.get("created"), now), _int(e.get("created"), now))
            a, b = _pair(cur.get("sdk")), _pair(e.get("sdk"))
            cur["sdk"] = [a[0] or b[0], a[1] or b[1]]
            cur["build"] = _str(cur.get("build")) or _str(e.get("build"))
    workers: dict[str, _Worker] = {}
    for e in subs.values():
        created = _int(e.get("created"), now)
        w = workers.get(e["identity"])
        if w is None:
            w = workers[e["identity"]] = _Worker(e["identity"], created, now, live=True, subs=[])
        w.first = min(w.first, created)
        if created > w.tq_at:
            w.tq, w.tq_at = _str(e.get("tq")), created
        sdk = _pair(e.get("sdk"))
        w.sdk = (w.sdk[0] or sdk[0], w.sdk[1] or sdk[1])
        w.build = w.build or _str(e.get("build"))
        assert w.subs is not None
        w.subs.append({
            "taskQueue": _str(e.get("tq")), "kind": "activity" if e.get("kind") == "activity" else "workflow",
            "maxConcurrent": _int(e.get("max")), "inFlight": _int(e.get("inFlight")), "nodeId": _str(e.get("node")),
        })
    for rep in reports:
        for g in rep.get("gone") or ():
            if not isinstance(g, dict) or not _str(g.get("identity")):
                continue
            last, first = _int(g.get("last")), _int(g.get("first"))
            if now - last >= WORKER_TTL_MS:
                continue
            w = workers.get(g["identity"])
            if w is None:
                w = workers[g["identity"]] = _Worker(g["identity"], first, last, subs=[])
            w.first = min(w.first, first)
            if not w.live:
                w.last = max(w.last, last)
                if last > w.tq_at:
                    w.tq, w.tq_at = _str(g.get("tq")), last
            sdk = _pair(g.get("sdk"))
            w.sdk = (w.sdk[0] or sdk[0], w.sdk[1] or sdk[1])
            w.build = w.build or _str(g.get("build"))
    return {ident: render.worker(w.identity, ns, w.tq, w.sdk, w.build, w.first, w.last, w.subs or [])
            for ident, w in workers.items()}


async def cluster_workers(node: Any, org: str, ns: str) -> dict[str, Json]:
    """Every worker of ``(org, ns)`` known to this node and to the peers that answer in time."""
    d = getattr(node, "dispatcher", None)
    if d is None:
        return {}
    reports = [d.book.report(org, ns)]
    if d.relay is not None:
        reports.extend(await d.relay.workers(org, ns, FANOUT_TIMEOUT))
    return merge(reports, ns, d.book.now())


# ---- paging ----------------------------------------------------------------------------


def _page(items: list[tuple[str, Json]], size: int, after: str | None, kind: str, bound: str) -> tuple[list[Json], str]:
    """Items sorted by name after ``after``: (page, nextPageToken); "" exactly when nothing follows."""
    items.sort(key=lambda kv: kv[0].encode("utf-8", "surrogatepass"))
    if after is not None:
        a = after.encode("utf-8", "surrogatepass")
        items = [kv for kv in items if kv[0].encode("utf-8", "surrogatepass") > a]
    page = items[:size]
    more = len(items) > size
    return [v for _, v in page], I.make_token(kind, bound, page[-1][0].encode("utf-8", "surrogatepass") if more else None)


# ---- the routes ------------------------------------------------------------------------


def _queue_keys(q: str) -> frozenset[str]:
    """The stored queue names shown as ``q``: ``default`` also covers the empty name."""
    return frozenset((q, "")) if q == DEFAULT_QUEUE else frozenset((q,))


def _backlog(rows: list[list[int]], now: int) -> tuple[Json, int, int]:
    """SPEC backlog ``{workflowTasks, activityTasks, oldestAge}``, its size and oldest time (0 = empty)."""
    wf = sum(r[0] for r in rows)
    act = sum(r[2] for r in rows)
    oldest = [t for r in rows for n, t in ((r[0], r[1]), (r[2], r[3])) if n]
    first = min(oldest) if oldest else 0
    age = max(0, now - first) if oldest else 0
    return {"workflowTasks": wf, "activityTasks": act, "oldestAge": render.d(age)}, wf + act, first


def _live_on(worker: Json, q: str) -> bool:
    return any(s["taskQueue"] == q for s in worker["subscriptions"])


async def list_task_queues(s: Service, node: Any, org: str, ns: str, size: int, token: str | None) -> Json:
    """GET NS/task-queues: every queue with runs, pending tasks or subscribers, by name.

    O(runs + pending tasks) of the namespace per request (see ``reads.queue_run_stats``).
    """
    await s.prepare(org, ns)
    bound = f"{org}/{ns}"
    after = I.name_cursor(token, "task-queues", bound)
    workers = await cluster_workers(node, org, ns)
    now = s.clock()
    stats = await s.read(org, ns, "queue_run_stats")
    backlog = await s.read(org, ns, "queue_backlog")
    shown: dict[str, Json] = {}

    def entry(name: str) -> Json:
        name = name or DEFAULT_QUEUE
        e = shown.get(name)
        if e is None:
            e = shown[name] = {"name": name, "workflows": 0, "running": 0, "latest": 0, "backlog": [],
                               "workers": set()}
        return e

    for name, (total, running, latest) in stats.items():
        e = entry(name)
        e["workflows"] += total
        e["running"] += running
        e["latest"] = max(e["latest"], latest)
    for name, row in backlog.items():
        entry(name)["backlog"].append(row)
    for w in workers.values():
        for sub in w["subscriptions"]:
            entry(sub["taskQueue"])["workers"].add(w["identity"])
    items: list[tuple[str, Json]] = []
    for name, e in shown.items():
        out: Json = {"name": name, "workflows": e["workflows"], "running": e["running"]}
        if e["latest"] > 0:
            out["latestStart"] = render.t(e["latest"])
        out["backlog"] = _backlog(e["backlog"], now)[0]
        out["workers"] = len(e["workers"])
        items.append((name, out))
    page, nxt = _page(items, size, after, "task-queues", bound)
    return {"taskQueues": page, "nextPageToken": nxt}


async def describe_task_queue(s: Service, org: str, ns: str, q: str, size: int, token: str | None) -> Json:
    """GET NS/task-queues/{q}: its runs (list order, paged) with totals; an unknown queue has zeros."""
    names.check_id(q, "task queue")
    await s.prepare(org, ns)
    bound = f"{org}/{ns}/{q}"
    after = I.read_token(token, "task-queue", bound)
    prefix = ShardKeys(org, ns).list_prefix()
    if after is not None and (not after.startswith(prefix) or len(after) <= len(prefix) + 8):
        raise I.bad("malformed nextPageToken")
    tqs = _queue_keys(q)
    now = s.clock()
    runs, last, total, running = await s.read(org, ns, "queue_runs", tqs, after, size)
    rows = [row for tq in tqs for row in (await s.read(org, ns, "queue_backlog", tq)).values()]
    return {
        "name": q,
        "workflows": [render.run(r, full=False) for r in runs],
        "running": running,
        "total": total,
        "backlog": _backlog(rows, now)[0],
        "nextPageToken": I.make_token("task-queue", bound, last),
    }


async def task_queue_partitions(s: Service, org: str, ns: str, q: str) -> Json:
    """GET NS/task-queues/{q}/partitions: one partition (key 0) with the queue's real backlog."""
    names.check_id(q, "task queue")
    await s.prepare(org, ns)
    now = s.clock()
    rows = [row for tq in _queue_keys(q) for row in (await s.read(org, ns, "queue_backlog", tq)).values()]
    backlog, size, _ = _backlog(rows, now)
    return {"partitions": [{"key": 0, "backlogAge": backlog["oldestAge"], "backlogSize": size}]}


async def list_workers(s: Service, node: Any, org: str, ns: str, q: str | None, size: int, token: str | None) -> Json:
    """GET NS/workers (``q`` None) or NS/task-queues/{q}/workers (workers subscribed to ``q``), by identity."""
    if q is not None:
        names.check_id(q, "task queue")
    await s.prepare(org, ns)
    kind, bound = ("workers", f"{org}/{ns}") if q is None else ("task-queue-workers", f"{org}/{ns}/{q}")
    after = I.name_cursor(token, kind, bound)
    workers = await cluster_workers(node, org, ns)
    items = [(ident, w) for ident, w in workers.items() if q is None or _live_on(w, q)]
    page, nxt = _page(items, size, after, kind, bound)
    return {"workers": page, "nextPageToken": nxt}


async def get_worker(s: Service, node: Any, org: str, ns: str, identity: str) -> Json:
    """GET NS/workers/{identity}: the Worker record, 404 when no node knows it (or it expired)."""
    names.check_id(identity, "worker identity")
    await s.prepare(org, ns)
    w = (await cluster_workers(node, org, ns)).get(identity)
    if w is None:
        raise ApiError("not_found", f"worker {identity} not found")
    return w


__all__ = [
    "WorkerBook", "cluster_workers", "describe_task_queue", "get_worker", "list_task_queues",
    "list_workers", "merge", "task_queue_partitions",
]
