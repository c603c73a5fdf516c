"""PreVote, leader stickiness and caught-up hand-overs for one pysyncobj group.

pysyncobj runs Raft's plain election: a follower that stops hearing a leader
raises its term and asks for votes, and every voter that sees a higher term
steps down. So a node that was cut off for a moment (a paused process, a
flapping link) comes back with a higher term and deposes a healthy leader:
every partition it holds loses its leader for an election. The Raft thesis
(§9.6) and etcd fix this with two rules, which this module adds:

- **PreVote**: before raising its term, a node asks the voters whether they
  *would* vote for it at term + 1 (``pre_vote``). Nobody changes state for a
  pre-vote. Only with a majority of yeses does the real election start.
- **Leader stickiness** (the follower half of CheckQuorum; pysyncobj's
  ``leaderFallbackTimeout`` already makes a leader without a majority step
  down): a voter that heard from a live leader within the minimum election
  timeout denies pre-votes and ignores RequestVotes, unless the election is
  a hand-over the leader asked for (``transfer``).

A node whose term is ahead of a live leader's (an election it lost) would
ignore the leader's AppendEntries and be denied every pre-vote: it tells the
leader its term (``term_notice``), the leader steps down, and the group
elects again at the higher term, as etcd does.

Hand-overs (``begin_transfer``): pysyncobj sends TimeoutNow only when the
target's matchIndex equals the leader's last index at that instant, which
under steady writes is almost never. Here the leader stops taking new
commands (they wait in pysyncobj's queue and are forwarded to the new leader
afterwards), lets the target catch up, then sends TimeoutNow; after an
election timeout without success it gives up and takes commands again (and refuses hand-overs to that target for ``TRANSFER_BACKOFF``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pysyncobj.node import Node

log = logging.getLogger("tasks.raft")

FOLLOWER, CANDIDATE, LEADER = 0, 1, 2
#: After a hand-over to a node gave up, new ones to it are refused this long,
#: so a target that cannot take over does not pause the group's writes again and again.
TRANSFER_BACKOFF = 10.0


class Elections:
    """The election rules pysyncobj lacks, for one ``RaftGroup``."""

    def __init__(self, group: Any) -> None:
        self.g = group
        self._heard_leader = 0.0
        self._quiet_until = 0.0  # an idle leader's slow heartbeats keep it live until then
        self._round_term = 0  # the term our running pre-vote round asks for
        self._grants: set[str] = set()
        self._passed_term = 0  # a pre-vote round won for this term
        self._transfer: tuple[Node, float] | None = None
        self._timeout_now_sent = False
        self._failed: dict[str, float] = {}  # target -> when a hand-over to it last gave up
        self.pre_votes_started = 0
        self.pre_votes_won = 0
        self.stale_leaders_told = 0

    # ---- pysyncobj state ------------------------------------------------------

    @property
    def _term(self) -> int:
        term: int = self.g._SyncObj__raftCurrentTerm
        return term

    def _min_timeout(self) -> float:
        return float(self.g._SyncObj__conf.raftMinTimeout)

    def _last(self) -> tuple[int, int]:
        entry = self.g._SyncObj__raftLog[-1]
        return entry[1], entry[2]

    def _voters(self) -> set[Node]:
        return set(self.g._SyncObj__otherNodes)

    def _send(self, node: Node, msg: dict[str, Any]) -> None:
        self.g.transport.send(node, msg)

    # ---- stickiness ---------------------------------------------------------------

    def heard_leader(self, quiet_for: float = 0.0) -> None:
        """An AppendEntries of the current leader; ``quiet_for``: the leader declared
        the group idle, its next heartbeat may take that long (seconds)."""
        now = time.monotonic()
        self._heard_leader = now
        self._quiet_until = now + quiet_for if quiet_for > 0 else 0.0

    def leader_lost(self) -> None:
        """The link to the leader closed: it is no longer counted as heard lately, so
        this node grants pre-votes (and may ask for them) without waiting out the
        election timeout. Voters still connected to a live leader keep refusing."""
        self._heard_leader = 0.0
        self._quiet_until = 0.0

    def leader_is_live(self) -> bool:
        if self.g.state() == LEADER:
            return True
        leader = self.g._SyncObj__raftLeader
        now = time.monotonic()
        return leader is not None and (now - self._heard_leader < self._min_timeout() or now < self._quiet_until)

    def may_vote(self, msg: dict[str, Any]) -> bool:
        """Whether a RequestVote may reach pysyncobj's vote handler."""
        if msg["term"] <= self._term or msg.get("transfer"):
            return True
        return not self.leader_is_live()

    def notify_stale_leader(self, node: Node) -> None:
        self.stale_leaders_told += 1
        self._send(node, {"type": "term_notice", "term": self._term})

    # ---- pre-vote ------------------------------------------------------------------

    def before_tick(self) -> bool:
        """Runs before pysyncobj's tick. Returns whether an election starting in
        this tick is a hand-over. Delays an election due now until a pre-vote
        round for it has been won."""
        g = self.g
        if g.learner or g.state() == LEADER or g._SyncObj__raftElectionDeadline >= time.monotonic():
            return False  # a learner (pysyncobj read-only node) never campaigns
        if not g._SyncObj__connectedToAnyone():
            return False
        if g._SyncObj__transferInProgress:
            return True  # TimeoutNow from our leader: no pre-vote (Raft §3.10)
        voters = self._voters()
        if not voters or self._passed_term == self._term + 1:
            return False  # alone, or the round was won: pysyncobj campaigns now
        self._start_round(voters)
        return False

    def _start_round(self, voters: set[Node]) -> None:
        g = self.g
        g._SyncObj__raftElectionDeadline = time.monotonic() + g._SyncObj__generateRaftTimeout()
        self._round_term = self._term + 1
        self._grants = set()
        self.pre_votes_started += 1
        idx, term = self._last()
        for node in voters:
            self._send(node, {"type": "pre_vote", "term": self._round_term, "last_log_index": idx,
                              "last_log_term": term})

    def after_tick(self) -> None:
        g = self.g
        if g.state() == LEADER or (self._round_term and self._term >= self._round_term):
            self._round_term = 0  # the election it was for started (or we lead): the round is over
        if self._passed_term and self._passed_term <= self._term:
            self._passed_term = 0
        self._drive_transfer()

    def on_message(self, node: Node, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "pre_vote":
            self._answer(node, msg)
        elif kind == "pre_vote_response":
            self._count(node, msg)
        elif kind == "term_notice" and msg["term"] > self._term:
            self._adopt_term(msg["term"])

    def _answer(self, node: Node, msg: dict[str, Any]) -> None:
        idx, term = self._last()
        up_to_date = (msg["last_log_term"], msg["last_log_index"]) >= (term, idx)
        granted = msg["term"] > self._term and up_to_date and not self.leader_is_live()
        self._send(node, {"type": "pre_vote_response", "term": msg["term"], "granted": granted,
                          "current": self._term})

    def _count(self, node: Node, msg: dict[str, Any]) -> None:
        if msg["current"] > self._term and not msg["granted"]:
            self._adopt_term(msg["current"])  # we are behind the group's term: follow it
            return
        if msg["term"] != self._round_term or not msg["granted"] or node not in self._voters():
            return
        self._grants.add(node.id)
        if len(self._grants) + 1 > (len(self._voters()) + 1) / 2:
            self.pre_votes_won += 1
            self._passed_term = self._round_term
            self._round_term = 0
            self.g._SyncObj__raftElectionDeadline = 0  # campaign at the next tick

    def _adopt_term(self, term: int) -> None:
        g = self.g
        log.info("group %s: term %d is behind the group's %d; following it", g.group_id, self._term, term)
        g._SyncObj__setCurrentTerm(term, None)
        if g.state() != FOLLOWER:
            g._SyncObj__setState(FOLLOWER)
        g._SyncObj__raftLeader = None
        self._round_term = 0

    # ---- hand-overs ----------------------------------------------------------------

    def begin_transfer(self, target: str | None) -> bool:
        g = self.g
        if g.state() != LEADER:
            return False
        voters = {n.id: n for n in self._voters()}
        if target is None:
            connected = g.connected_nodes()
            ranked = sorted((g.match_index(n), n.id) for n in voters.values() if n in connected)
            if not ranked:
                return False
            target = ranked[-1][1]
        node = voters.get(target)
        if node is None:
            return False
        now = time.monotonic()
        if self._transfer is not None and self._transfer[0] == node:
            return True  # already under way
        if now - self._failed.get(target, -1e9) < TRANSFER_BACKOFF:
            return False  # it failed lately: commands are not held up again so soon
        self._transfer = (node, now + self._min_timeout())
        self._timeout_now_sent = False
        self._drive_transfer()
        return True

    def transfer_pending(self) -> bool:
        return self._transfer is not None and self.g.state() == LEADER

    def _drive_transfer(self) -> None:
        if self._transfer is None:
            return
        node, deadline = self._transfer
        g = self.g
        if g.state() != LEADER or time.monotonic() > deadline or node not in self._voters():
            if g.state() == LEADER:
                self._failed[node.id] = time.monotonic()
                log.info("group %s: hand-over to %s gave up", g.group_id, node.id)
            self._transfer = None  # done (we no longer lead) or given up: take commands again
            return
        if not self._timeout_now_sent and g.match_index(node) == self._last()[0]:
            g.transferLeadership(node)
            self._timeout_now_sent = True
