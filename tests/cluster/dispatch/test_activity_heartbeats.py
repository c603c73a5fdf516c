"""Activity heartbeats over ZAP (SPEC §5.7): committed at most every min(10 s,
heartbeatTimeout / 2), yet they keep the attempt alive past its heartbeat timeout,
answer cancel requests, and a silent worker still times out.

The node runs in this process (``hanzo_tasks.testing``): its clock ticks with
real time (the throttle is real time) and is advanced past the heartbeat
timeout instead of sleeping through it."""

from __future__ import annotations

import time

from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.zap import Op

from tests.cluster.dispatch.test_dispatch import RawWorker
from tests.cluster.dispatch.test_relay import applied

ACTS = "/v1/tasks/namespaces/default/activities"


def take_activity(w: RawWorker, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while not any(f.opcode == Op.DeliverActivityTask for f, _ in w.pushes) and time.monotonic() < deadline:
        try:
            w._pump(0.3)
        except (TimeoutError, OSError):
            pass
    f, body = next((f, b) for f, b in w.pushes if f.opcode == Op.DeliverActivityTask)
    w.pushes.remove((f, body))
    w.sock.sendall(Z.encode_frame(Z.PUSH_ACK, f.opcode, f.frame_id, {"status": 200}))
    return body


def test_heartbeats_are_throttled_but_keep_the_attempt_alive(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr, tq="hb")
    try:
        assert w.call(Op.SubscribeActivityTasks, {"task_queue": "hb", "max_concurrent": 1})["status"] == 200
        status, act = node.post(ACTS, {"activityId": "beat", "activityType": {"name": "Slow"}, "taskQueue": "hb",
                                       "heartbeatTimeout": "2s", "startToCloseTimeout": "60s"})
        assert status == 200, act
        task = take_activity(w)
        before = applied(node, "act.heartbeat")
        began = time.monotonic()
        beats = 0
        while time.monotonic() - began < 4.5:  # well past the 2 s heartbeat timeout
            r = w.call(Op.RecordHeartbeat, {"task_token": task["task_token"], "details": {"n": beats}})
            assert r["status"] == 200 and r["body"]["cancel_requested"] is False, r
            beats += 1
            time.sleep(0.05)
        committed = applied(node, "act.heartbeat") - before
        assert beats > 40 and 3 <= committed <= 8, (beats, committed)  # about one per second
        rid = act["execution"]["runId"]
        status, d = node.get(f"{ACTS}/beat/{rid}")
        assert status == 200 and d["status"] == "ACTIVITY_TASK_STATE_STARTED", d
        assert d["heartbeatDetails"]["n"] > 0  # details of a committed beat
        assert node.post(f"{ACTS}/beat/{rid}/cancel", {"reason": "stop"})[0] == 200
        time.sleep(0.2)
        r = w.call(Op.RecordHeartbeat, {"task_token": task["task_token"]})
        assert r["status"] == 200 and r["body"]["cancel_requested"] is True, r
        node.clock.advance(3.0)  # silent past the heartbeat timeout: the attempt times out
        deadline = time.monotonic() + 10  # seen by the next run-timer scan (every 0.25 s); the
        while node.get(f"{ACTS}/beat/{rid}")[1]["status"] == "ACTIVITY_TASK_STATE_STARTED":  # worker is silent
            assert time.monotonic() < deadline, "the heartbeat timeout never fired"
            time.sleep(0.05)
        r = w.call(Op.RecordHeartbeat, {"task_token": task["task_token"]})
        assert r["status"] == 404, r
    finally:
        w.close()
