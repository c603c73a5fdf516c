"""Claims on migration jobs, as the state machines apply them (real LMDB): the meta
group numbers the claims, and a partition refuses a step of a superseded
coordinator or of a job that has ended there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
from hanzo_tasks.shard import PartitionStore, StateMachine, encode
from hanzo_tasks.shard.meta import MetaMachine

JOB = {"id": "j1", "org": "_", "namespace": "ns", "fromPartition": 0, "toPartition": 1, "status": "pending"}


def meta(tmp: Path) -> tuple[MetaMachine, Any]:
    m = MetaMachine(PartitionStore(tmp / "meta", sync=False))
    index = [0]

    def apply(cmd: dict[str, Any]) -> dict[str, Any]:
        index[0] += 1
        res = m.apply(index[0], msgpack.packb(cmd, use_bin_type=True))
        assert res is not None
        return res

    assert apply({"op": "mig.job", "job": JOB})["ok"]
    return m, apply


def test_each_claim_supersedes_the_last_and_a_retried_claim_is_one(tmp_path: Path) -> None:
    _, apply = meta(tmp_path)
    assert apply({"op": "mig.claim", "id": "j1", "owner": "a", "token": "t1"})["claim"] == 1
    assert apply({"op": "mig.claim", "id": "j1", "owner": "a", "token": "t1"})["claim"] == 1  # the same request
    assert apply({"op": "mig.claim", "id": "j1", "owner": "b", "token": "t2"})["claim"] == 2
    stale = apply({"op": "mig.update", "id": "j1", "claim": 1, "status": "snapshotting"})
    assert not stale["ok"] and stale["details"] == {"superseded": True}
    stale_pin = apply({"op": "mig.pin", "id": "j1", "claim": 1})
    assert not stale_pin["ok"] and "pin" not in stale_pin
    res = apply({"op": "mig.update", "id": "j1", "claim": 2, "status": "snapshotting"})
    assert res["ok"] and res["job"]["status"] == "snapshotting" and res["job"]["owner"] == "b"
    assert apply({"op": "mig.update", "id": "j1", "claim": 2, "status": "failed"})["ok"]
    assert not apply({"op": "mig.claim", "id": "j1", "owner": "c", "token": "t3"})["ok"]  # ended: nobody claims it


def test_a_partition_refuses_older_claims_and_steps_after_the_job_ended(tmp_path: Path) -> None:
    m = StateMachine(PartitionStore(tmp_path / "p", sync=False))
    n = [0]

    def step(op: str, **f: Any) -> dict[str, Any]:
        n[0] += 1
        c = {"v": 1, "op": op, "org": "_", "ns": "ns", "now": 1000 + n[0], "rnd": f"{n[0]:032x}", **f}
        res = m.apply(n[0], encode(c))
        assert res is not None
        return res

    assert step("ns.register")["ok"]
    assert step("mig.begin", job="j1", claim=1)["ok"]
    assert step("mig.begin", job="j1", claim=2)["ok"]  # a successor takes over (idempotent begin)
    old = step("mig.fence", job="j1", claim=1)
    assert not old["ok"] and old["details"] == {"superseded": True}
    assert step("mig.unfence", job="j1", claim=2)["ok"]  # aborted: the job ends here
    late = step("mig.begin", job="j1", claim=2)
    assert not late["ok"] and late["details"] == {"superseded": True}
    assert step("mig.unfence", job="j1", claim=3)["ok"]  # closing steps stay accepted (idempotent)
    assert step("wf.start", start={"type": "T", "workflowId": "w"})["ok"]  # nothing fences the shard
    assert step("mig.begin", job="j2", claim=1)["ok"]  # another job may move it


def test_a_claim_of_an_older_meta_term_is_refused(tmp_path: Path) -> None:
    """A deposed meta leader resumed after a pause still believes it leads, and its
    claim may commit after the new leader's (it is forwarded): the term it led in
    fences it, so the job stays with the leader that replaced it."""
    _, apply = meta(tmp_path)
    assert apply({"op": "mig.claim", "id": "j1", "owner": "new", "token": "t1", "term": 7})["claim"] == 1
    stale = apply({"op": "mig.claim", "id": "j1", "owner": "old", "token": "t2", "term": 6})
    assert not stale["ok"] and stale["details"] == {"superseded": True}
    res = apply({"op": "mig.update", "id": "j1", "claim": 1, "status": "snapshotting"})
    assert res["ok"] and res["job"]["owner"] == "new"
    # the same term (two coordinators racing in one term) and later terms still claim
    assert apply({"op": "mig.claim", "id": "j1", "owner": "other", "token": "t3", "term": 7})["claim"] == 2
    assert apply({"op": "mig.claim", "id": "j1", "owner": "next", "token": "t4", "term": 9})["claim"] == 3
    assert not apply({"op": "mig.claim", "id": "j1", "owner": "old", "token": "t5", "term": 8})["ok"]
