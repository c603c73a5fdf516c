"""Proposals that wait for one partition at the same moment share a Raft entry
(``RaftReplicator._flush_proposals``, shard ``sys.batch``), and each caller gets
its own answer. Three in-process Raft nodes, real sockets, real LMDB.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hanzo_tasks.protocol.errors import ApiError

from tests.migration.inproc import ORG, Cluster, until

NS = "many"


def test_concurrent_starts_share_entries_and_each_gets_its_own_answer(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        c = Cluster(tmp_path)
        await c.start()
        try:
            meta = c.services[c.leader(2) or c.ids[0]]
            await meta.namespaces.register_namespace_in(ORG, NS, {})
            g = c.home(NS)
            lead = c.leader(g) or ""
            svc = c.services[lead]
            entries_before = c.reps[lead]._groups[g].raftCommitIndex

            async def start(i: int) -> Any:
                body = {"workflowId": f"w{i % 150}", "workflowType": {"name": "T"}, "requestId": f"r{i}"}
                try:
                    return await svc.workflows.start_workflow(ORG, NS, body)
                except ApiError as e:
                    return e.code

            answers = await asyncio.gather(*(start(i) for i in range(300)))
            entries = c.reps[lead]._groups[g].raftCommitIndex - entries_before
            want = c.reps[lead].store(g).applied_index()
            await until(lambda: all(r.store(g).applied_index() >= want for r in c.reps.values()), 10.0,
                        "replicas applying")
            hashes = {r.store(g).content_hash() for r in c.reps.values()}
            return {"answers": answers, "entries": entries, "coalesced": c.reps[lead].coalesced,
                    "hashes": hashes}
        finally:
            await c.stop()

    out = asyncio.run(scenario())
    answers = out["answers"]
    started = [a for a in answers[:150] if isinstance(a, dict)]
    assert len(started) == 150, answers[:150]
    # each caller got the answer of its own command, not a neighbour's in the entry
    assert [a["execution"]["workflowId"] for a in started] == [f"w{i}" for i in range(150)]
    assert len({a["execution"]["runId"] for a in started}) == 150
    # the second start of each id (another requestId) is refused on its own
    assert all(a == "already_started" for a in answers[150:]), answers[150:]
    assert out["coalesced"] > 0, "no proposal shared an entry"
    assert out["entries"] < 300, f"{out['entries']} entries for 300 proposals"
    assert len(out["hashes"]) == 1, "the replicas differ"
