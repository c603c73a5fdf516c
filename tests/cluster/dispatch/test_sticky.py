"""Sticky delivery (SPEC §5.6/§5.7): a run's next workflow task goes to the subscription
that completed its previous one, with only the events after that task's start.

The node runs in this process (``hanzo_tasks.testing``)."""

from __future__ import annotations

from hanzo_tasks.protocol.zap import Op

from tests.cluster.dispatch.test_dispatch import WF, RawWorker, events


def respond(w: RawWorker, task: dict, *commands: dict) -> dict:
    return w.call(Op.RespondWorkflowTaskCompleted, {"task_token": task["task_token"], "commands": list(commands)})


def test_next_task_goes_to_the_same_subscription_with_only_new_events(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    a, b = RawWorker(addr), RawWorker(addr)
    try:
        status, body = node.post(WF, {"workflowId": "st-1", "workflowType": {"name": "Job"},
                                      "taskQueue": {"name": "q"}})
        assert status == 200, body
        first_holder = None
        task = None
        for w in (a, b):
            try:
                task = w.next_task(timeout=3)
                first_holder = w
                break
            except (TimeoutError, OSError):
                continue
        assert first_holder is not None and task is not None
        assert task["full_history"] is True and task["previous_started_event_id"] == 0
        started = task["started_event_id"]
        assert respond(first_holder, task)["status"] == 200
        for k in range(3):  # each signal: a task for the same subscription, only the new events
            assert node.post(f"{WF}/st-1/signal", {"name": f"s{k}"})[0] == 200
            task = first_holder.next_task(timeout=5)
            assert task["full_history"] is False
            assert task["previous_started_event_id"] == started
            ids = [e["eventId"] for e in task["history"]]
            assert ids[0] == started + 1 and ids == list(range(ids[0], ids[0] + len(ids)))
            kinds = [e["eventType"] for e in task["history"]]
            assert kinds.count("WORKFLOW_EXECUTION_SIGNALED") == 1, kinds
            started = task["started_event_id"]
            assert respond(first_holder, task)["status"] == 200
        other = b if first_holder is a else a
        assert not other.pushes
    finally:
        a.close()
        b.close()


def test_after_a_failed_task_the_whole_history_is_delivered(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr)
    try:
        assert node.post(WF, {"workflowId": "st-2", "workflowType": {"name": "Job"},
                              "taskQueue": {"name": "q"}})[0] == 200
        task = w.next_task()
        assert respond(w, task)["status"] == 200
        assert node.post(f"{WF}/st-2/signal", {"name": "x"})[0] == 200
        task = w.next_task()
        assert task["full_history"] is False
        assert w.call(Op.RespondWorkflowTaskFailed, {"task_token": task["task_token"],
                                                      "failure": {"message": "boom"}})["status"] == 200
        task = w.next_task(timeout=10)  # retried after back-off, with everything
        assert task["full_history"] is True and task["history"][0]["eventId"] == 1
        assert "WORKFLOW_TASK_FAILED" in events(node, "st-2")
    finally:
        w.close()
