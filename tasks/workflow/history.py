"""Reading history events as the server renders them (SPEC §5.5).

Why a module of its own: the same events reach the executor from a workflow
task push (0xB0), from paging (0x0066) and from a user's saved
``GET NS/workflows/{id}/history`` answer; this is the one place that knows
their shape (``eventId``, ``eventType``, ``eventTime`` as RFC 3339,
``attributes``) and tolerates the snake_case spelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hanzo_tasks.errors import InvalidArgument
from hanzo_tasks.protocol.timefmt import parse_time

__all__ = ["Event", "events_of", "history_of_attempt"]


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    time_ms: int
    attrs: dict[str, Any]

    def attr(self, *names: str) -> Any:
        """The first attribute present among ``names`` (camelCase first, then snake_case)."""
        for n in names:
            if n in self.attrs:
                return self.attrs[n]
        return None

    def name_of(self, key: str) -> str | None:
        """``attrs[key]["name"]`` (``activityType{name}``) or a plain string."""
        v = self.attrs.get(key)
        if isinstance(v, dict):
            v = v.get("name")
        return v if isinstance(v, str) else None

    def summary(self) -> str:
        keys = ("activityId", "activityType", "timerId", "markerName", "workflowId", "workflowType",
                "scheduledEventId", "signalName")
        parts = []
        for k in keys:
            if k in self.attrs:
                v = self.attrs[k]
                if isinstance(v, dict) and "name" in v:
                    v = v["name"]
                parts.append(f"{k}={v!r}")
        return f"event {self.id} {self.type}" + (f"({', '.join(parts)})" if parts else "")


def _time_ms(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            return parse_time(v)
        except ValueError:
            pass
    return 0


def event_of(raw: Any) -> Event:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"a history event is a map, not {type(raw).__name__}")
    eid = raw.get("eventId", raw.get("event_id"))
    etype = raw.get("eventType", raw.get("event_type"))
    if not isinstance(eid, int) or not isinstance(etype, str):
        raise InvalidArgument(f"history event without eventId/eventType: {raw!r:.200}")
    etype = etype.upper()
    if etype.startswith("EVENT_TYPE_"):
        etype = etype[len("EVENT_TYPE_"):]
    attrs = raw.get("attributes")
    return Event(eid, etype, _time_ms(raw.get("eventTime", raw.get("event_time"))),
                 attrs if isinstance(attrs, dict) else {})


def events_of(history: Any) -> list[Event]:
    """Events from a list, or from a history answer ``{"events": [...]}`` (or ``{"history": ...}``)."""
    if isinstance(history, dict):
        history = history.get("events", history.get("history"))
    if not isinstance(history, list):
        raise InvalidArgument("history must be a list of events or {'events': [...]}")
    out = sorted((event_of(e) for e in history), key=lambda e: e.id)
    return out


def history_of_attempt(events: list[Event]) -> list[Event]:
    """What the current workflow attempt replays: event 1 and what follows the last
    WORKFLOW_EXECUTION_ATTEMPT_FAILED (the attempt before it is gone, SPEC §5.6)."""
    last = None
    for i, e in enumerate(events):
        if e.type == "WORKFLOW_EXECUTION_ATTEMPT_FAILED":
            last = i
    if last is None:
        return events
    return [e for e in events[:1] if e.id == 1] + events[last + 1:]
