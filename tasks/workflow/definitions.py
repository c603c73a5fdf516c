"""What a durable workflow and an activity are before they run: names, options, handlers.

Why a module of its own: the decorators are the user's first contact with the
durable-code way and everything else (the worker, the executor, a client that
starts a workflow by its function) only needs the small definition objects
they attach, ``fn.__tasks_workflow__`` and ``fn.__tasks_activity__``.
The decorated function is returned unchanged, so it can still be called (an
activity from a test, a workflow class instantiated by hand).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar, overload

from hanzo_tasks.errors import InvalidArgument
from hanzo_tasks.protocol.names import is_id

__all__ = [
    "ActivityDefinition",
    "RetryPolicy",
    "WorkflowDefinition",
    "activity",
    "activity_definition",
    "query",
    "signal",
    "workflow_definition",
]

F = TypeVar("F", bound=Callable[..., Any])


def _ms(value: timedelta | None, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, timedelta):
        raise InvalidArgument(f"{what} must be a datetime.timedelta, not {type(value).__name__}")
    ms = int(value.total_seconds() * 1000)
    if ms <= 0:
        raise InvalidArgument(f"{what} must be positive")
    return ms


@dataclass(frozen=True)
class RetryPolicy:
    """How the server retries an activity or a workflow (SPEC §5.1 RetryPolicy).

    ``maximum_attempts=0`` means unlimited; ``maximum_interval`` defaults on the
    server to 100 x ``initial_interval``.
    """

    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = 2.0
    maximum_interval: timedelta | None = None
    maximum_attempts: int = 0
    non_retryable_error_types: tuple[str, ...] = field(default_factory=tuple)

    def to_zap(self) -> dict[str, Any]:
        """The ZAP form (snake_case, milliseconds) a command carries."""
        out: dict[str, Any] = {
            "initial_interval_ms": _ms(self.initial_interval, "initial_interval"),
            "backoff_coefficient": float(self.backoff_coefficient),
            "maximum_attempts": int(self.maximum_attempts),
            "non_retryable_error_types": list(self.non_retryable_error_types),
        }
        if self.maximum_interval is not None:
            out["maximum_interval_ms"] = _ms(self.maximum_interval, "maximum_interval")
        return out


@dataclass(frozen=True)
class ActivityDefinition:
    """An activity type: its name and the function a worker calls for it."""

    name: str
    fn: Callable[..., Any]


@dataclass(frozen=True)
class WorkflowDefinition:
    """A workflow type: its name and how to build the coroutine that runs it.

    ``cls`` is set for a class-style workflow (a ``run`` method, and signal and
    query handlers marked with ``@signal`` / ``@query``); ``fn`` otherwise.
    """

    name: str
    fn: Callable[..., Any] | None = None
    cls: type | None = None
    signals: dict[str, str] = field(default_factory=dict)  # signal name -> method name
    queries: dict[str, str] = field(default_factory=dict)  # query name -> method name

    def instantiate(self) -> tuple[Any, Callable[..., Any]]:
        """A fresh instance (None for a function) and the ``run`` callable to drive."""
        if self.cls is None:
            assert self.fn is not None
            return None, self.fn
        instance = self.cls()
        return instance, instance.run


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not is_id(name):
        raise InvalidArgument(f"invalid {what} name {name!r}")
    return name


def _default_name(obj: Any) -> str:
    return str(getattr(obj, "__name__", type(obj).__name__))


def _make_workflow(target: Any, name: str | None) -> Any:
    wf_name = _check_name(name or _default_name(target), "workflow")
    if inspect.isclass(target):
        run = getattr(target, "run", None)
        if run is None or not inspect.iscoroutinefunction(run):
            raise InvalidArgument(f"workflow class {target.__name__} needs an `async def run`")
        signals: dict[str, str] = {}
        queries: dict[str, str] = {}
        for attr, value in vars(target).items():
            sig = getattr(value, "__tasks_signal__", None)
            if sig is not None:
                signals[sig] = attr
            q = getattr(value, "__tasks_query__", None)
            if q is not None:
                queries[q] = attr
        target.__tasks_workflow__ = WorkflowDefinition(  # type: ignore[attr-defined]
            wf_name, cls=target, signals=signals, queries=queries
        )
        return target
    if not inspect.iscoroutinefunction(target):
        raise InvalidArgument(f"@workflow needs an `async def` (or a class), got {target!r}")
    target.__tasks_workflow__ = WorkflowDefinition(wf_name, fn=target)
    return target


@overload
def workflow_definition(target: F, *, name: str | None = None) -> F: ...
@overload
def workflow_definition(target: None = None, *, name: str | None = None) -> Callable[[F], F]: ...
def workflow_definition(target: Any = None, *, name: str | None = None) -> Any:
    """``@workflow`` / ``@workflow(name="...")`` on an ``async def`` or a class with ``run``."""
    if target is None:
        return lambda t: _make_workflow(t, name)
    return _make_workflow(target, name)


def _make_activity(fn: Any, name: str | None) -> Any:
    if not callable(fn):
        raise InvalidArgument(f"@activity needs a function, got {fn!r}")
    fn.__tasks_activity__ = ActivityDefinition(
        _check_name(name or _default_name(fn), "activity"), fn
    )
    return fn


@overload
def activity(fn: F, *, name: str | None = None) -> F: ...
@overload
def activity(fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...
def activity(fn: Any = None, *, name: str | None = None) -> Any:
    """``@activity`` / ``@activity(name="...")`` on a sync or async function.

    The worker calls it as ``fn(input)`` (or ``fn()`` when it takes no
    parameter), on a thread pool when it is sync.
    """
    if fn is None:
        return lambda f: _make_activity(f, name)
    return _make_activity(fn, name)


def _marker(attr: str, fn: Any, name: str | None) -> Any:
    if fn is None:
        return lambda f: _marker(attr, f, name)
    setattr(fn, attr, _check_name(name or _default_name(fn), attr.strip("_")))
    return fn


def signal(fn: Any = None, *, name: str | None = None) -> Any:
    """Marks a method of a workflow class as the handler of signal ``name`` (default: its name)."""
    return _marker("__tasks_signal__", fn, name)


def query(fn: Any = None, *, name: str | None = None) -> Any:
    """Marks a method of a workflow class as the handler of query ``name`` (default: its name)."""
    return _marker("__tasks_query__", fn, name)


def workflow_definition_of(target: Any) -> WorkflowDefinition:
    """The definition ``@workflow`` attached, or InvalidArgument."""
    defn = getattr(target, "__tasks_workflow__", None)
    if not isinstance(defn, WorkflowDefinition):
        raise InvalidArgument(f"{target!r} is not a @workflow")
    return defn


def activity_definition(target: Any) -> ActivityDefinition:
    """The definition ``@activity`` attached, or InvalidArgument."""
    defn = getattr(target, "__tasks_activity__", None)
    if not isinstance(defn, ActivityDefinition):
        raise InvalidArgument(f"{target!r} is not an @activity")
    return defn
