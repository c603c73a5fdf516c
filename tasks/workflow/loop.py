"""The deterministic event loop that workflow coroutines run on.

Why our own loop: asyncio's real loop reads the monotonic clock, selects on
sockets and runs threads, none of which replays. This one only has a ready
queue: ``call_soon`` appends, and the executor drains it until nothing is
ready (the workflow is then blocked on something only history can resolve).
``call_later`` (what ``asyncio.sleep`` and ``asyncio.wait_for`` use) becomes a
durable timer, so plain asyncio code gets durable time for free; ``time()``
is the workflow task's time from history. Everything that would do I/O raises.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
from asyncio import events
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hanzo_tasks.workflow.errors import WorkflowSandboxError

if TYPE_CHECKING:
    from hanzo_tasks.workflow.executor import WorkflowExecutor

__all__ = ["WorkflowLoop"]

log = logging.getLogger("hanzo_tasks.workflow")


class WorkflowLoop(asyncio.AbstractEventLoop):
    """A ready queue, durable timers and nothing else. Driven by its executor."""

    def __init__(self, executor: WorkflowExecutor) -> None:
        self._executor = executor
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._running = False
        self._closed = False

    # -- what coroutines need ------------------------------------------------------

    def time(self) -> float:
        return self._executor.now_ms / 1000.0

    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., Any], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., Any],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self._executor.start_timer(delay, callback, args, context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., Any],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_later(when - self.time(), callback, *args, context=context)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        self._executor.cancel_timer(handle)

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(self, coro: Any, *, name: str | None = None, context: Any = None) -> Any:
        if context is None:
            return asyncio.Task(coro, loop=self, name=name)
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._ready.clear()

    def get_exception_handler(self) -> Any:
        return None

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        # "Task was destroyed but it is pending" when an evicted workflow is dropped,
        # exceptions nobody retrieved: worth a debug line, not a failure.
        log.debug("workflow loop: %s", context.get("message"), exc_info=context.get("exception"))

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.call_exception_handler(context)

    # -- driving --------------------------------------------------------------------

    def run_ready(self, before_each: Callable[[], None]) -> None:
        """Run callbacks until none is ready; ``before_each`` runs before every one."""
        previous = events._get_running_loop()
        events._set_running_loop(self)
        self._running = True
        try:
            while self._ready:
                handle = self._ready.popleft()
                if handle.cancelled():
                    continue
                before_each()
                handle._run()
        finally:
            self._running = False
            events._set_running_loop(previous)

    def schedule(self, handle: asyncio.Handle) -> None:
        """Make a fired timer's callback ready."""
        self._ready.append(handle)

    @property
    def has_ready(self) -> bool:
        return bool(self._ready)

    # -- what workflow code may not do ------------------------------------------------

    def _forbidden(self, what: str) -> Any:
        raise WorkflowSandboxError(
            f"{what} is not allowed in workflow code: do I/O and threads in an activity"
        )

    def call_soon_threadsafe(self, *args: Any, **kw: Any) -> Any:  # type: ignore[override]
        return self._forbidden("call_soon_threadsafe")

    def run_in_executor(self, *args: Any, **kw: Any) -> Any:  # type: ignore[override]
        return self._forbidden("run_in_executor (asyncio.to_thread)")

    async def getaddrinfo(self, *args: Any, **kw: Any) -> Any:
        return self._forbidden("getaddrinfo")

    async def create_connection(self, *args: Any, **kw: Any) -> Any:
        return self._forbidden("create_connection (asyncio.open_connection)")

    async def create_server(self, *args: Any, **kw: Any) -> Any:
        return self._forbidden("create_server")

    async def subprocess_exec(self, *args: Any, **kw: Any) -> Any:
        return self._forbidden("subprocess_exec")

    async def subprocess_shell(self, *args: Any, **kw: Any) -> Any:
        return self._forbidden("subprocess_shell")

    def run_forever(self) -> None:
        self._forbidden("run_forever")

    def run_until_complete(self, future: Any) -> Any:
        return self._forbidden("run_until_complete")
