"""Dispatch relaying between nodes (SPEC §5.7, ARCHITECTURE "Dispatch").

A worker may connect to any node, but the *owner* of ``(org, ns, taskQueue)``
— the HRW winner among the alive replicas — is the one node that pushes that
queue's tasks. This module makes both true:

- On the node holding the worker's ZAP connection (the *holder*), a
  subscription whose queue is owned elsewhere is relayed to the owner over the
  peer port (channel FORWARD). The owner's dispatcher sees it as an ordinary
  subscription whose connection is a :class:`RemoteConn`; a push to it travels
  back to the holder, which pushes to the worker and returns the push-ack.
- Completions, failures and heartbeats are proposals any node can make; the
  holder also tells its peers (``done`` / ``hb``) so that whichever node holds
  the lease frees the slot or extends the deadline at once.
- Queries asked on any node go to the queue's owner, which knows which worker
  holds the run; the worker's answer comes back through the holder.

Leases stay committed (``wt.start`` / ``act.lease``) before any push, so a stale
view of ownership (two nodes both believing they own a queue during a membership
change, or a holder that falls back to dispatching locally while the owner is
unreachable) costs at most a rejected proposal, never a second delivery.

Everything here runs on the event loop. Frames are msgpack maps authenticated by
the peer mux; unknown or malformed ones are dropped and counted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import msgpack
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.channels import FORWARD  # SPEC §8.7 channel for forwarded requests
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.routing import NoOwner, rank

log = logging.getLogger("tasks.relay")

Json = dict[str, Any]

RESUBSCRIBE_EVERY = 2.0
"""Seconds between re-announcements of relayed subscriptions (heals lost frames and owner restarts)."""
MAX_QUERY_ROUTES = 4096


@dataclass
class _Session:
    client_id: str


@dataclass(eq=False)
class RemoteConn:
    """A worker connection held by another node, as the owner's dispatcher sees it."""

    relay: Relay
    peer: str
    sid: str
    session: _Session
    closed: bool = False

    async def push(self, opcode: int, body: Json, timeout: float) -> int:
        """Push through the holder; the worker's push-ack status, or 0 when none came in time."""
        if self.closed:
            return 0
        return await self.relay._push_remote(self, opcode, body, timeout)


@dataclass(eq=False)
class _Route:
    """A worker subscription this node holds, and where it is dispatched from."""

    conn: Any
    org: str
    ns: str
    kind: str
    body: Json
    where: str  # a node id: this node (local dispatch) or the owner it is relayed to


@dataclass
class RelayStats:
    relayed_out: int = 0
    relayed_in: int = 0
    pushes_relayed: int = 0
    queries_forwarded: int = 0
    bad_frames: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


class Relay:
    """Routes subscriptions, pushes, lease notices and queries between nodes."""

    def __init__(self, node: Any, dispatcher: Any) -> None:
        self.node = node
        self.dispatcher = dispatcher
        self.rep = node.service.replicator
        self.self_id: str = node.node_id
        self.seed: str = node.cfg.seed
        self.push_ack = node.cfg.timeouts.push_ack / 1000.0
        self.routes: dict[str, _Route] = {}
        self.retired: dict[str, Any] = {}  # sid -> conn: unsubscribed, pushes for running tasks still reach it
        self.remote: dict[tuple[str, str], RemoteConn] = {}  # (holder peer, sid) on the owner
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._query_routes: dict[str, str] = {}  # query token -> owner that pushed it
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bg: set[asyncio.Task] = set()
        self.stats = RelayStats()

    # ---- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.rep.on_channel(FORWARD, self._on_frame)
        self.rep.on_peer_change(self._on_peer_change)
        self.node.membership.subscribe(lambda old, new: self._loop_call(self._reconcile))
        self._task = asyncio.create_task(self._keepalive(), name="relay")

    def _loop_call(self, fn: Any) -> None:
        """Run ``fn`` on the event loop (membership events may come from other threads)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn)

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._bg] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(RESUBSCRIBE_EVERY)
            try:
                self._reconcile(announce=True)
            except Exception:
                log.exception("relay reconcile failed")

    # ---- ownership ---------------------------------------------------------------

    def _replicas(self, org: str, ns: str) -> list[str]:
        """The nodes holding the shard's partition: only they can dispatch its tasks."""
        return list(self.rep.replicas(self.node.service.partition(org, ns))) or [self.self_id]

    def owner(self, org: str, ns: str, tq: str) -> str:
        """The node that dispatches ``(org, ns, tq)``: the HRW winner among the alive
        replicas of its partition; this node when it cannot tell."""
        try:
            return self.node.membership.current.owner(org, ns, tq, self.seed, self._replicas(org, ns))
        except NoOwner:
            return self.self_id

    def _where(self, org: str, ns: str, tq: str) -> str:
        """Where to dispatch a subscription from: its owner when reachable, else
        here if this node is a replica, else the next reachable replica (leases
        keep every task at most once whichever node dispatches)."""
        owner = self.owner(org, ns, tq)
        if owner == self.self_id or self.rep.peer_connected(owner):
            return owner
        replicas = self._replicas(org, ns)
        if self.self_id in replicas:
            return self.self_id
        for peer in rank(org, ns, tq, self.seed, replicas):
            if self.rep.peer_connected(peer):
                return peer
        return owner

    # ---- the holder side -----------------------------------------------------------

    def subscribe(self, conn: Any, org: str, ns: str, body: Json, kind: str) -> Json:
        """0x00A0 / 0x00A1 from a worker connected here."""
        body = dict(body)
        tq, _, _ = self.dispatcher.validate_subscription(body)
        if not body.get("identity"):
            body["identity"] = getattr(conn.session, "client_id", "") or ""
        asked = body.get("subscription_id")
        route = self.routes.get(asked) if isinstance(asked, str) else None
        if route is not None and (route.conn is not conn or route.kind != kind):
            route = None
        # The worker's own id when it names a route of this connection; else a new one.
        sid = asked if isinstance(asked, str) and route is not None else secrets.token_hex(12)
        body["subscription_id"] = sid
        where = self._where(org, ns, tq)
        if where == self.self_id:
            res = self.dispatcher.subscribe_local(conn, org, ns, body, kind, sub_id=sid)
        else:
            self._send(where, {"t": "sub", "s": sid, "org": org, "ns": ns, "k": kind, "b": _sub_fields(body)})
            self.stats.relayed_out += 1
            res = {"subscription_id": sid}
        if route is not None and route.where != where:
            self._detach(sid, route)
        self.routes[sid] = _Route(conn, org, ns, kind, body, where)
        return res

    def unsubscribe(self, conn: Any, sid: Any) -> Json:
        route = self.routes.get(sid) if isinstance(sid, str) else None
        if route is None or route.conn is not conn:
            return self.dispatcher.unsubscribe_local(conn, sid)
        del self.routes[sid]
        self._detach(sid, route)
        self.retired[sid] = conn
        return {}

    def connection_closed(self, conn: Any) -> None:
        """The worker's connection closed: its subscriptions end and their running tasks are lost."""
        for sid, route in list(self.routes.items()):
            if route.conn is conn:
                del self.routes[sid]
                if route.where != self.self_id:
                    self._send(route.where, {"t": "unsub", "s": sid, "gone": True})
        for sid, c in list(self.retired.items()):
            if c is conn:
                del self.retired[sid]
                for peer in self._peers():
                    self._send(peer, {"t": "unsub", "s": sid, "gone": True})
        self.dispatcher.connection_closed_local(conn)

    def _detach(self, sid: str, route: _Route) -> None:
        """Stop dispatching ``sid`` from where it was (running tasks keep their leases)."""
        if route.where == self.self_id:
            self.dispatcher.unsubscribe_local(route.conn, sid)
        else:
            self._send(route.where, {"t": "unsub", "s": sid})

    def _reconcile(self, announce: bool = False) -> None:
        """Move each subscription to its queue's current owner; re-announce relayed ones."""
        for sid, route in list(self.routes.items()):
            if route.conn.closed:
                continue  # connection_closed will clean it up
            tq = route.body["task_queue"]
            where = self._where(route.org, route.ns, tq)
            if where != route.where:
                log.info("subscription %s of %s/%s moves from %s to %s", sid, route.ns, tq, route.where, where)
                self._detach(sid, route)
                route.where = where
                if where == self.self_id:
                    self.dispatcher.subscribe_local(route.conn, route.org, route.ns, route.body, route.kind, sub_id=sid)
                    continue
                announce = True
            if where != self.self_id and announce:
                self._send(where, {"t": "sub", "s": sid, "org": route.org, "ns": route.ns, "k": route.kind,
                                   "b": _sub_fields(route.body)})

    def notify_done(self, org: str, ns: str, wid: str, rid: str, nonce: str) -> None:
        """A workflow task completed or failed here: peers holding its lease free the slot."""
        self._broadcast({"t": "done", "key": [org, ns, wid, rid], "n": nonce})

    def notify_heartbeat(self, org: str, ns: str, wid: str, rid: str, nonce: str) -> None:
        """A workflow task heartbeat arrived here: peers holding its lease extend it."""
        self._broadcast({"t": "hb", "key": [org, ns, wid, rid], "n": nonce})

    def forward_answer(self, org: str, body: Json) -> bool:
        """A query answer for a query another node pushed: send it there."""
        token = body.get("query_token")
        peer = self._query_routes.pop(token, None) if isinstance(token, str) else None
        if peer is None:
            return False
        return self._send(peer, {"t": "qans", "org": org, "b": body})

    async def query(self, org: str, ns: str, run: Json, qtype: str, args: Any, timeout_s: float) -> Any:
        """An HTTP query: answered by the owner of the run's queue (it knows the holder)."""
        owner = self.owner(org, ns, run["taskQueue"])
        if owner == self.self_id or not self.rep.peer_connected(owner):
            return await self.dispatcher.query_local(org, ns, run, qtype, args, timeout_s)
        slim = {k: run[k] for k in ("workflowId", "runId", "type", "taskQueue")}
        self.stats.queries_forwarded += 1
        try:
            reply = await self._call(owner, {"t": "query", "org": org, "ns": ns, "run": slim, "q": qtype,
                                             "a": args, "to": timeout_s}, timeout_s + 2.0)
        except TimeoutError:
            raise ApiError("timeout", f"no answer to the query within {timeout_s:g}s") from None
        if "err" in reply:
            code, message = reply["err"]
            if code == "no_workers":  # maybe a worker dispatched here while the owner was unreachable
                try:
                    return await self.dispatcher.query_local(org, ns, run, qtype, args, timeout_s)
                except ApiError:
                    pass
            raise ApiError(code, message, retry_after=1 if code in ("no_workers", "unavailable") else None)
        return reply.get("ok")

    async def workers(self, org: str, ns: str, timeout: float) -> list[Json]:
        """The worker reports (``WorkerBook.report``) of every connected peer for ``(org, ns)``.

        Asked of all peers at once; one that does not answer within ``timeout``
        (or is not connected) is left out, so a listing never waits on a dead node.
        """

        async def ask(peer: str) -> Json | None:
            try:
                reply = await self._call(peer, {"t": "workers", "org": org, "ns": ns}, timeout)
            except TimeoutError:
                return None
            report = reply.get("w")
            return report if isinstance(report, dict) else None

        peers = [p for p in self._peers() if self.rep.peer_connected(p)]
        answers = await asyncio.gather(*(ask(p) for p in peers))
        return [a for a in answers if a is not None]

    # ---- the owner side ----------------------------------------------------------

    async def _push_remote(self, rc: RemoteConn, opcode: int, body: Json, timeout: float) -> int:
        self.stats.pushes_relayed += 1
        try:
            reply = await self._call(rc.peer, {"t": "push", "s": rc.sid, "o": opcode, "b": body, "to": timeout},
                                     timeout + 1.0)
        except TimeoutError:
            return 0
        if reply.get("gone"):
            self._drop_remote(rc, lost=True)
        status = reply.get("st")
        return status if isinstance(status, int) else 0

    def _drop_remote(self, rc: RemoteConn, lost: bool) -> None:
        if self.remote.get((rc.peer, rc.sid)) is rc:
            del self.remote[(rc.peer, rc.sid)]
        self.dispatcher.unsubscribe_local(rc, rc.sid)
        if lost:
            rc.closed = True
            self.dispatcher.connection_closed_local(rc)

    def _on_peer_change(self, peer: str, up: bool) -> None:
        if up:
            self._loop_call(lambda: self._reconcile(announce=True))
            return
        for (holder, _), rc in list(self.remote.items()):
            if holder == peer:
                self._drop_remote(rc, lost=True)
        self._loop_call(self._reconcile)

    # ---- frames ---------------------------------------------------------------------

    def _peers(self) -> list[str]:
        return [p for p in self.node.membership.current.members if p != self.self_id]

    def _send(self, peer: str, msg: Json) -> bool:
        return self.rep.send_peer(peer, FORWARD, msgpack.packb(msg, use_bin_type=True))

    def _broadcast(self, msg: Json) -> None:
        data = msgpack.packb(msg, use_bin_type=True)
        for peer in self._peers():
            self.rep.send_peer(peer, FORWARD, data)

    async def _call(self, peer: str, msg: Json, timeout: float) -> Json:
        cid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        msg["c"] = cid
        try:
            if not self._send(peer, msg):
                raise TimeoutError
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(cid, None)

    def _reply(self, peer: str, cid: Any, msg: Json) -> None:
        msg["t"] = "reply"
        msg["c"] = cid
        self._send(peer, msg)

    def _on_frame(self, peer: str, data: bytes) -> None:
        try:
            msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
            if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
                raise ValueError("not a relay message")
            handler = _HANDLERS.get(msg["t"])
            if handler is None:
                raise ValueError(f"unknown relay message {msg['t']!r}")
            self.stats.by_type[msg["t"]] = self.stats.by_type.get(msg["t"], 0) + 1
            handler(self, peer, msg)
        except Exception as e:  # a bad frame from an authenticated peer: drop it, keep the link
            self.stats.bad_frames += 1
            log.warning("dropped a relay frame from %s: %s", peer, e)

    def _h_reply(self, peer: str, msg: Json) -> None:
        cid = msg.get("c")
        if cid is None:  # no call id: no call waits for it
            return
        fut = self._pending.get(cid)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _h_sub(self, peer: str, msg: Json) -> None:
        sid, org, ns, kind, body = msg["s"], msg["org"], msg["ns"], msg["k"], msg["b"]
        if not (isinstance(sid, str) and isinstance(body, dict) and kind in ("workflow", "activity")):
            raise ValueError("bad sub")
        names.check_id(ns, "namespace")
        rc = self.remote.get((peer, sid))
        if rc is None:
            rc = RemoteConn(self, peer, sid, _Session(str(body.get("identity") or peer)))
            self.remote[(peer, sid)] = rc
            self.stats.relayed_in += 1
        self.dispatcher.subscribe_local(rc, str(org), ns, body, kind, sub_id=sid)

    def _h_unsub(self, peer: str, msg: Json) -> None:
        sid = msg.get("s")
        if sid is None:  # no subscription id: nothing of it is held here
            return
        rc = self.remote.get((peer, sid))
        if rc is not None:
            self._drop_remote(rc, lost=bool(msg.get("gone")))

    def _h_push(self, peer: str, msg: Json) -> None:
        sid = msg.get("s")
        conn = None  # no subscription id: no connection to push to
        if sid is not None:
            route = self.routes.get(sid)
            conn = route.conn if route is not None else self.retired.get(sid)
        if conn is None or conn.closed:
            self._reply(peer, msg.get("c"), {"st": 0, "gone": True})
            return
        body, opcode = msg["b"], int(msg["o"])
        token = body.get("query_token") if isinstance(body, dict) else None
        if isinstance(token, str):
            self._query_routes[token] = peer
            while len(self._query_routes) > MAX_QUERY_ROUTES:
                self._query_routes.pop(next(iter(self._query_routes)))
        timeout = float(msg.get("to") or self.push_ack)

        async def push() -> None:
            status = await conn.push(opcode, body, timeout)
            self._reply(peer, msg.get("c"), {"st": status})

        self._spawn(push())

    def _h_done(self, peer: str, msg: Json) -> None:
        org, ns, wid, rid = (str(x) for x in msg["key"])
        self.dispatcher.remote_done((org, ns, wid, rid), str(msg.get("n")))

    def _h_hb(self, peer: str, msg: Json) -> None:
        org, ns, wid, rid = (str(x) for x in msg["key"])
        self.dispatcher.remote_heartbeat((org, ns, wid, rid), str(msg.get("n")))

    def _h_qans(self, peer: str, msg: Json) -> None:
        try:
            self.dispatcher.answer_query_local(str(msg["org"]), msg["b"])
        except ApiError:
            pass  # the query timed out meanwhile

    def _h_query(self, peer: str, msg: Json) -> None:
        run = msg["run"]
        if not isinstance(run, dict):
            raise ValueError("bad query")

        async def ask() -> None:
            try:
                result = await self.dispatcher.query_local(str(msg["org"]), str(msg["ns"]), run, str(msg["q"]),
                                                           msg.get("a"), float(msg["to"]))
                self._reply(peer, msg.get("c"), {"ok": result})
            except ApiError as e:
                self._reply(peer, msg.get("c"), {"err": [e.code, e.message]})

        self._spawn(ask())

    def _h_workers(self, peer: str, msg: Json) -> None:
        """A peer lists workers: answer with this node's report for the org and namespace it names."""
        org, ns = msg["org"], msg["ns"]
        if not isinstance(org, str):
            raise ValueError("bad workers request")
        names.check_namespace(ns)
        self._reply(peer, msg.get("c"), {"w": self.dispatcher.book.report(org, ns)})


def _sub_fields(body: Json) -> Json:
    """What the owner needs to dispatch a relayed subscription."""
    keep = ("task_queue", "max_concurrent", "types", "identity", "subscription_id", "build_id")
    return {k: body[k] for k in keep if k in body}


_HANDLERS = {
    "reply": Relay._h_reply,
    "sub": Relay._h_sub,
    "unsub": Relay._h_unsub,
    "push": Relay._h_push,
    "done": Relay._h_done,
    "hb": Relay._h_hb,
    "qans": Relay._h_qans,
    "query": Relay._h_query,
    "workers": Relay._h_workers,
}
