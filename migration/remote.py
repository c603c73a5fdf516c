"""What the coordinator reads from a partition, on whichever node holds it.

The coordinator is the meta leader, which need not replicate the source or
the destination partition (``replication_factor`` below the cluster size).
``PartitionReads`` gives it the same few reads either way: from this node's
replica when it holds the partition, else from a replica's, over the peer
port. Reads that must reflect everything committed (the destination's move
state, the views compared after the fence) take a barrier on the node that
serves them, since a barrier only speaks for the replica that applied it.

A snapshot is one LMDB read transaction held by one node for the whole copy:
a remote copy opens it there (``snap.open``) and pulls chunks (``snap.next``)
until the end; ``snap.close`` (or the job ending) releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from hanzo_tasks.replication import NodeReplicator
from hanzo_tasks.replication.rpc import PeerUnavailable, RemoteError
from hanzo_tasks.shard import encode, keys, moving

CHUNK_BYTES = 512 * 1024
SNAPSHOT_QUEUE = 8
CALL_TIMEOUT = 30.0


SNAPSHOT_HEADROOM = 256 << 20
"""Map room a snapshot makes before its copy, beyond four times what is used (bytes)."""


class MigrationError(Exception):
    """A job cannot go on; it is aborted (before the flip) with this message."""


class SnapshotYielded(MigrationError):
    """The snapshot's read view gave way to a growth of the source's LMDB map.

    LMDB grows a map only while no read view is open, and a paced copy holds
    its view for seconds; so the copy steps aside and the coordinator starts
    it again from a fresh view (the map doubles, so this soon stops recurring).
    """

    code = "snapshot_yielded"


class _Stopped(Exception):
    """The snapshot reader was told to stop (the copy ended or failed)."""


def shard_items(txn: Any, org: str, ns: str) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of the shard ``(org, ns)`` in key order."""
    prefix = keys.shard_prefix(org, ns)
    cur = txn.cursor()
    more = cur.set_range(prefix)
    while more:
        k = cur.key()
        if not k.startswith(prefix):
            return
        yield k, cur.value()
        more = cur.next()


def hash_range(txn: Any, org: str, ns: str) -> str:
    h = hashlib.sha256()
    for k, v in shard_items(txn, org, ns):
        h.update(len(k).to_bytes(4, "big"))
        h.update(k)
        h.update(len(v).to_bytes(4, "big"))
        h.update(v)
    return h.hexdigest()


class SnapshotReader:
    """A reader thread over one read view of a partition: ("start", seq, index),
    then chunks of [key, value] pairs, then None (or an exception)."""

    def __init__(self, store: Any, org: str, ns: str, jid: str) -> None:
        self.store, self.org, self.ns, self.jid = store, org, ns, jid
        self.handoff: queue.Queue[Any] = queue.Queue(maxsize=SNAPSHOT_QUEUE)
        self.stop_event = threading.Event()
        threading.Thread(target=self._produce, name=f"snapshot-{jid}", daemon=True).start()

    def _put(self, item: Any) -> None:
        while True:
            if self.stop_event.is_set():
                raise _Stopped
            try:
                self.handoff.put(item, timeout=0.05)
                return
            except queue.Full:
                if self.store.resize_pending():
                    raise SnapshotYielded("the source partition's map is growing") from None

    def _make_room(self) -> None:
        """Grow the map before the long read view opens. While it is open LMDB
        cannot reuse freed pages, so busy writers fill the map, and a growth
        must wait for the view to close (the copy gives way and starts again).
        Growing costs address space, not disk, so room is made up front."""
        store = self.store
        want = 4 * store.used_bytes() + SNAPSHOT_HEADROOM
        with contextlib.suppress(Exception):  # at the maximum, or a full disk: copy as it is
            while store.map_size < want and not store.at_max():
                store.grow()

    def _produce(self) -> None:
        org, ns, jid = self.org, self.ns, self.jid
        try:
            self._make_room()
            with self.store.read() as txn:
                st = moving.read_state(txn, org, ns)
                if st is None or st.get("role") != "src" or st.get("job") != jid:
                    raise MigrationError("the source is not recording this job's tail")
                self._put(("start", st["seq"], keys.get_applied(txn)))
                pairs: list[list[bytes]] = []
                size = 0
                for k, v in shard_items(txn, org, ns):
                    pairs.append([k, v])
                    size += len(k) + len(v)
                    if size >= CHUNK_BYTES:
                        self._put(pairs)
                        pairs, size = [], 0
                self._put(pairs)  # the last one (possibly empty: there is always one chunk)
            self._put(None)
        except _Stopped:
            return
        except Exception as e:  # noqa: BLE001 - handed to the coordinator
            while not self.stop_event.is_set():  # make room for the error if need be
                try:
                    self.handoff.put_nowait(e)
                    return
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self.handoff.get_nowait()

    async def take(self) -> Any:
        item = await asyncio.to_thread(self.handoff.get)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.stop_event.set()
        while True:  # unblock the reader if it is waiting to hand over
            try:
                self.handoff.get_nowait()
            except queue.Empty:
                break


class _RemoteSnapshot:
    def __init__(self, reads: PartitionReads, peer: str, token: int) -> None:
        self.reads, self.peer, self.token = reads, peer, token
        self.buffer: list[Any] = []

    async def take(self) -> Any:
        if not self.buffer:
            items = await self.reads._call(self.peer, "snap.next", {"t": self.token})
            if not items:
                raise MigrationError("the source replica ended the snapshot")
            self.buffer.extend(items)
        item = self.buffer.pop(0)
        if isinstance(item, dict) and "error" in item:
            if item.get("code") == SnapshotYielded.code:
                raise SnapshotYielded(item["error"])
            raise MigrationError(item["error"])
        return tuple(item) if isinstance(item, list) and item and item[0] == "start" else item

    def close(self) -> None:
        task = asyncio.ensure_future(self.reads._call(self.peer, "snap.close", {"t": self.token}))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)


class PartitionReads:
    def __init__(self, rep: NodeReplicator, propose: Callable[[int, str, str, str], Any]) -> None:
        self.rep = rep
        self._propose = propose  # (group, org, ns, op) -> result, retried (the coordinator's _shard)
        self._ids = itertools.count(1)
        self._snapshots: dict[int, SnapshotReader] = {}
        self._hashes: dict[int, asyncio.Future] = {}
        if rep.clustered:  # a single node has no peer to read from
            rpc = rep.rpc
            rpc.register("mig.states", self._h_states)
            rpc.register("mig.tail", self._h_tail)
            rpc.register("mig.state", self._h_state)
            rpc.register("snap.open", self._h_snap_open)
            rpc.register("snap.next", self._h_snap_next)
            rpc.register("snap.close", self._h_snap_close)
            rpc.register("hash.open", self._h_hash_open)
            rpc.register("hash.get", self._h_hash_get)

    def local(self, group: int) -> bool:
        return self.rep.is_local(group)

    # ---- the asking side -------------------------------------------------------

    async def _call(self, peer: str, method: str, args: Any) -> Any:
        try:
            answer = await self.rep.rpc.call(peer, method, args, CALL_TIMEOUT)
        except (PeerUnavailable, TimeoutError, RemoteError) as e:
            raise MigrationError(f"{method} on {peer}: {type(e).__name__}: {e}") from None
        return answer

    async def _ask(self, group: int, method: str, args: Any) -> tuple[str, Any]:
        last = "no replica reachable"
        for peer in self.rep.peers_for(group):
            try:
                return peer, await self.rep.rpc.call(peer, method, {"g": group, **args}, CALL_TIMEOUT)
            except PeerUnavailable:
                continue
            except (TimeoutError, RemoteError) as e:
                last = f"{type(e).__name__}: {e}"
        raise MigrationError(f"{method} on partition {group}: {last}")

    async def states(self, group: int) -> list[tuple[str, str, dict[str, Any]]]:
        if self.local(group):
            with self.rep.store(group).read() as txn:
                return moving.all_states(txn)
        _, out = await self._ask(group, "mig.states", {})
        return [tuple(x) for x in out]

    async def tail(self, group: int, org: str, ns: str, after: int, limit: int) -> list[tuple[int, int, bytes]]:
        if self.local(group):
            with self.rep.store(group).read() as txn:
                return moving.read_tail(txn, org, ns, after, limit)
        _, out = await self._ask(group, "mig.tail", {"org": org, "ns": ns, "after": after, "limit": limit})
        return [tuple(x) for x in out]

    async def state(self, group: int, org: str, ns: str) -> dict[str, Any] | None:
        """The move state after a barrier (on the node that reads it)."""
        if self.local(group):
            await self._propose(group, org, ns, "sys.barrier")
            with self.rep.store(group).read() as txn:
                return moving.read_state(txn, org, ns)
        _, out = await self._ask(group, "mig.state", {"org": org, "ns": ns})
        return out

    async def snapshot(self, group: int, org: str, ns: str, jid: str) -> Any:
        """An object with ``await take()`` and ``close()`` (see SnapshotReader)."""
        if self.local(group):
            return SnapshotReader(self.rep.store(group), org, ns, jid)
        peer, token = await self._ask(group, "snap.open", {"org": org, "ns": ns, "job": jid})
        return _RemoteSnapshot(self, peer, token)

    async def open_hash(self, group: int, org: str, ns: str) -> Callable[[], Any]:
        """Open a read view (after a barrier) and hash the range in the background;
        returns an awaitable-maker for the digest. Returns once the view is open."""
        if self.local(group):
            await self._propose(group, org, ns, "sys.barrier")
            fut = await self._start_hash(group, org, ns)
            return lambda: fut
        peer, token = await self._ask(group, "hash.open", {"org": org, "ns": ns})
        return lambda: self._call(peer, "hash.get", {"t": token})

    async def _start_hash(self, group: int, org: str, ns: str) -> asyncio.Future:
        store = self.rep.store(group)
        opened = threading.Event()

        def run() -> str:
            with store.read() as txn:
                opened.set()
                return hash_range(txn, org, ns)

        fut = asyncio.ensure_future(asyncio.to_thread(run))
        while not opened.is_set() and not fut.done():
            await asyncio.sleep(0.001)
        if fut.done() and fut.exception() is not None:
            raise MigrationError(f"cannot read partition {group}: {fut.exception()}")
        return fut

    # ---- the serving side ------------------------------------------------------

    def _check(self, group: int) -> None:
        if not self.rep.is_local(group):
            raise MigrationError(f"{self.rep.node_id} holds no replica of partition {group}")

    async def _h_states(self, peer: str, a: Any) -> Any:
        self._check(a["g"])
        with self.rep.store(a["g"]).read() as txn:
            return [list(x) for x in moving.all_states(txn)]

    async def _h_tail(self, peer: str, a: Any) -> Any:
        self._check(a["g"])
        with self.rep.store(a["g"]).read() as txn:
            return [list(x) for x in moving.read_tail(txn, a["org"], a["ns"], int(a["after"]), int(a["limit"]))]

    async def _barrier(self, group: int, org: str, ns: str) -> None:
        res = await self.rep.propose(group, encode({"v": 1, "op": "sys.barrier", "org": org, "ns": ns, "now": 0}))
        if not res.get("ok"):
            raise MigrationError(f"barrier on partition {group}: {res.get('message', res.get('code'))}")

    async def _h_state(self, peer: str, a: Any) -> Any:
        self._check(a["g"])
        await self._barrier(a["g"], a["org"], a["ns"])
        with self.rep.store(a["g"]).read() as txn:
            return moving.read_state(txn, a["org"], a["ns"])

    async def _h_snap_open(self, peer: str, a: Any) -> Any:
        self._check(a["g"])
        await self._barrier(a["g"], a["org"], a["ns"])  # this replica has the job's mig.begin
        token = next(self._ids)
        self._snapshots[token] = SnapshotReader(self.rep.store(a["g"]), a["org"], a["ns"], a["job"])
        asyncio.get_running_loop().call_later(3600, self._close_snapshot, token)  # a lost coordinator
        return token

    async def _h_snap_next(self, peer: str, a: Any) -> Any:
        reader = self._snapshots.get(a["t"])
        if reader is None:
            return [{"error": "no such snapshot (closed or expired)"}]
        out: list[Any] = []
        size = 0
        while size < CHUNK_BYTES and len(out) < 4:
            try:
                item = await reader.take()
            except Exception as e:  # noqa: BLE001 - sent to the coordinator
                out.append({"error": str(e) or type(e).__name__, "code": getattr(e, "code", None)})
                self._close_snapshot(a["t"])
                break
            out.append(list(item) if isinstance(item, tuple) else item)
            if item is None:
                self._close_snapshot(a["t"])
                break
            if isinstance(item, list):
                size += sum(len(k) + len(v) for k, v in item)
        return out

    def _close_snapshot(self, token: int) -> None:
        reader = self._snapshots.pop(token, None)
        if reader is not None:
            reader.close()

    async def _h_snap_close(self, peer: str, a: Any) -> Any:
        self._close_snapshot(a["t"])
        return True

    async def _h_hash_open(self, peer: str, a: Any) -> Any:
        self._check(a["g"])
        await self._barrier(a["g"], a["org"], a["ns"])
        token = next(self._ids)
        self._hashes[token] = await self._start_hash(a["g"], a["org"], a["ns"])
        asyncio.get_running_loop().call_later(600, self._hashes.pop, token, None)
        return token

    async def _h_hash_get(self, peer: str, a: Any) -> Any:
        # Kept until it expires (not popped): a coordinator whose call timed out
        # (a big range hashes for long) asks again for the same digest.
        fut = self._hashes.get(a["t"])
        if fut is None:
            raise MigrationError("no such hash (expired)")
        return await asyncio.shield(fut)
