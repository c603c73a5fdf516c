"""PreVote, leader stickiness, term checks and hand-overs (issue 23's risks).

The step-by-step tests drive one real RaftGroup with crafted messages and
read what it sends; the cluster tests run three RaftReplicators over real
loopback sockets and cut links by dropping chosen frames.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

from hanzo_tasks.protocol.channels import RAFT
from hanzo_tasks.replication.raft.journal import DurableJournal
from hanzo_tasks.replication.raft.replicator import RaftReplicator

from tests.replication.test_no_pickle import _free_ports, cmd
from tests.replication.test_raft_safety import _leader_propose, _lone_group, _start


def _sent(wire: Any, kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(p, m) for p, m in wire.sent if m["type"] == kind]


def _expire(grp: Any) -> None:
    grp._SyncObj__raftElectionDeadline = 0


def test_an_election_starts_only_after_a_pre_vote_majority(tmp_path: Path) -> None:
    grp, store, wire = _lone_group(tmp_path, ["x", "y"])
    _expire(grp)
    grp._onTick(0)
    assert grp.raftCurrentTerm == 0, "the term rose before any pre-vote"
    assert {p for p, _ in _sent(wire, "pre_vote")} == {"x", "y"} and not _sent(wire, "request_vote")
    round_term = _sent(wire, "pre_vote")[0][1]["term"]
    grp.deliver(grp.nodes["x"], {"type": "pre_vote_response", "term": round_term, "granted": True, "current": 0})
    grp._onTick(0)
    assert grp.raftCurrentTerm == 1 and {p for p, _ in _sent(wire, "request_vote")} == {"x", "y"}
    store.close()


def test_a_voter_that_hears_its_leader_denies_pre_votes_and_ignores_vote_requests(tmp_path: Path) -> None:
    grp, store, wire = _lone_group(tmp_path, ["l", "x"])
    grp.deliver(grp.nodes["l"], {"type": "append_entries", "term": 3, "commit_index": 1, "prevLogIdx": 1,
                                 "prevLogTerm": 0, "entries": []})
    grp._onTick(0)
    grp.deliver(grp.nodes["x"], {"type": "pre_vote", "term": 4, "last_log_index": 9, "last_log_term": 3})
    assert _sent(wire, "pre_vote_response")[-1][1]["granted"] is False
    grp.deliver(grp.nodes["x"], {"type": "request_vote", "term": 4, "last_log_index": 9, "last_log_term": 3})
    assert grp.raftCurrentTerm == 3 and not _sent(wire, "response_vote")
    # A hand-over's election is let through.
    grp.deliver(grp.nodes["x"], {"type": "request_vote", "term": 4, "last_log_index": 9, "last_log_term": 3,
                                 "transfer": True})
    assert grp.raftCurrentTerm == 4 and _sent(wire, "response_vote")
    store.close()


def test_a_reply_from_another_term_does_not_move_match_index(tmp_path: Path) -> None:
    grp, store, wire = _lone_group(tmp_path, ["x"])
    _expire(grp)
    grp._onTick(0)
    grp.deliver(grp.nodes["x"], {"type": "pre_vote_response", "term": 1, "granted": True, "current": 0})
    grp._onTick(0)
    grp.deliver(grp.nodes["x"], {"type": "response_vote", "term": 1})
    grp._onTick(0)
    assert grp.state() == 2
    x = grp.nodes["x"]
    grp.deliver(x, {"type": "next_node_idx", "next_node_idx": 3, "reset": False, "success": True, "term": 0})
    assert grp.match_index(x) == 0, "a reply to an earlier term's AppendEntries counted"
    grp.deliver(x, {"type": "next_node_idx", "next_node_idx": 3, "reset": False, "success": True, "term": 1})
    assert grp.match_index(x) == 2
    # Our own replies carry our term.
    grp2, store2, wire2 = _lone_group(tmp_path / "f", ["l"])
    grp2.deliver(grp2.nodes["l"], {"type": "append_entries", "term": 5, "commit_index": 1, "prevLogIdx": 1,
                                   "prevLogTerm": 0, "entries": []})
    assert _sent(wire2, "next_node_idx")[-1][1]["term"] == 5
    store.close()
    store2.close()


def test_a_stale_leader_is_told_the_newer_term(tmp_path: Path) -> None:
    grp, store, wire = _lone_group(tmp_path, ["l", "old"])
    grp.deliver(grp.nodes["l"], {"type": "append_entries", "term": 4, "commit_index": 1, "prevLogIdx": 1,
                                 "prevLogTerm": 0, "entries": []})
    grp.deliver(grp.nodes["old"], {"type": "append_entries", "term": 2, "commit_index": 1, "prevLogIdx": 1,
                                   "prevLogTerm": 0, "entries": []})
    assert _sent(wire, "term_notice") == [("old", {"type": "term_notice", "term": 4})]
    store.close()


# ---- three replicators over loopback ------------------------------------------

def _cluster(tmp: Path) -> tuple[dict[str, RaftReplicator], Any]:
    secret = secrets.token_bytes(32)
    ids = ["a", "b", "c"]
    addrs = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, _free_ports(3), strict=True)}

    def make(nid: str) -> RaftReplicator:
        return RaftReplicator(tmp / nid, node_id=nid, listen=addrs[nid], peers=addrs, secret=secret,
                              partitions=1, sync=False, election_timeout_ms=300, heartbeat_interval_ms=50)

    return {nid: make(nid) for nid in ids}, make


def _cut(reps: dict[str, RaftReplicator], victim: str, cut: list[bool]) -> None:
    """While ``cut[0]``, no Raft frame travels to or from ``victim``."""
    for nid, r in reps.items():
        assert r.mux is not None
        real = r.mux.send

        def send(peer: str, channel: int, group: int, body: bytes, _real: Any = real, _me: str = nid) -> bool:
            if cut[0] and channel == RAFT and victim in (peer, _me):
                return False
            return _real(peer, channel, group, body)

        r.mux.send = send  # type: ignore[method-assign]


async def _leader(reps: dict[str, RaftReplicator], group: int = 0, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for nid, r in reps.items():
            if r._running and r.is_leader(group):
                return nid
        await asyncio.sleep(0.02)
    raise AssertionError("no leader")


async def _rejoin_without_deposing(tmp: Path) -> tuple[int, int, str, str]:
    reps, _ = _cluster(tmp)
    for r in reps.values():
        await r.start()
    try:
        assert (await _leader_propose(reps, cmd(0, "ns.register")))["ok"]
        leader = await _leader(reps)
        victim = next(n for n in reps if n != leader)
        term_before = reps[leader]._groups[0].raftCurrentTerm
        cut = [True]
        _cut(reps, victim, cut)
        await asyncio.sleep(2.0)  # several election timeouts alone
        cut[0] = False
        for i in range(1, 6):
            assert (await _leader_propose(reps, _start(i)))["ok"]
        await asyncio.sleep(1.0)
        return term_before, reps[leader]._groups[0].raftCurrentTerm, leader, await _leader(reps)
    finally:
        for r in reps.values():
            await r.stop()


def test_a_node_that_lost_touch_does_not_depose_the_leader_when_it_returns(tmp_path: Path) -> None:
    before, after, leader, leader_after = asyncio.run(_rejoin_without_deposing(tmp_path))
    assert (after, leader_after) == (before, leader)


async def _ahead_in_term(tmp: Path) -> tuple[int, int]:
    reps, make = _cluster(tmp)
    for r in reps.values():
        await r.start()
    try:
        assert (await _leader_propose(reps, cmd(0, "ns.register")))["ok"]
        leader = await _leader(reps)
        victim = next(n for n in reps if n != leader)
        await reps[victim].stop()
        journal = DurableJournal(str(tmp / victim / "raft" / "0.journal"), sync=False)
        journal.setCurrentTerm(journal.getCurrentTerm() + 7, None)  # an election it lost, long ago
        journal._destroy()
        for i in range(1, 6):
            assert (await _leader_propose({n: r for n, r in reps.items() if n != victim}, _start(i)))["ok"]
        reps[victim] = make(victim)
        await reps[victim].start()
        want = reps[leader].store(0).applied_index()
        for _ in range(200):
            if reps[victim].store(0).applied_index() >= want:
                break
            await asyncio.sleep(0.05)
        assert (await _leader_propose(reps, _start(9)))["ok"]
        return reps[victim].store(0).applied_index(), want
    finally:
        for r in reps.values():
            await r.stop()


def test_a_node_ahead_in_term_rejoins(tmp_path: Path) -> None:
    got, want = asyncio.run(_ahead_in_term(tmp_path))
    assert got >= want


async def _hand_over_under_writes(tmp: Path) -> tuple[str, str, float]:
    reps, _ = _cluster(tmp)
    for r in reps.values():
        await r.start()
    stop = asyncio.Event()

    async def writer() -> None:
        i = 100
        while not stop.is_set():
            i += 1
            await _leader_propose(reps, _start(i, pad="p" * 2000))

    try:
        assert (await _leader_propose(reps, cmd(0, "ns.register")))["ok"]
        leader = await _leader(reps)
        target = sorted(n for n in reps if n != leader)[0]
        tasks = [asyncio.create_task(writer()) for _ in range(4)]
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        new = leader
        while time.monotonic() - t0 < 5.0 and new != target:
            reps[leader].transfer_leadership(0, target)
            await asyncio.sleep(0.1)
            new = await _leader(reps)
        took = time.monotonic() - t0
        stop.set()
        await asyncio.gather(*tasks)
        return target, new, took
    finally:
        for r in reps.values():
            await r.stop()


def test_a_hand_over_completes_under_steady_writes(tmp_path: Path) -> None:
    target, new, took = asyncio.run(_hand_over_under_writes(tmp_path))
    assert new == target, f"leadership stayed put for {took:.1f} s of asking"


def test_a_candidate_after_a_split_vote_pre_votes_again_and_campaigns(tmp_path: Path) -> None:
    """All three start at once, each votes for itself: the next round must be
    able to win (a round reset at every tick of a candidate left the group
    leaderless for good)."""
    grp, store, wire = _lone_group(tmp_path, ["x", "y"])
    _expire(grp)
    grp._onTick(0)
    grp.deliver(grp.nodes["x"], {"type": "pre_vote_response", "term": 1, "granted": True, "current": 0})
    grp._onTick(0)
    assert grp.state() == 1 and grp.raftCurrentTerm == 1  # a candidate; nobody votes for it (split)
    _expire(grp)
    grp._onTick(0)
    rounds = [m["term"] for _, m in _sent(wire, "pre_vote")]
    assert rounds[-1] == 2 and grp.raftCurrentTerm == 1
    grp._onTick(0)  # a tick between the round and its answers must not forget the round
    grp.deliver(grp.nodes["y"], {"type": "pre_vote_response", "term": 2, "granted": True, "current": 1})
    grp._onTick(0)
    assert grp.raftCurrentTerm == 2 and grp.state() == 1
    store.close()
