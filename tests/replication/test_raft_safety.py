"""Raft safety defects of the snapshot and replication paths (issue 23, defects 1-4 and 9).

Each test drives the real pieces: RaftGroup (pysyncobj with our overrides),
DurableJournal, LmdbSnapshotter, LMDB and, where the network matters, real
RaftReplicators over loopback sockets. Faults are placed, not waited for: a
kill at a named step (``replication.raft.faults``), a chosen frame dropped.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hanzo_tasks.protocol.channels import RAFT
from hanzo_tasks.replication.raft import faults
from hanzo_tasks.replication.raft.group import REGULAR, GroupTransport, RaftGroup
from hanzo_tasks.replication.raft.journal import DurableJournal
from hanzo_tasks.replication.raft.replicator import RaftReplicator
from hanzo_tasks.replication.raft.snapshots import LmdbSnapshotter
from hanzo_tasks.shard import PartitionStore, StateMachine, reads
from pysyncobj import SyncObjConf
from pysyncobj.node import Node

from tests.replication.test_no_pickle import _free_ports, cmd

REPO = Path(__file__).resolve().parents[2]


def _start(i: int, wid: str | None = None, pad: str = "") -> bytes:
    return cmd(i, "wf.start", start={"type": "T", "workflowId": wid or f"w{i}", "input": pad})


def _run_exists(store: PartitionStore, wid: str) -> bool:
    with store.read() as txn:
        return reads.run(txn, "_", "default", wid, None) is not None  # type: ignore[arg-type]


async def _leader_propose(reps: dict[str, RaftReplicator], data: bytes, tries: int = 200) -> dict[str, Any]:
    for _ in range(tries):
        for r in reps.values():
            if r._running and r.is_leader(0):
                res = await r.propose(0, data)
                if res.get("code") != "unavailable":
                    return res
        await asyncio.sleep(0.05)
    raise AssertionError("no leader")


# ---- defect 1: a crash between an image going into place and the log prefix being dropped ----

_CHILD = textwrap.dedent("""
    import asyncio, json, sys
    from pathlib import Path
    from hanzo_tasks.replication.raft.replicator import RaftReplicator
    from tests.replication.test_no_pickle import cmd

    async def main(root, addr):
        rep = RaftReplicator(Path(root), node_id="a", listen=addr, peers={"a": addr}, secret=b"s" * 32,
                             partitions=1, sync=True, election_timeout_ms=200, heartbeat_interval_ms=40,
                             snapshot_every=1_000_000)
        await rep.start()
        for _ in range(200):
            if rep.is_leader(0):
                break
            await asyncio.sleep(0.05)
        assert (await rep.propose(0, cmd(0, "ns.register")))["ok"]
        for i in range(1, 21):
            assert (await rep.propose(0, cmd(i, "wf.start", start={"type": "T", "workflowId": f"w{i}"})))["ok"]
        rep._inbox.put(("call", rep._groups[0].forceLogCompaction))
        await asyncio.sleep(0.1)  # the image is being written (the writer sleeps at its fault point)
        for i in range(21, 41):   # acknowledged after the image's index, before the crash
            assert (await rep.propose(0, cmd(i, "wf.start", start={"type": "T", "workflowId": f"w{i}"})))["ok"]
        print(json.dumps({"acked": 40}), flush=True)
        await asyncio.sleep(30)   # killed at snapshot.after_replace before this ends

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def test_a_crash_after_the_image_is_in_place_keeps_the_acknowledged_log(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{_free_ports(1)[0]}"
    env = dict(os.environ, PYTHONPATH=str(REPO),
               HANZO_TASKS_FAULTS="snapshot.write:sleep=1.0,snapshot.after_replace")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), addr], cwd=REPO, env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]  # killed at the named step
    assert json.loads(proc.stdout.decode().strip().splitlines()[-1]) == {"acked": 40}

    async def restart() -> tuple[int, bool, bool]:
        rep = RaftReplicator(tmp_path, node_id="a", listen=addr, peers={"a": addr}, secret=b"s" * 32,
                             partitions=1, sync=True, election_timeout_ms=200, heartbeat_interval_ms=40)
        await rep.start()
        try:
            last = rep._groups[0].last_log_index()
            # A write after the restart must really apply: with the log cleared,
            # it took an index the store had applied already and was skipped.
            res = await _leader_propose({"a": rep}, _start(99, "after-restart"))
            assert res["ok"], res
            return last, _run_exists(rep.store(0), "w40"), _run_exists(rep.store(0), "after-restart")
        finally:
            await rep.stop()

    last, w40, after = asyncio.run(restart())
    assert last >= 42, f"the log lost acknowledged entries: it ends at {last}"  # no-op, register, 40 starts
    assert w40 and after


# ---- defect 1b: an image taken before an install must not replace the installed one ----

def test_an_own_image_older_than_an_installed_one_is_discarded(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p", sync=False)
    snap = LmdbSnapshotter(store, tmp_path / "p.snapshot")
    faults.configure("snapshot.write:sleep=0.3")
    try:
        snap.serialize((None, (REGULAR, 10, 1), (REGULAR, 9, 1), {Node("a")}), 9)
        snap.installed_index = 50  # the leader's image arrived while ours was written
        while snap.checkSerializing()[0] == 1:  # SERIALIZING
            time.sleep(0.02)
        assert not snap.path.exists(), "the older image was put back over the installed one"
        assert snap.taken == 0
    finally:
        faults.configure("")
        store.close()


# ---- defect 2: an install that misses chunks ----

def _image(tmp: Path, size: int) -> tuple[PartitionStore, LmdbSnapshotter]:
    store = PartitionStore(tmp / "leader", sync=False)
    with store.write() as txn:
        for i in range(size // 1000):
            txn.put(b"s" + i.to_bytes(4, "big"), os.urandom(900))
    snap = LmdbSnapshotter(store, tmp / "leader.snapshot", chunk=64 << 10, window=256 << 10, resend_after=0.05)
    snap.serialize((None, (REGULAR, 7, 1), (REGULAR, 6, 1), {Node("a"), Node("b")}), 6)
    while snap.checkSerializing()[0] == 1:
        time.sleep(0.01)
    return store, snap


def test_an_install_with_dropped_chunks_is_resent_never_patched(tmp_path: Path) -> None:
    store, leader = _image(tmp_path, 1_500_000)
    fstore = PartitionStore(tmp_path / "follower", sync=False)
    follower = LmdbSnapshotter(fstore, tmp_path / "follower.snapshot")
    node = Node("b")
    sent = dropped = 0
    complete = False
    deadline = time.monotonic() + 20
    while not complete and time.monotonic() < deadline:
        chunk = leader.getTransmissionData(node)
        if chunk is None:
            time.sleep(0.01)
            continue
        sent += 1
        if sent % 3 == 0:
            dropped += 1  # lost under back-pressure: never reaches the follower
            continue
        got = follower.receive(chunk)
        leader.on_ack("b", got.index, got.offset, got.gap)
        complete = got.complete
    assert complete and dropped > 3
    assert follower.path.read_bytes() == leader.path.read_bytes()
    assert follower.chunks_refused > 0 and leader.resends > 0
    store.close()
    fstore.close()


def test_a_corrupted_chunk_is_refused(tmp_path: Path) -> None:
    store, leader = _image(tmp_path, 200_000)
    fstore = PartitionStore(tmp_path / "follower", sync=False)
    follower = LmdbSnapshotter(fstore, tmp_path / "follower.snapshot")
    chunk = leader.getTransmissionData(Node("b"))
    assert chunk is not None
    bad = list(chunk)
    bad[0] = b"\x00" + bytes(chunk[0][1:])
    got = follower.receive(bad)
    assert got.gap and not got.complete and got.offset == 0
    assert not follower.path.exists()
    store.close()
    fstore.close()


def _trio_factory(tmp: Path, **opts: Any) -> Any:
    """make(nid) for three single-partition RaftReplicators a, b, c on loopback."""
    secret = secrets.token_bytes(32)
    ids = ["a", "b", "c"]
    addrs = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, _free_ports(3), strict=True)}

    def make(nid: str) -> RaftReplicator:
        return RaftReplicator(tmp / nid, node_id=nid, listen=addrs[nid], peers=addrs, secret=secret,
                              partitions=1, sync=False, election_timeout_ms=300, heartbeat_interval_ms=50,
                              **opts)

    return make


async def _install_under_drops(tmp: Path) -> dict[str, str]:
    make = _trio_factory(tmp, snapshot_every=30)

    reps = {nid: make(nid) for nid in ("a", "b")}
    for r in reps.values():
        await r.start()
    try:
        assert (await _leader_propose(reps, cmd(0, "ns.register")))["ok"]
        pad = "x" * 20_000
        for i in range(1, 90):  # ~1.8 MB: an image of several chunks, compacted past "c"
            assert (await _leader_propose(reps, _start(i, pad=pad)))["ok"]
        # Every third snapshot chunk to "c" is lost, as under back-pressure.
        for r in reps.values():
            assert r.mux is not None
            real = r.mux.send
            count = [0]

            def lossy(peer: str, channel: int, group: int, body: bytes, _real: Any = real,
                      _count: list[int] = count) -> bool:
                if peer == "c" and channel == RAFT and b"serialized" in body[:64] and len(body) > 10_000:
                    _count[0] += 1
                    if _count[0] % 3 == 0:
                        return False
                return _real(peer, channel, group, body)

            r.mux.send = lossy  # type: ignore[method-assign]
        reps["c"] = make("c")
        await reps["c"].start()
        for _ in range(400):
            if all(r.store(0).applied_index() >= reps["a"].store(0).applied_index() for r in reps.values()):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert reps["c"]._snapshotters[0].installed >= 1
        return {nid: r.store(0).content_hash(b"s") for nid, r in reps.items()}
    finally:
        for r in reps.values():
            await r.stop()


def test_a_follower_installs_a_whole_image_through_a_lossy_link(tmp_path: Path) -> None:
    hashes = asyncio.run(_install_under_drops(tmp_path))
    assert len(set(hashes.values())) == 1, hashes


# ---- defect 3: a snapshot-phase message must not commit a dead term's suffix ----

class _Wire:
    """The messages a group sends, kept for the test to read."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def factory(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> GroupTransport:  # noqa: N803
        def send(peer: str, body: bytes) -> bool:
            from hanzo_tasks.replication.raft import codec

            self.sent.append((peer, codec.decode(body)))
            return True

        return GroupTransport(syncObj, selfNode, otherNodes, send=send, flush=lambda: None)


def _lone_group(tmp: Path, peers: list[str]) -> tuple[RaftGroup, PartitionStore, _Wire]:
    store = PartitionStore(tmp / "p", sync=False)
    journal = DurableJournal(str(tmp / "p.journal"), sync=False)
    snap = LmdbSnapshotter(store, tmp / "p.snapshot")
    conf = SyncObjConf(autoTick=False, raftMinTimeout=60.0, raftMaxTimeout=120.0, connectionTimeout=120.0,
                       appendEntriesUseBatch=True,
                       appendEntriesBatchSizeBytes=1 << 20, dynamicMembershipChange=True, useFork=False,
                       journalFile=journal, fullDumpFile=str(snap.path), serializer=print, deserializer=print,
                       logCompactionMinEntries=1_000_000, logCompactionMinTime=1e9)
    wire = _Wire()
    grp = RaftGroup(0, "f", peers, conf, StateMachine(store), wire.factory, lambda *a: None, snap)
    for p in peers:
        grp.transport.node_up(grp.nodes[p])
    return grp, store, wire


def test_a_snapshot_phase_message_does_not_commit_a_dead_terms_suffix(tmp_path: Path) -> None:
    grp, store, _ = _lone_group(tmp_path, ["l1", "l2"])
    l1, l2 = grp.nodes["l1"], grp.nodes["l2"]
    # Term 1: leader l1 replicates two entries to us, committing none of them.
    grp.deliver(l1, {"type": "append_entries", "term": 1, "commit_index": 1, "prevLogIdx": 1, "prevLogTerm": 0,
                     "entries": [[REGULAR + cmd(0, "ns.register"), 2, 1], [REGULAR + _start(1, "dead"), 3, 1]]})
    grp._onTick(0)
    assert grp.last_log_index() == 3 and grp.raftCommitIndex == 1
    # Term 2: l2 (which never had 2..3) leads and committed its own 2..3; it is
    # still serializing its image, so it sends us no log check, only its commit index.
    grp.deliver(l2, {"type": "append_entries", "term": 2, "commit_index": 3, "serialized": None})
    grp._onTick(0)
    assert grp.raftCommitIndex == 1, "a message without a log check advanced the commit index"
    assert not _run_exists(store, "dead")
    store.close()


# ---- defect 4: a backlog larger than one frame ----

def test_append_entries_batches_fit_the_byte_budget(tmp_path: Path) -> None:
    grp, store, _ = _lone_group(tmp_path, ["l1"])
    entries = [[REGULAR + b"x" * 300_000, i, 1] for i in range(2, 12)]
    grp.deliver(grp.nodes["l1"], {"type": "append_entries", "term": 1, "commit_index": 1, "prevLogIdx": 1,
                                  "prevLogTerm": 0, "entries": entries})
    batch = grp._SyncObj__getEntries(2, None, 1_000_000)
    assert 1 <= len(batch) and sum(len(e[0]) + 32 for e in batch) <= 1_000_000
    assert len(grp._SyncObj__getEntries(2, None, 10)) == 1  # always at least one entry
    store.close()


async def _catch_up_past_a_frame(tmp: Path) -> tuple[dict[str, str], dict[str, Any]]:
    make = _trio_factory(tmp, snapshot_every=1_000_000, compact_bytes=1 << 30, max_frame=1 << 20)

    reps = {nid: make(nid) for nid in ("a", "b")}
    for r in reps.values():
        await r.start()
    try:
        assert (await _leader_propose(reps, cmd(0, "ns.register")))["ok"]
        pad = "y" * 300_000
        for i in range(1, 16):  # 4.5 MB behind: many frames' worth, no compaction
            assert (await _leader_propose(reps, _start(i, pad=pad)))["ok"]
        too_big = await _leader_propose(reps, _start(99, pad="z" * (1 << 20)))
        reps["c"] = make("c")
        await reps["c"].start()
        for _ in range(200):
            if reps["c"].store(0).applied_index() >= reps["a"].store(0).applied_index():
                break
            await asyncio.sleep(0.05)
        return {nid: r.store(0).content_hash(b"s") for nid, r in reps.items()}, too_big
    finally:
        for r in reps.values():
            await r.stop()


def test_a_follower_more_than_a_frame_behind_catches_up(tmp_path: Path) -> None:
    hashes, too_big = asyncio.run(_catch_up_past_a_frame(tmp_path))
    assert len(set(hashes.values())) == 1, hashes
    assert too_big["code"] == "too_large", too_big


# ---- defect 9: compaction against a map resize ----

def test_an_image_being_written_defers_a_map_resize_without_blocking_the_apply(tmp_path: Path) -> None:
    """The copy holds an LMDB read transaction on a worker thread: a resize
    would remap the map under it. The apply that needs a larger map is told
    to come back (nothing written, the Raft thread never waits for the copy);
    a restore waits for the copy; once the image is written, the apply goes through."""
    from hanzo_tasks.shard.machine import RESIZE_DEFERRED

    store = PartitionStore(tmp_path / "p", sync=False, map_size=1 << 20, map_size_max=64 << 20)
    machine = StateMachine(store)
    assert machine.apply(1, cmd(0, "ns.register"))["ok"]
    snap = LmdbSnapshotter(store, tmp_path / "p.snapshot")
    faults.configure("snapshot.write:sleep=0.5")
    try:
        snap.serialize((None, (REGULAR, 1, 1), (REGULAR, 0, 0), {Node("a")}), 0)
        big = _start(2, pad="q" * 1_500_000)  # does not fit the 1 MiB map
        t0 = time.monotonic()
        assert machine.apply(2, big) is RESIZE_DEFERRED
        assert time.monotonic() - t0 < 0.3, "the apply waited for the image copy"
        assert store.applied_index() == 1 and store.map_size == 1 << 20
        while snap.checkSerializing()[0] == 1:  # SERIALIZING
            time.sleep(0.02)
        assert snap.taken == 1
        res = machine.apply(2, big)
        assert res is not None and res["ok"], res
        assert store.map_size > 1 << 20
    finally:
        faults.configure("")
        store.close()


def test_a_restore_waits_for_an_image_being_written(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p", sync=False)
    with store.write() as txn:
        txn.put(b"s1", b"v")
    img = tmp_path / "img"
    store.snapshot(img)
    snap = LmdbSnapshotter(store, tmp_path / "p.snapshot")
    faults.configure("snapshot.write:sleep=0.4")
    try:
        snap.serialize((None, (REGULAR, 3, 1), (REGULAR, 2, 1), {Node("a")}), 2)
        done = threading.Event()
        t = threading.Thread(target=lambda: (store.restore(img), done.set()))
        t.start()
        time.sleep(0.2)
        assert not done.is_set(), "the environment was closed under an open snapshot transaction"
        t.join(5)
        assert done.is_set()
        while snap.checkSerializing()[0] == 1:
            time.sleep(0.02)
        assert snap.taken == 1
    finally:
        faults.configure("")
        store.close()


@pytest.fixture(autouse=True)
def _no_faults_left() -> Any:
    yield
    faults.configure("")


# ---- risk: LMDB written without fsync, then an OS crash ----

async def _reboot_after_os_crash(tmp: Path, snapshot_every: int) -> list[bool]:
    addr = f"127.0.0.1:{_free_ports(1)[0]}"

    def make() -> RaftReplicator:
        return RaftReplicator(tmp, node_id="a", listen=addr, peers={"a": addr}, secret=b"s" * 32, partitions=1,
                              sync=True, election_timeout_ms=200, heartbeat_interval_ms=40,
                              snapshot_every=snapshot_every)

    rep = make()
    await rep.start()
    try:
        assert (await _leader_propose({"a": rep}, cmd(0, "ns.register")))["ok"]
        for i in range(1, 31):
            assert (await _leader_propose({"a": rep}, _start(i)))["ok"]
        await asyncio.sleep(0.3)
    finally:
        await rep.stop()
    # What an OS crash can leave of an LMDB written without fsync: the applied
    # index says 32, the pages of the last writes never reached the disk.
    part = tmp / "partitions" / "0"
    store = PartitionStore(part, sync=False)
    with store.write() as txn:
        cur = txn.cursor()
        doomed = [k for k, _ in cur if b"w2" in k]
        for k in doomed:
            txn.delete(k)
    store.env.close()
    (part / "closed-cleanly").unlink(missing_ok=True)
    (part / "boot-id").write_text("a-boot-before-the-crash")
    rep = make()
    await rep.start()
    try:
        await _leader_propose({"a": rep}, _start(99))
        return [_run_exists(rep.store(0), f"w{i}") for i in range(1, 31)]
    finally:
        await rep.stop()


@pytest.mark.parametrize("snapshot_every", [10, 1_000_000], ids=["from-image", "from-journal"])
def test_an_os_crash_rebuilds_an_unsynced_store(tmp_path: Path, snapshot_every: int) -> None:
    if not Path("/proc/sys/kernel/random/boot_id").exists():
        pytest.skip("no boot id on this OS")
    present = asyncio.run(_reboot_after_os_crash(tmp_path, snapshot_every))
    assert all(present), [i + 1 for i, p in enumerate(present) if not p]


def test_a_process_crash_keeps_the_store(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p", sync=False)
    store.env.close()  # killed: no clean close
    again = PartitionStore(tmp_path / "p", sync=False)
    assert not again.lost_on_reboot  # same boot: the page cache kept every commit
    again.close()


def test_an_image_that_is_no_database_is_refused_and_nothing_is_replaced(tmp_path: Path) -> None:
    """pysyncobj logged a failed load and still answered success with the
    follower's own last index; here an image that is no LMDB is refused before
    it replaces the snapshot file or the store, and nothing is acknowledged."""
    import zlib

    import msgpack
    from hanzo_tasks.replication.raft.snapshots import _LEN, MAGIC

    grp, store, wire = _lone_group(tmp_path, ["l"])
    header = msgpack.packb({"index": 40, "entries": [[REGULAR, 40, 1], [REGULAR, 39, 1]], "cluster": ["f", "l"]})
    image = MAGIC + _LEN.pack(len(header)) + header + b"not an lmdb file" * 100
    chunk = [image, True, True, 0, len(image), zlib.crc32(image), 40]
    grp.deliver(grp.nodes["l"], {"type": "append_entries", "term": 1, "commit_index": 40, "serialized": chunk})
    assert not [m for _, m in wire.sent if m["type"] == "next_node_idx" and m["success"]]
    assert [m["gap"] for _, m in wire.sent if m["type"] == "snapshot_ack"] == [True]
    assert grp.raftCommitIndex == 1 and not grp.snapshotter.has_image()
    assert store.applied_index() == 0
    store.close()


def test_an_install_replaces_the_log_and_claims_only_the_image(tmp_path: Path) -> None:
    """A follower holding a dead term's suffix past the image's index must not
    reply to the install with its own last index: the leader would count
    entries it never sent as matching (found by the long chaos run)."""
    grp, store, wire = _lone_group(tmp_path / "f", ["l1", "l2"])
    grp.deliver(grp.nodes["l1"], {"type": "append_entries", "term": 1, "commit_index": 1, "prevLogIdx": 1,
                                  "prevLogTerm": 0, "entries": [[REGULAR + cmd(0, "ns.register"), 2, 1],
                                                                [REGULAR + _start(1, "a"), 3, 1],
                                                                [REGULAR + _start(2, "dead1"), 4, 1],
                                                                [REGULAR + _start(3, "dead2"), 5, 1]]})
    assert grp.last_log_index() == 5
    lstore = PartitionStore(tmp_path / "l", sync=False)
    machine = StateMachine(lstore)
    machine.apply(2, cmd(0, "ns.register"))
    machine.apply(3, _start(1, "a"))
    leader = LmdbSnapshotter(lstore, tmp_path / "l.snapshot")
    leader.serialize((None, (REGULAR, 3, 1), (REGULAR, 2, 1), {Node("f"), Node("l1"), Node("l2")}), 2)
    while leader.checkSerializing()[0] == 1:
        time.sleep(0.01)
    while True:
        chunk = leader.getTransmissionData(grp.nodes["l2"])
        assert chunk is not None
        grp.deliver(grp.nodes["l2"], {"type": "append_entries", "term": 2, "commit_index": 3, "serialized": chunk})
        if chunk[2]:
            break
    replies = [m for _, m in wire.sent if m["type"] == "next_node_idx" and m["success"]]
    assert replies and replies[-1]["next_node_idx"] == 4, replies
    assert grp.last_log_index() == 3 and _run_exists(store, "a") and not _run_exists(store, "dead1")
    store.close()
    lstore.close()


def test_a_leader_ignores_a_reply_matching_past_its_log(tmp_path: Path) -> None:
    grp, store, wire = _lone_group(tmp_path, ["x"])
    grp._SyncObj__raftElectionDeadline = 0
    grp._onTick(0)
    grp.deliver(grp.nodes["x"], {"type": "pre_vote_response", "term": 1, "granted": True, "current": 0})
    grp._onTick(0)
    grp.deliver(grp.nodes["x"], {"type": "response_vote", "term": 1})
    grp._onTick(0)
    assert grp.state() == 2 and grp.last_log_index() == 2
    x = grp.nodes["x"]
    grp.deliver(x, {"type": "next_node_idx", "next_node_idx": 9, "reset": False, "success": True, "term": 1})
    assert grp.match_index(x) == 0
    store.close()
