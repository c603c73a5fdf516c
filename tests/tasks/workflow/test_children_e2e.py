"""Child workflows end to end: durable parent code, the server's child commands
(shard/children.py) and a durable child, on a real node in this process."""

from __future__ import annotations

from typing import Any

import hanzo_tasks as tasks
import pytest
from hanzo_tasks.testing import TestNode
from hanzo_tasks.workflow import ChildWorkflowError, Replayer

NS = "/v1/tasks/namespaces/default/workflows"


@tasks.workflow(name="child-square")
async def square(n: int) -> int:
    if n < 0:
        raise ValueError("no negative numbers")
    return n * n


@tasks.workflow(name="parent-sum")
async def parent(ns: list[int]) -> dict[str, Any]:
    total = 0
    for n in ns:
        total += await tasks.workflow.execute_child_workflow(square, n, id=f"sq-{n}")
    try:
        await tasks.workflow.execute_child_workflow(square, -1, id="sq-neg")
        failed = ""
    except ChildWorkflowError as e:
        failed = str(e)
    return {"total": total, "failed": failed}


@pytest.mark.timeout(60)
def test_a_durable_parent_runs_children_and_gets_their_results_and_failures() -> None:
    with TestNode() as node:
        client = node.client()
        worker = tasks.Worker(client, "kids", workflows=[parent, square])
        worker.start()
        try:
            handle = client.start(parent, [2, 3], id="p-1", task_queue="kids")
            result = handle.result(timeout=30)
            assert result["total"] == 13, result
            assert "no negative numbers" in result["failed"], result
            status, child = node.get(f"{NS}/sq-3")
            assert status == 200 and child["workflowExecutionInfo"]["result"] == 9, child
            status, history = node.get(f"{NS}/p-1/history")
            assert status == 200
            kinds = [e["eventType"] for e in history["events"]]
            assert kinds.count("CHILD_WORKFLOW_EXECUTION_COMPLETED") == 2, kinds
            assert kinds.count("CHILD_WORKFLOW_EXECUTION_FAILED") == 1, kinds
            Replayer([parent, square]).replay(history, workflow_id="p-1")
        finally:
            worker.stop()
