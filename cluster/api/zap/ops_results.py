"""GetWorkflowResult (0x006C): the long poll of SPEC §5.6 "Waiting for a result" on ZAP.

The same service call as ``GET NS/workflows/{id}/result``; the answer is always
a 200 response whose ``status`` says whether the run closed (a RUNNING or
CANCELING status means ``wait_ms`` passed first: ask again). Fields are
snake_case; a ``failure`` is a record and keeps its camelCase form (SPEC §0).
"""

from __future__ import annotations

from hanzo_tasks.cluster.api.zap.call import Call
from hanzo_tasks.cluster.api.zap.fields import Json, boolean, integer, run_id, text
from hanzo_tasks.cluster.service import results as RES


async def op_workflow_result(c: Call) -> Json:
    b = c.body
    wait = integer(b, "wait_ms", lo=0, hi=RES.MAX_WAIT_MS)
    follow = boolean(b, "follow")
    answer = await c.service.results.workflow_result(
        c.org, c.ns, text(b, "workflow_id", required=True), run_id(b),
        wait_ms=RES.DEFAULT_WAIT_MS if wait is None else wait, follow=True if follow is None else follow,
    )
    out: Json = {"status": answer["status"], "run_id": answer.get("runId") or ""}
    for camel, snake in (("result", "result"), ("failure", "failure"), ("nextRunId", "next_run_id")):
        if camel in answer:
            out[snake] = answer[camel]
    return out
