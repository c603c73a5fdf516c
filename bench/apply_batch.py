"""Applying committed entries per entry vs in batches (issue 14; not a test: prints figures).

    python -m bench.apply_batch [--entries 5000] [--per-tick 1,16,64,256] [--sync both]

N committed workflow starts, shaped as ``Service.start_workflow`` proposes them
(org, namespace, ``now``, ``rnd``, workflow id, task queue, a small JSON input,
a request id, the workflow task timeout), applied to a fresh partition store
on LMDB (the real ``StateMachine`` and ``PartitionStore``, in the temp dir, so
on that disk) in two ways:

- ``machine``: ``StateMachine.apply`` once per entry (one write transaction
  each, what the Raft apply loop did), vs ``apply_batch`` of ``per-tick``
  entries at a time (one transaction per tick's worth);
- ``group``: through a follower ``RaftGroup``'s apply loop, the leader
  committing ``per-tick`` entries before each tick, with the batch bound set to
  one entry (the old loop's transactions) vs the default bound.

``--sync`` picks the store's durability: ``nosync`` is what a Raft partition
uses (``sync=False``: the fsynced journal is what makes an entry durable),
``sync`` fsyncs every LMDB commit (the local replicator at durability sync).
Prints entries/s for each and the ratio batched / per entry.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from hanzo_tasks.replication.raft.group import REGULAR, GroupTransport, RaftGroup
from hanzo_tasks.replication.raft.journal import DurableJournal
from hanzo_tasks.replication.raft.snapshots import LmdbSnapshotter
from hanzo_tasks.shard import PartitionStore, StateMachine, encode
from pysyncobj import SyncObjConf

T0 = 1_760_000_000_000


def start_command(i: int) -> bytes:
    """The ``wf.start`` a client's start of order ``i`` becomes."""
    return encode({
        "v": 1, "op": "wf.start", "org": "_", "ns": "bench", "now": T0 + i, "rnd": f"{i * 2654435761:032x}",
        "start": {"type": "ChargeCard", "workflowId": f"order-{i}", "taskQueue": "payments",
                  "input": {"orderId": i, "amount": 4200, "currency": "EUR", "customer": f"cus_{i:08d}"},
                  "requestId": f"{i:08x}-7c1e-4b6a-9f00-{i:012x}", "workflowTaskTimeout": 10_000},
    })


def register_command() -> bytes:
    return encode({"v": 1, "op": "ns.register", "org": "_", "ns": "bench", "now": T0, "rnd": "0" * 32})


def commands(n: int) -> list[bytes]:
    return [register_command()] + [start_command(i) for i in range(1, n)]


def _store(path: Path, sync: bool) -> PartitionStore:
    return PartitionStore(path, sync=sync)  # the server's default map size: it grows as it would


def bench_machine(tmp: Path, cmds: list[bytes], per_tick: int, sync: bool) -> float:
    """entries/s of the state machine alone; ``per_tick`` 1 is one transaction per entry."""
    machine = StateMachine(_store(tmp, sync))
    entries = list(enumerate(cmds, start=1))
    t = time.perf_counter()
    if per_tick == 1:
        for index, data in entries:
            machine.apply(index, data)
    else:
        for k in range(0, len(entries), per_tick):
            machine.apply_batch(entries[k : k + per_tick])
    elapsed = time.perf_counter() - t
    assert machine.store.applied_index() == len(entries)
    machine.store.close()
    return len(entries) / elapsed


def bench_group(tmp: Path, cmds: list[bytes], per_tick: int, sync: bool, batch_entries: int | None) -> float:
    """entries/s of a follower's apply loop: ``per_tick`` entries committed per
    tick; ``batch_entries`` 1 is the old loop's one transaction per entry."""
    store = _store(tmp / "p", sync)
    journal = DurableJournal(str(tmp / "p.journal"), sync=False)  # the journal is not what is measured
    snap = LmdbSnapshotter(store, tmp / "p.snapshot")
    conf = SyncObjConf(autoTick=False, raftMinTimeout=600.0, raftMaxTimeout=1200.0, connectionTimeout=1200.0,
                       appendEntriesUseBatch=True, appendEntriesBatchSizeBytes=1 << 24,
                       dynamicMembershipChange=True, useFork=False, journalFile=journal,
                       fullDumpFile=str(snap.path), serializer=print, deserializer=print,
                       logCompactionMinEntries=10_000_000, logCompactionMinTime=1e9)

    def transport(sync_obj: Any, self_node: Any, other_nodes: Any) -> GroupTransport:
        return GroupTransport(sync_obj, self_node, other_nodes, send=lambda peer, body: True, flush=lambda: None)

    grp = RaftGroup(0, "f", ["l1"], conf, StateMachine(store), transport, lambda *a: None, snap)
    if batch_entries is not None:
        grp.apply_batch_entries = batch_entries
    leader = grp.nodes["l1"]
    grp.transport.node_up(leader)
    last = grp.last_log_index()
    entries = [[REGULAR + c, last + 1 + k, 1] for k, c in enumerate(cmds)]
    # The whole log arrives first (appending is not what is measured), then commits tick by tick.
    for k in range(0, len(entries), 500):
        chunk = entries[k : k + 500]
        grp.deliver(leader, {"type": "append_entries", "term": 1, "commit_index": grp.raftCommitIndex,
                             "prevLogIdx": last, "prevLogTerm": grp._SyncObj__raftLog[-1][2], "entries": chunk})
        last += len(chunk)
    t = time.perf_counter()
    for k in range(per_tick, len(entries) + per_tick, per_tick):
        commit = entries[min(k, len(entries)) - 1][1]
        grp.deliver(leader, {"type": "append_entries", "term": 1, "commit_index": commit,
                             "prevLogIdx": last, "prevLogTerm": 1, "entries": []})
        grp._onTick(0)
    elapsed = time.perf_counter() - t
    assert grp.raftLastApplied == last and store.applied_index() == last, "not everything applied"
    grp.destroy()
    journal.close()
    store.close()
    return len(entries) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=5000)
    ap.add_argument("--per-tick", default="16,64,256", help="entries committed per tick (comma-separated)")
    ap.add_argument("--sync", choices=("nosync", "sync", "both"), default="both")
    ap.add_argument("--sections", default="machine,group")
    ap.add_argument("--tmp-dir", default=None, help="where the stores live, i.e. which disk is measured")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cmds = commands(args.entries)
    syncs = {"nosync": [False], "sync": [True], "both": [False, True]}[args.sync]
    ticks = [int(x) for x in args.per_tick.split(",")]
    sections = args.sections.split(",")
    size = sum(map(len, cmds)) / len(cmds)
    print(f"{len(cmds)} wf.start entries, {size:.0f} B each on average")
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp_dir:
        tmp = Path(tmp_dir)
        run = 0

        def fresh() -> Path:
            nonlocal run
            run += 1
            path = tmp / f"run{run}"
            path.mkdir()
            return path

        for sync in syncs:
            label = "sync" if sync else "nosync"
            for per_tick in ticks:
                if "machine" in sections:
                    one = bench_machine(fresh(), cmds, 1, sync)
                    many = bench_machine(fresh(), cmds, per_tick, sync)
                    out.append({"section": "machine", "store": label, "per_tick": per_tick,
                                "per_entry": one, "batched": many, "ratio": many / one})
                if "group" in sections:
                    one = bench_group(fresh(), cmds, per_tick, sync, 1)
                    many = bench_group(fresh(), cmds, per_tick, sync, None)
                    out.append({"section": "group", "store": label, "per_tick": per_tick,
                                "per_entry": one, "batched": many, "ratio": many / one})
                for r in out[-len(sections):]:
                    print(f"{r['section']:8} {r['store']:7} {r['per_tick']:4} per tick: "
                          f"per entry {r['per_entry']:9,.0f}/s  batched {r['batched']:9,.0f}/s  "
                          f"x{r['ratio']:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
