"""Partition replica sets: the layout in the meta group, and keeping it whole.

Each partition is replicated by ``min(replication_factor, members)`` nodes,
chosen at bootstrap by ``routing.partition_plan`` and recorded by
``meta.init``. Every node opens the partitions the recorded layout gives it
(``RaftReplicator.set_replica_sets``) and forwards the rest (see
``cluster.service.forwarding``).

The **meta leader** keeps every set at full strength as members come and go,
one partition and one node at a time:

1. a replica that is no longer a member and does not answer the group's
   leader is removed from the group first: it cannot vote, and adding before
   removing would make the group need 3 of 4 votes with one of them dead (a
   set of the live replicas commits the next addition on its own);
2. a member left (``DELETE /v1/tasks/cluster/members/{id}``) or the set is
   short: the HRW-next member opens the group (``prepare_replica``, so that
   it takes part in committing its own addition and catches up at once), is
   made a voter of the partition's Raft group, then recorded in the layout;
3. once the added replica caught up (and a majority of the set that remains
   has applied what the group had committed), a replica that is no longer a
   member but still answers is removed from the group, then from the layout
   (it drops its copy once a leader confirms the removal committed).

Every change is recorded only after it committed in the group, with the set
it changed as the expected current value (a keeper that lost the meta
leadership cannot overwrite its successor's record), and a group takes one
change at a time. Every few rounds the recorded sets are compared with the
groups' committed voters (as their leaders see them) and a difference (a
change that committed unrecorded, a record of one that never committed) is
repaired by recording the voters; the steps above then continue from there.

The meta group itself has at most ``MAX_META_VOTERS`` voters; other members
follow it as learners (the leader streams them the log; they neither vote
nor count towards a commit). The meta leader makes a learner a voter once it
answers and has caught up, while the group has fewer voters than five (or
than members), and removes the vote of a node that is no longer a member.
With zones, the learner of the zone with the fewest voters goes first, and a
zone holding two voters more than another zone with a learner gives one up
(that learner is made a voter, then a voter of the most represented zone is
removed), so that losing one machine takes as few meta votes as it can.

Each step is idempotent and re-derived from the meta group every round, so a
new meta leader simply continues. When every set is whole and every member answers,
replicas are spread onto members that hold fewer (a node that joined): the
receiving node is added to a partition of the most loaded node (preferring
one it is the preferred leader of), catches up, and the set then sheds its
most loaded member, until every member holds within one of every other.

**Failure domains.** A member may publish a zone (``node_zone``: a machine,
rack or zone; ``meta.member`` records it). Every choice above then prefers a
node whose zone the set does not span yet, and only when the members span
fewer zones than the set has replicas do two replicas share one: several
nodes per machine (one per core) never put two replicas of a partition on
one machine while there are enough machines. A set that spans fewer zones
than it could (the bootstrap layout is computed before the zones are known,
or a node came back with another zone) gains a node of a missing zone and
then sheds one of a zone it holds twice, like a balancing move; balancing
moves themselves never lower a set's number of zones. Members without a zone
are each their own domain, so a cluster without zones places as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgpack
from hanzo_tasks.routing import (
    Zones,
    distinct_domains,
    failure_domain,
    partition_plan,
    rank,
    spread_fill,
)
from hanzo_tasks.shard.meta import MAX_META_VOTERS

log = logging.getLogger("tasks.replicas")

ROUND_EVERY = 1.0
CATCH_UP_WAIT = 60.0
RECONCILE_EVERY = 5.0


def bootstrap_layout(partitions: int, members: list[str], replication_factor: int, seed: str,
                     zones: Zones | None = None) -> list[list[str]]:
    """The layout a new cluster starts with (recorded by meta.init).

    Each partition's preferred leader (balanced by ``partition_plan``) first,
    then the members holding the fewest partitions so far, ties broken by
    the partition's HRW order, so that every node stores about as many
    partitions as every other (``P * rf / N``). With ``zones``, members of a
    zone the set does not span yet come before all others.
    """
    plan = partition_plan(partitions, members, replication_factor, seed)
    ms = sorted(set(members))
    k = min(replication_factor, len(ms))
    share = -(-partitions * k // len(ms))
    held = dict.fromkeys(ms, 0)
    for pp in plan:
        held[pp.preferred_leader] += 1
    out = []
    for pp in plan:
        nodes = [pp.preferred_leader]
        used = {failure_domain(pp.preferred_leader, zones)}
        ranked = rank("", "", str(pp.id), seed, ms)
        while len(nodes) < k:
            m = min((m for m in ranked if m not in nodes),
                    key=lambda m: (failure_domain(m, zones) in used, held[m] >= share, held[m], ranked.index(m)))
            nodes.append(m)
            used.add(failure_domain(m, zones))
            held[m] += 1
        out.append(nodes)
    # The greedy pass can leave a spread of more than one: hand a follower slot
    # from a most to a least loaded member while one can take it without the
    # set spanning fewer zones.
    while True:
        by_load = sorted(ms, key=lambda m: (held[m], m))
        swap = next(((nodes, hi, lo) for hi in reversed(by_load) for lo in by_load
                     if held[hi] - held[lo] > 1 for nodes in out
                     if hi in nodes[1:] and lo not in nodes and _keeps_domains(nodes, hi, lo, zones)), None)
        if swap is None:
            return out
        nodes, hi, lo = swap
        nodes[nodes.index(hi)] = lo
        held[hi] -= 1
        held[lo] += 1


def _keeps_domains(nodes: list[str], out: str, into: str, zones: Zones | None) -> bool:
    """Whether replacing ``out`` by ``into`` leaves the set spanning at least as many zones."""
    if not zones:
        return True  # every node its own domain: a node new to the set keeps the count
    return distinct_domains([into if n == out else n for n in nodes], zones) >= distinct_domains(nodes, zones)


def zones_of(members: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    """node -> its zone, from the meta group's member records (no zone: None)."""
    return {mid: rec.get("zone") or None for mid, rec in members.items()}


def meta_voter_candidates(voters: set[str], learners: list[str], zones: Zones | None, target: int) -> list[str]:
    """The learners that may become meta voters, best first: while the group
    has fewer than ``target`` voters, all of them, those of a zone with fewer
    voters first; at ``target``, only learners of a zone holding at least two
    voters fewer than the most represented one (the swap's first half; the
    next round sheds with ``surplus_meta_voter``). Without zones: all learners
    in id order below target, none at it."""
    count: dict[str, int] = {}
    for v in voters:
        count[failure_domain(v, zones)] = count.get(failure_domain(v, zones), 0) + 1
    ordered = sorted(learners, key=lambda n: (count.get(failure_domain(n, zones), 0), n))
    if len(voters) < target:
        return ordered
    most = max(count.values(), default=0)
    return [n for n in ordered if count.get(failure_domain(n, zones), 0) <= most - 2]


def surplus_meta_voter(voters: set[str], zones: Zones | None, keep: str) -> str | None:
    """The voter to remove from a meta group above its size: one of the zone
    holding the most voters (the last id of it), never ``keep`` (the leader
    that makes the change)."""
    count: dict[str, int] = {}
    for v in voters:
        count[failure_domain(v, zones)] = count.get(failure_domain(v, zones), 0) + 1
    options = [v for v in voters if v != keep]
    if not options:
        return None
    return max(options, key=lambda v: (count[failure_domain(v, zones)], v))


def current_layout(rep: Any) -> dict[int, list[str]]:
    """The recorded layout; every member holds every partition in clusters
    bootstrapped before layouts were recorded; empty before bootstrap."""
    meta = rep.meta
    if meta.partitions() is None:
        return {}
    stored = meta.replica_sets()
    everyone = sorted(meta.members())
    return {p: stored.get(p) or everyone for p in range(rep.partitions)}


def wanted(current: list[str], members: set[str], partition: int, replication_factor: int, seed: str,
           load: dict[str, int] | None = None, leader: str | None = None,
           zones: Zones | None = None) -> list[str]:
    """The set ``current`` should become: its members that are still members,
    topped up in HRW order to ``min(rf, members)`` (members of a zone the set
    does not span yet first). With ``load`` (replicas per member), a set left
    one too large by a move sheds a member whose zone it holds twice, else its
    most loaded member other than the partition's preferred ``leader`` (ties:
    the last in HRW order); a preferred leader that holds no replica protects
    nobody, and the keeper hands leadership over before it removes a leader.
    Also with ``load``, a whole set that spans fewer zones than the members
    could give it gains one node of a missing zone (the next call sheds)."""
    keep = [n for n in current if n in members]
    target = min(replication_factor, len(members))
    ranked = rank("", "", str(partition), seed, sorted(members))
    if len(keep) < target:
        keep = spread_fill(keep, ranked, target, zones)
    if load is not None:
        while len(keep) > target:
            keep.remove(max(keep, key=lambda n: (distinct_domains([m for m in keep if m != n], zones),
                                                 n != leader, load.get(n, 0), ranked.index(n))))
        if distinct_domains(keep, zones) < min(target, distinct_domains(members, zones)):
            keep = spread_fill(keep, ranked, target + 1, zones)
    return keep


def replica_load(layout: dict[int, list[str]], members: set[str]) -> dict[str, int]:
    """Replicas per member (members holding none count 0)."""
    load = dict.fromkeys(members, 0)
    for nodes in layout.values():
        for n in nodes:
            if n in load:
                load[n] += 1
    return load


def balancing_move(layout: dict[int, list[str]], members: set[str], replication_factor: int,
                   seed: str, zones: Zones | None = None) -> tuple[int, str] | None:
    """One replica to add so that replicas spread evenly (a node that joined
    holds none): ``(partition, node)``, or None when every member holds within
    one of every other. The set then sheds its most loaded member (``wanted``).

    The most loaded member that can shed a replica gives one to the least
    loaded member that holds two fewer and can take it; each such move lowers
    the sum of squared loads, so the steps end. A member can shed any replica
    but one of a partition it is the preferred leader of; partitions whose
    preferred leader is the receiving node go first, so that leadership can
    follow. When no such move exists but a member two above another is
    still there, one replica goes to a member holding one fewer, chosen so
    that the direct move exists afterwards (the pair lowers the sum). With
    ``zones``, only moves that leave the set spanning as many zones are made
    (unequal zones can then leave a larger spread: a zone's few members must
    hold a replica of every partition)."""
    if not layout or len(members) <= min(replication_factor, len(members)):
        return None
    leaders = {pp.id: pp.preferred_leader for pp in partition_plan(len(layout), members, replication_factor, seed)}
    move = _direct_move(layout, members, leaders, 2, zones)
    if move is not None:
        return move
    load = replica_load(layout, members)
    if max(load.values()) - min(load.values()) <= 1:
        return None
    for step in _moves(layout, members, leaders, 1, zones):
        p, node = step
        after = dict(layout)
        after[p] = wanted([*layout[p], node], members, p, replication_factor, seed,
                          replica_load({**layout, p: [*layout[p], node]}, members), leaders.get(p), zones)
        if _direct_move(after, members, leaders, 2, zones) is not None:
            return step
    return None


def _moves(layout: dict[int, list[str]], members: set[str], leaders: dict[int, str], gap: int,
           zones: Zones | None = None):
    """Candidate ``(partition, receiver)`` moves from a member to one holding
    at least ``gap`` fewer replicas, most loaded giver and least loaded
    receiver first, that leave the set spanning as many zones."""
    load = replica_load(layout, members)
    by_load = sorted(members, key=lambda n: (load[n], n))
    for hi in reversed(by_load):
        for lo in by_load:
            if load[hi] - load[lo] < gap:
                break
            options = [p for p, nodes in layout.items()
                       if hi in nodes and lo not in nodes and leaders.get(p) != hi
                       and _keeps_domains(nodes, hi, lo, zones)]
            for p in sorted(options, key=lambda p: (leaders.get(p) != lo, p)):
                yield p, lo


def _direct_move(layout: dict[int, list[str]], members: set[str], leaders: dict[int, str],
                 gap: int, zones: Zones | None = None) -> tuple[int, str] | None:
    return next(_moves(layout, members, leaders, gap, zones), None)


class ReplicaKeeper:
    def __init__(self, rep: Any, *, replication_factor: int, seed: str) -> None:
        self.rep = rep
        self.rf = replication_factor
        self.seed = seed
        self.moves = 0
        self.repairs = 0
        self._reconciled_at = 0.0

    def sync_local(self) -> None:
        """Open/drop this node's partitions to match the recorded layout (cheap, idempotent)."""
        layout = current_layout(self.rep)
        if layout:
            self.rep.set_replica_sets(layout)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(ROUND_EVERY)
            try:
                self.sync_local()
                # The meta leader keeps the sets; a node being removed hands its
                # leadership over and leaves this to the next one.
                if self.rep.is_leader(self.rep.meta_group) and self.rep.node_id in self.rep.meta.members():
                    await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the next round starts over from the meta group
                log.warning("replica set upkeep: %s", e)

    async def round(self) -> None:
        layout = current_layout(self.rep)
        records = self.rep.meta.members()
        members, zones = set(records), zones_of(records)
        if not layout or not members:
            return
        if await self._meta_voters(members, zones):
            return
        if time.monotonic() - self._reconciled_at >= RECONCILE_EVERY:
            self._reconciled_at = time.monotonic()
            if await self._reconcile(layout):
                return
        load = replica_load(layout, members)
        leaders = {pp.id: pp.preferred_leader for pp in partition_plan(len(layout), members, self.rf, self.seed)}
        for p, cur in sorted(layout.items()):
            want = wanted(cur, members, p, self.rf, self.seed, load, leaders.get(p), zones)
            if want == cur:
                continue
            if len(want) > len(cur) >= min(self.rf, len(members)) and not all(
                    n == self.rep.node_id or self.rep.peer_responsive(n) for n in cur):
                # A whole set that spans too few zones grows by one only while all
                # of it answers, like a balancing move: it is a better place, not
                # a missing replica, and must not wait on a node that is down.
                continue
            drop = [n for n in cur if n not in want]
            view = await self._membership_of(p) if drop and len(cur) > 1 else None
            gone = [n for n in drop if view is not None and n not in view["answering"]]
            if gone:
                # A replica that does not answer its leader (down, or not
                # running the group) cannot vote: removing it never needs more
                # live votes than the group needs now; adding first would.
                node = gone[0]
                log.info("partition %d: removing replica %s, which does not answer, from %s", p, node, cur)
                await self._change(p, cur, "rem", node)
                return
            add = [n for n in want if n not in cur]
            if add:
                node = add[0]
                log.info("partition %d: adding replica %s to %s", p, node, cur)
                if await self._change(p, cur, "add", node):
                    await self._caught_up(p, node)
                return  # one step per round: the next round re-reads the layout
            if drop and len(cur) > 1:
                # A majority of the set that remains must be caught up (the added
                # replica was waited for): a member that is down does not block
                # the removal of another.
                caught = [n for n in want if await self._caught_up(p, n, wait=0.0)]
                if len(caught) <= len(want) // 2:
                    continue
                node = drop[0]
                if node in members and await self._leader_of(p) == node:
                    # A leader cannot commit its own removal: hand the partition
                    # over first (the next round removes it). A replica that is
                    # first in its set is where leader balancing sends a
                    # partition whose preferred leader holds none, so it goes
                    # last first, or balancing would hand leadership back.
                    if cur[0] == node and leaders.get(p) not in cur:
                        await self._record(p, [*cur[1:], node], expect=cur)
                    await self._hand_over(p, node)
                    return
                log.info("partition %d: removing replica %s from %s", p, node, cur)
                await self._change(p, cur, "rem", node)
                return
        # Every set is whole: spread replicas onto members that hold fewer (a
        # node that joined), but only while every member answers, so that no
        # move waits on a node that is down (a rolling restart pauses it).
        if not all(n == self.rep.node_id or self.rep.peer_responsive(n) for n in members):
            return
        move = balancing_move(layout, members, self.rf, self.seed, zones)
        if move is not None:
            p, node = move
            log.info("partition %d: adding replica %s to %s (spreading replicas)", p, node, layout[p])
            if await self._change(p, layout[p], "add", node):
                await self._caught_up(p, node)

    async def _meta_voters(self, members: set[str], zones: Zones | None = None) -> bool:
        """One change of the meta group's voters, if one is due (True: made).

        Clusters bootstrapped before meta voters were recorded keep every
        member a voter (a join adds it; see ``membership.Members.add``)."""
        rep = self.rep
        if rep.meta.voters() is None:
            return False
        view = await rep.group_membership(rep.meta_group)
        if view is None or not view["settled"] or view["pending"]:
            return False
        voters = set(view["voters"])
        gone = sorted(voters - members - {rep.node_id})
        if gone:  # a member that left kept its vote (its removal gave up half-way)
            log.info("meta group: removing the vote of %s, no longer a member", gone[0])
            await rep.change_membership("rem", gone[0], groups=[rep.meta_group], timeout=20.0)
            return True
        target = min(MAX_META_VOTERS, len(members))
        if len(voters) > target:  # the second half of a swap between zones
            node = surplus_meta_voter(voters, zones, rep.node_id)
            if node is None:
                return False
            log.info("meta group: removing the vote of %s, its zone holds the most voters", node)
            await rep.change_membership("rem", node, groups=[rep.meta_group], timeout=20.0)
            return True
        learners = [n for n in sorted(members - voters) if n in view["answering"]]
        for node in meta_voter_candidates(voters, learners, zones, target):
            if await self._caught_up(rep.meta_group, node, wait=2.0):
                log.info("meta group: %s becomes a voter (%d of at most %d)", node, len(voters) + 1,
                         MAX_META_VOTERS)
                await rep.change_membership("add", node, groups=[rep.meta_group], timeout=20.0)
                return True
        return False

    async def _change(self, partition: int, cur: list[str], op: str, node: str) -> bool:
        """One membership change of the partition's group, recorded once it
        committed (``change_group_membership`` returns then, or raises).

        Made only when the group's committed voters are the recorded set and
        no change is in flight (else the set is repaired first, or the next
        round waits). An added replica opens the group first. False: nothing
        was changed this round."""
        view = await self._membership_of(partition)
        if view is None or view["pending"]:
            log.info("partition %d: no settled leader, or a membership change in flight; waiting", partition)
            return False
        if set(view["voters"]) != set(cur):
            await self._repair(partition, cur, view["voters"])
            return False
        if op == "add":
            try:
                await self.rep.prepare_replica(partition, node, cur)
            except Exception as e:  # noqa: BLE001 - it opens the group when it sees the layout
                log.warning("partition %d: %s did not open the group ahead of its addition: %s", partition, node, e)
        await self.rep.change_group_membership(partition, op, node)
        await self._record(partition, [*cur, node] if op == "add" else [n for n in cur if n != node], expect=cur)
        self.moves += 1
        return True

    async def _membership_of(self, partition: int) -> dict[str, Any] | None:
        """The group's committed voters as a leader that knows every committed
        entry sees them (``RaftReplicator.group_membership``); None when no
        such leader answers. A follower's view may predate a committed change."""
        rep = self.rep
        view = await rep.group_membership(partition)
        if view is not None and view["settled"]:
            return view
        hint = rep.leader(partition) or rep.leader_hint(partition)
        for n in dict.fromkeys([*([hint] if hint else []), *rep.peers_for(partition)]):
            if n == rep.node_id:
                continue
            try:
                view = await rep.rpc.call(n, "voters", {"g": partition}, 2.0)
            except Exception:  # noqa: BLE001 - ask the next replica
                continue
            if isinstance(view, dict) and view.get("settled"):
                return view
        return None

    async def _reconcile(self, layout: dict[int, list[str]]) -> bool:
        """Compare every recorded set with its group's committed voters and
        repair the first difference (True: a repair was recorded)."""
        for p, cur in sorted(layout.items()):
            view = await self._membership_of(p)
            if view is None or view["pending"]:
                continue
            if set(view["voters"]) != set(cur):
                await self._repair(p, cur, view["voters"])
                return True
        return False

    async def _repair(self, partition: int, cur: list[str], voters: list[str]) -> None:
        """Record the group's committed voters as its set (the recorded order
        kept): a voter the layout missed opens the group, a node that is not
        a voter drops its copy (once a leader confirms it is not one). The
        usual steps then take the set where it should be."""
        fixed = [n for n in cur if n in voters] + [n for n in voters if n not in cur]
        log.warning("partition %d: recorded replicas %s differ from the group's voters %s; recording %s",
                    partition, cur, voters, fixed)
        await self._record(partition, fixed, expect=cur)
        self.repairs += 1

    async def _leader_of(self, partition: int) -> str | None:
        if self.rep.is_local(partition):
            return self.rep.leader(partition)
        for n in self.rep.replicas(partition):
            try:
                leaders = await self.rep.rpc.call(n, "leaders", {}, 2.0)
            except Exception:  # noqa: BLE001 - ask the next replica
                continue
            if isinstance(leaders, dict) and leaders.get(str(partition)):
                return leaders[str(partition)]
        return None

    async def _hand_over(self, partition: int, node: str) -> None:
        log.info("partition %d: asking its leader %s to hand over before it leaves the set", partition, node)
        if node == self.rep.node_id:
            self.rep.transfer_leadership(partition, None)
            return
        try:
            await self.rep.rpc.call(node, "transfer", {"g": partition}, 2.0)
        except Exception as e:  # noqa: BLE001 - the next round tries again
            log.warning("partition %d: hand-over request to %s failed: %s", partition, node, e)

    async def _record(self, partition: int, nodes: list[str], expect: list[str] | None = None) -> None:
        """Record the partition's set, provided it is still ``expect`` (a
        keeper that lost the meta leadership mid-step cannot overwrite its
        successor's record)."""
        cmd: dict[str, Any] = {"op": "meta.replicas", "partition": partition, "replicas": nodes}
        if expect is not None:
            cmd["expect"] = expect
        data = msgpack.packb(cmd, use_bin_type=True)
        res = await self.rep.propose(self.rep.meta_group, data)
        if not res.get("ok"):
            raise RuntimeError(f"meta.replicas for partition {partition}: {res.get('message')}")

    async def _progress(self, partition: int, node: str) -> dict[str, int] | None:
        if node == self.rep.node_id:
            return await self.rep.group_progress(partition)
        try:
            return await self.rep.rpc.call(node, "progress", {"g": partition}, 5.0)
        except Exception:  # noqa: BLE001 - unreachable counts as not caught up
            return None

    async def _caught_up(self, partition: int, node: str, wait: float = CATCH_UP_WAIT) -> bool:
        """Whether ``node`` applied everything the group had committed when asked (polling up to ``wait``)."""
        target = 0
        for n in self.rep.replicas(partition):
            if n != node:
                pr = await self._progress(partition, n)
                if pr:
                    target = max(target, pr["commit"])
        deadline = time.monotonic() + wait
        while True:
            pr = await self._progress(partition, node)
            if pr is not None and pr["applied"] >= target:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)
