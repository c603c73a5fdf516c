"""Local mode (SPEC §2.3): runners, calling rules, now(), stop()."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from typing import Any

import hanzo_tasks as tasks
import pytest
from hanzo_tasks import client as client_mod

from .conftest import Counter, wait_until

# -- interval runners -----------------------------------------------------------


def test_interval_runs_repeatedly_first_after_one_interval(local: tasks.Client) -> None:
    fn = Counter()
    added = time.monotonic()
    local.add("tick", "40ms", fn)
    assert wait_until(lambda: fn.count >= 3)
    first_at = fn.calls[0][0]
    assert first_at - added >= 0.035  # one interval after add, not at once
    assert all(args == (None,) for _, args in fn.calls)


def test_sub_second_and_whitespace_specs(local: tasks.Client) -> None:
    fn = Counter()
    local.add("fast", "  5ms \n", fn)
    assert wait_until(lambda: fn.count >= 5)


@pytest.mark.parametrize("spec", ["500us", "0", "0s", "-1s"])
def test_interval_below_one_ms_is_rejected(local: tasks.Client, spec: str) -> None:
    with pytest.raises(tasks.InvalidArgument):
        local.add("x", spec, lambda: None)


def test_readd_cancels_previous_runner(local: tasks.Client) -> None:
    old, new = Counter(), Counter()
    local.add("job", "40ms", old)
    local.add("job", "40ms", new)
    assert wait_until(lambda: new.count >= 3)
    assert old.count == 0


def test_readd_can_change_spec_and_fn(local: tasks.Client) -> None:
    old, new = Counter(), Counter()
    local.add("job", "20ms", old)
    assert wait_until(lambda: old.count >= 2)
    local.add("job", "25ms", new)
    time.sleep(0.05)  # a run of the old fn may have been in flight
    frozen = old.count
    assert wait_until(lambda: new.count >= 3)
    assert old.count == frozen


def test_runs_never_overlap_and_missed_ticks_are_skipped(local: tasks.Client) -> None:
    active = 0
    max_active = 0
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def slow() -> None:
        nonlocal active, max_active
        with lock:
            active += 1
            max_active = max(max_active, active)
        start = time.monotonic()
        time.sleep(0.12)
        with lock:
            active -= 1
            spans.append((start, time.monotonic()))

    local.add("slow", "20ms", slow)
    assert wait_until(lambda: len(spans) >= 3, timeout=5)
    assert max_active == 1
    # Ticks that fell inside a run were skipped, not queued: each run starts
    # after the previous one ended, at the next tick (<= one interval later).
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end
        assert start - end < 0.5  # generous; about one tick


def test_slow_sync_fn_does_not_delay_others(local: tasks.Client) -> None:
    release = threading.Event()
    fast = Counter()
    local.add("slow", "10ms", lambda: release.wait(5))
    local.add("fast", "20ms", fast)
    try:
        assert wait_until(lambda: fast.count >= 5)
    finally:
        release.set()


def test_slow_async_fn_does_not_delay_others(local: tasks.Client) -> None:
    fast = Counter()

    async def slow() -> None:
        await asyncio.sleep(5)

    local.add("slow", "10ms", slow)
    local.add("fast", "20ms", fast)
    assert wait_until(lambda: fast.count >= 5)


def test_async_fns_run_on_one_background_loop(local: tasks.Client) -> None:
    seen: list[tuple[Any, ...]] = []
    loops: set[int] = set()
    threads: set[str] = set()

    async def with_arg(x: Any) -> None:
        await asyncio.sleep(0)
        loops.add(id(asyncio.get_running_loop()))
        threads.add(threading.current_thread().name)
        seen.append(("a", x))

    async def no_arg() -> None:
        loops.add(id(asyncio.get_running_loop()))
        threads.add(threading.current_thread().name)
        seen.append(("b",))

    local.add("a", "15ms", with_arg)
    local.add("b", "15ms", no_arg)
    assert wait_until(lambda: ("a", None) in seen and ("b",) in seen)
    assert len(loops) == 1
    assert threads == {"tasks-loop"}
    assert threading.current_thread().name not in threads


class _AsyncCallable:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


def test_calling_rules(local: tasks.Client) -> None:
    got: dict[str, Any] = {}

    def zero() -> None:
        got["zero"] = ()

    def one(x: Any) -> None:
        got["one"] = x

    def varargs(*args: Any) -> None:
        got["varargs"] = args

    def kw_only(*, flag: bool = True) -> None:
        got["kw_only"] = flag

    sync_returning_coro_ran = threading.Event()

    async def inner() -> None:
        sync_returning_coro_ran.set()

    obj = _AsyncCallable()
    local.add("zero", "10ms", zero)
    local.add("one", "10ms", one)
    local.add("varargs", "10ms", varargs)
    local.add("kw_only", "10ms", kw_only)
    local.add("lambda", "10ms", lambda: inner())
    local.add("obj", "10ms", obj)
    assert wait_until(lambda: len(got) == 4 and obj.calls > 0 and sync_returning_coro_ran.is_set())
    assert got == {"zero": (), "one": None, "varargs": (None,), "kw_only": True}


def test_exception_is_logged_and_runner_continues(
    local: tasks.Client, caplog: pytest.LogCaptureFixture
) -> None:
    calls = Counter()

    def boom() -> None:
        calls()
        raise RuntimeError("kaput")

    async def aboom() -> None:
        raise KeyError("akaput")

    caplog.set_level(logging.ERROR, logger="tasks")
    local.add("boom", "15ms", boom)
    local.add("aboom", "15ms", aboom)
    assert wait_until(lambda: calls.count >= 3)
    assert wait_until(
        lambda: any("schedule aboom failed" in r.getMessage() for r in caplog.records)
    )
    msgs = [r for r in caplog.records if r.getMessage() == "schedule boom failed"]
    assert msgs and msgs[0].exc_info and "kaput" in str(msgs[0].exc_info[1])


# -- cron runners -----------------------------------------------------------------


def test_every_descriptor_runs_locally_with_ms_precision(local: tasks.Client) -> None:
    fn = Counter()
    local.add("every", "@every 30ms", fn)
    assert wait_until(lambda: fn.count >= 3)


def test_cron_runner_fires_at_each_next_match(
    local: tasks.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []

    class FakeCron:
        every_ms = None

        def next_after(self, t_ms: int) -> int:
            asked.append(t_ms)
            return t_ms + 30

    monkeypatch.setattr(client_mod, "compile_cron", lambda expr: FakeCron())
    fn = Counter()
    local.add("cron", "*/5 * * * *", fn)
    assert wait_until(lambda: fn.count >= 3)
    # Each match is computed after the current time and after the last match.
    assert asked == sorted(asked)


def test_cron_that_never_matches_just_never_runs(
    local: tasks.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Never:
        every_ms = None

        def next_after(self, t_ms: int) -> None:
            return None

    monkeypatch.setattr(client_mod, "compile_cron", lambda expr: Never())
    local.add("never", "0 0 30 2 *", lambda: None)  # accepted, no error, no run


def test_real_cron_every_second(local: tasks.Client) -> None:
    fn = Counter()
    local.add("sec", "* * * * * *", fn)  # 6 fields: every second
    assert wait_until(lambda: fn.count >= 1, timeout=3)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", 'empty schedule for "x"'),
        ("   ", 'empty schedule for "x"'),
        ("1d", '"1d" is neither a duration nor a cron expression: '),
        ("every day", '"every day" is neither a duration nor a cron expression: '),
        ("TZ=Nowhere/Land 0 3 * * *", "is neither a duration nor a cron expression: "),
    ],
)
def test_bad_specs(local: tasks.Client, spec: str, message: str) -> None:
    with pytest.raises(tasks.InvalidArgument) as ei:
        local.add("x", spec, lambda: None)
    assert message in str(ei.value)
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "tab\there", "x" * 201, 5])
def test_bad_names(local: tasks.Client, name: Any) -> None:
    with pytest.raises(tasks.InvalidArgument):
        local.add(name, "1s", lambda: None)


def test_fn_must_be_callable(local: tasks.Client) -> None:
    with pytest.raises(tasks.InvalidArgument):
        local.add("x", "1s", "not callable")  # type: ignore[arg-type]


# -- now() ----------------------------------------------------------------------


def test_now_runs_added_fn_with_payload(local: tasks.Client) -> None:
    fn = Counter()
    local.add("email", "1h", fn)
    rid = local.now("email", {"to": "a@b"})
    assert re.fullmatch(r"local-[0-9a-f]{8}", rid)
    assert wait_until(lambda: fn.count == 1)
    assert fn.calls[0][1] == ({"to": "a@b"},)


def test_now_calls_zero_arg_fn_without_payload(local: tasks.Client) -> None:
    done = threading.Event()
    local.add("ping", "1h", lambda: done.set())
    local.now("ping", "ignored")
    assert done.wait(3)


def test_now_async_fn(local: tasks.Client) -> None:
    got: list[Any] = []

    async def fn(p: Any) -> None:
        got.append(p)

    local.add("a", "1h", fn)
    local.now("a", [1, 2])
    assert wait_until(lambda: got == [[1, 2]])


def test_now_falls_back_to_handler() -> None:
    got: list[tuple[str, Any]] = []
    with tasks.Client(handler=lambda t, p: got.append((t, p))) as c:
        c.add("mine", "1h", lambda p: got.append(("fn", p)))
        c.now("other", 7)
        c.now("mine", 8)
        assert wait_until(lambda: len(got) == 2)
    assert sorted(got, key=str) == [("fn", 8), ("other", 7)]


def test_now_without_fn_or_handler_raises(local: tasks.Client) -> None:
    with pytest.raises(tasks.NoHandler) as ei:
        local.now("nobody")
    assert ei.value.code == "no_handler"


def test_now_returns_at_once_and_ids_are_unique(local: tasks.Client) -> None:
    release = threading.Event()
    local.add("slow", "1h", lambda p: release.wait(5))
    try:
        t0 = time.monotonic()
        ids = {local.now("slow") for _ in range(20)}
        assert time.monotonic() - t0 < 1.0
        assert len(ids) == 20
    finally:
        release.set()


def test_now_exceptions_are_logged_not_raised(
    local: tasks.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tasks")

    def bad(p: Any) -> None:
        raise ValueError("nope")

    local.add("bad", "1h", bad)
    rid = local.now("bad")
    assert wait_until(lambda: any(rid in r.getMessage() for r in caplog.records))


def test_now_validates_arguments(local: tasks.Client) -> None:
    local.add("t", "1h", lambda: None)
    with pytest.raises(tasks.InvalidArgument):
        local.now("a/b")
    with pytest.raises(tasks.InvalidArgument):
        local.now("t", workflow_id="..")
    with pytest.raises(tasks.InvalidArgument):
        local.now("t", request_id="has space")
    with pytest.raises(tasks.InvalidArgument):
        local.now("t", retry_policy="fast")  # type: ignore[arg-type]


def test_concurrent_now_from_many_threads(local: tasks.Client) -> None:
    fn = Counter()
    local.add("n", "1h", fn)
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for i in range(25):
            local.now("n", i)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wait_until(lambda: fn.count == 200)


# -- stop() -----------------------------------------------------------------------


def test_stop_ends_runners_and_rejects_calls() -> None:
    c = tasks.Client()
    fn = Counter()
    c.add("t", "10ms", fn)
    assert wait_until(lambda: fn.count >= 2)
    engine = c._engine
    assert engine is not None
    c.stop()
    assert not engine._thread.is_alive()  # the background loop is gone
    after = fn.count
    time.sleep(0.08)
    assert fn.count == after
    with pytest.raises(tasks.FailedPrecondition, match="client stopped"):
        c.add("t", "10ms", fn)
    with pytest.raises(tasks.FailedPrecondition, match="client stopped"):
        c.now("t")
    c.stop()  # idempotent


def test_stop_waits_for_run_in_progress() -> None:
    c = tasks.Client()
    started, finished = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        time.sleep(0.2)
        finished.set()

    c.add("slow", "5ms", slow)
    assert started.wait(3)
    c.stop(timeout=5)
    assert finished.is_set()


def test_stop_timeout_cancels_async_runs() -> None:
    c = tasks.Client()
    started = threading.Event()
    cancelled = threading.Event()

    async def forever(p: Any) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    c.add("f", "1h", forever)
    c.now("f")
    assert started.wait(3)
    t0 = time.monotonic()
    c.stop(timeout=0.1)
    assert time.monotonic() - t0 < 3
    assert cancelled.wait(3)


def _stopper(c: tasks.Client, done: threading.Event, is_async: bool) -> Any:
    """A zero-argument fn that stops its own client from inside a run."""
    if is_async:

        async def afn() -> None:
            c.stop(timeout=5)
            done.set()

        return afn

    def fn() -> None:
        c.stop(timeout=5)
        done.set()

    return fn


@pytest.mark.parametrize("is_async", [False, True])
def test_stop_from_inside_fns_does_not_deadlock(is_async: bool) -> None:
    c = tasks.Client()
    returned = threading.Event()
    c.add("x", "10ms", _stopper(c, returned, is_async))
    assert returned.wait(3)
    with pytest.raises(tasks.FailedPrecondition):
        c.now("x")


def test_astop_from_inside_async_fn() -> None:
    c = tasks.Client()
    returned = threading.Event()

    async def fn() -> None:
        await c.astop(timeout=5)
        returned.set()

    c.add("x", "10ms", fn)
    assert returned.wait(3)


def test_context_managers() -> None:
    fn = Counter()
    with tasks.Client() as c:
        c.add("t", "10ms", fn)
        assert wait_until(lambda: fn.count >= 1)
    with pytest.raises(tasks.FailedPrecondition):
        c.now("t")

    async def main() -> tasks.Client:
        async with tasks.Client() as ac:
            await ac.aadd("t", "10ms", fn)
            assert await ac.anow("t", 1)
        return ac

    ac = asyncio.run(main())
    with pytest.raises(tasks.FailedPrecondition):
        ac.now("t")


def test_async_variants() -> None:
    got: list[Any] = []

    async def main() -> str:
        c = tasks.Client()
        await c.aadd("a", "1h", lambda p: got.append(p))
        rid = await c.anow("a", "payload")
        assert wait_until(lambda: got == ["payload"])
        await c.astop()
        with pytest.raises(tasks.FailedPrecondition):
            await c.anow("a")
        return rid

    assert asyncio.run(main()).startswith("local-")


def test_construction_starts_no_threads() -> None:
    before = threading.active_count()
    c = tasks.Client()
    assert threading.active_count() == before
    c.stop()
    assert threading.active_count() == before
