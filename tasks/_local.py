"""The in-process engine behind local mode (SPEC §2.3), and the fallback.

One background event loop on a daemon thread owns every timer, so many
runners cost one thread, not one each. Coroutine functions run on that loop;
sync functions run on a thread pool, so a slow ``fn`` delays neither its loop
nor other runners. A runner awaits its own run before it computes its next
tick, which is what makes runs of one schedule never overlap and makes ticks
missed during a run be skipped rather than queued.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("tasks")

# A cron sleep is cut into slices so that a wall-clock step (NTP, suspend)
# delays a fire by at most this long.
_CRON_SLICE_S = 60.0

# Set on pool threads while they run a user function, so that stop() called
# from inside an fn does not wait for that very fn.
_in_fn = threading.local()


def wants_arg(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` takes a positional parameter (SPEC §2.3 calling rule).

    Callables whose signature cannot be read (some builtins) are given the
    argument: passing one to a function that wants it is the safer guess.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    return any(p.kind in positional for p in sig.parameters.values())


def is_async(fn: Callable[..., Any]) -> bool:
    """True for coroutine functions, including objects with an ``async __call__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the bound __call__
    return call is not None and inspect.iscoroutinefunction(call)


class Call:
    """A user function with its arguments, decided once at ``add``/``now`` time."""

    __slots__ = ("fn", "args", "is_async")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.is_async = is_async(fn)

    def run_sync(self) -> Any:
        _in_fn.active = True
        try:
            return self.fn(*self.args)
        finally:
            _in_fn.active = False


class IntervalTiming:
    """Ticks at ``origin + k * period``; the first one is a period after ``add``."""

    def __init__(self, period_ms: int) -> None:
        self._period = period_ms / 1000.0
        self._origin = time.monotonic()
        self._k = 0

    async def wait(self) -> bool:
        now = time.monotonic()
        # The first tick strictly after both the last one and now: ticks that
        # passed while a run was in progress are skipped, not queued.
        k = max(self._k + 1, math.floor((now - self._origin) / self._period) + 1)
        self._k = k
        await asyncio.sleep(max(0.0, self._origin + k * self._period - now))
        return True


class CronTiming:
    """Fires at each match after the current wall-clock time.

    ``next_after(t_ms)`` gives the first match strictly after ``t_ms`` (epoch
    ms), or None when there is none: the runner then ends.
    """

    def __init__(self, next_after: Callable[[int], int | None]) -> None:
        self._next_after = next_after
        self._last_ms = 0

    async def wait(self) -> bool:
        now_ms = int(time.time() * 1000)
        due = self._next_after(max(now_ms, self._last_ms))
        if due is None:
            return False
        while True:
            left = due / 1000.0 - time.time()
            if left <= 0:
                break
            await asyncio.sleep(min(left, _CRON_SLICE_S))
        self._last_ms = due
        return True


class Timing(Protocol):
    async def wait(self) -> bool: ...


class LocalEngine:
    """Background loop + thread pool that run local-mode work for one client."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._pool = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="tasks-fn")
        self._runners: dict[str, concurrent.futures.Future[None]] = {}
        self._inflight: set[asyncio.Task[None]] = set()  # touched on the loop only
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="tasks-loop", daemon=True)
        self._thread.start()

    # -- thread side -------------------------------------------------------

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def in_engine_thread(self) -> bool:
        """True on the loop thread or inside a pool-run fn (where blocking deadlocks)."""
        return threading.current_thread() is self._thread or getattr(_in_fn, "active", False)

    def set_runner(self, name: str, timing: Timing, call: Call) -> None:
        """Start the runner ``name``, cancelling the previous one of that name.

        The caller serializes calls (the client's lock). An in-flight run of
        the previous runner is not interrupted; only its future ticks are.
        """
        old = self._runners.pop(name, None)
        if old is not None:
            old.cancel()
        self._runners[name] = asyncio.run_coroutine_threadsafe(
            self._runner(name, timing, call), self._loop
        )

    def cancel_runner(self, name: str) -> None:
        old = self._runners.pop(name, None)
        if old is not None:
            old.cancel()

    def submit(self, call: Call, label: str) -> None:
        """Run ``call`` once in the background; failures are logged as ``<label> failed``."""
        self._loop.call_soon_threadsafe(self._spawn, call, label)

    def close(self, timeout: float) -> None:
        """Stop runners, wait up to ``timeout`` for runs in flight, then cancel them.

        Called from inside a run (loop thread or a pool-run fn), it cannot
        wait for the runs without waiting for itself: it then schedules the
        same shutdown and returns at once.
        """
        if self._closed:
            return
        self._closed = True
        for fut in self._runners.values():
            fut.cancel()
        self._runners.clear()
        if self.in_engine_thread():
            self._loop.call_soon_threadsafe(self._loop.create_task, self._shutdown(timeout))
            self._pool.shutdown(wait=False, cancel_futures=True)
            return
        deadline = time.monotonic() + max(0.0, timeout)
        done = asyncio.run_coroutine_threadsafe(self._shutdown(timeout), self._loop)
        try:
            done.result(timeout=max(0.0, timeout) + 5.0)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(max(1.0, deadline - time.monotonic()))
        # Sync fns still running past the timeout cannot be interrupted; they
        # finish on their own and their threads then exit.
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- loop side ---------------------------------------------------------

    def _spawn(self, call: Call, label: str) -> asyncio.Task[None]:
        task = self._loop.create_task(self._invoke(call, label))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return task

    async def _runner(self, name: str, timing: Timing, call: Call) -> None:
        label = f"schedule {name}"
        while await timing.wait():
            # shield: cancelling the runner (re-add, stop) ends its ticks but
            # lets the run in progress finish; stop() cancels runs separately.
            await asyncio.shield(self._spawn(call, label))

    async def _invoke(self, call: Call, label: str) -> None:
        try:
            if call.is_async:
                await call.fn(*call.args)
            else:
                try:
                    pending = self._loop.run_in_executor(self._pool, call.run_sync)
                except RuntimeError:
                    # The pool refuses new work: the client is stopping or the
                    # interpreter is exiting. Nothing is left to run.
                    return
                result = await pending
                if inspect.isawaitable(result):
                    await result
        except asyncio.CancelledError:
            raise
        except BaseException:  # noqa: BLE001 - a failing fn must never kill the loop
            log.exception("%s failed", label)

    async def _shutdown(self, timeout: float) -> None:
        me = asyncio.current_task()
        runs = [t for t in self._inflight if t is not me]
        if runs and timeout > 0:
            await asyncio.wait(runs, timeout=timeout)
        rest = [t for t in asyncio.all_tasks(self._loop) if t is not me and not t.done()]
        for t in rest:
            t.cancel()
        if rest:
            await asyncio.gather(*rest, return_exceptions=True)
        self._loop.call_soon(self._loop.stop)
