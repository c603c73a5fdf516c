"""Schedule specs: classification, cron, and nominal times (SPEC §2.2, §5.8).

Shared by the client (local runners) and the server (schedule timers, describe,
matching-times), so both compute the same times from the same spec.

Design notes:

* Cron expressions are parsed and iterated by ``croniter``. Before handing an
  expression over, each field is checked against the grammar of SPEC §2.2 so that
  croniter's extensions (``L``, ``W``, ``#``, ``H``, a 7th year field, ranges that
  wrap around) are rejected rather than silently accepted, and so that errors are
  readable. One croniter quirk is normalized away: it reads an equal range such as
  ``5-5`` as the whole field, whereas cron means just ``5``.
* dom/dow semantics follow SPEC §2.2 literally: OR only when *neither* field
  starts with ``*`` or ``?``; otherwise AND. So ``*/2`` counts as unrestricted.
* Time zones: croniter iterates naive wall-clock times of the zone and this module
  converts them to UTC itself, which gives the DST rule of the SPEC: a skipped
  local time does not fire; a repeated local time fires once, at its first
  occurrence (``fold=0``).
* All nominal times are whole seconds of epoch milliseconds.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import functools
import hashlib
import heapq
import re
import threading
import zoneinfo
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from croniter import CroniterBadDateError, CroniterError, croniter

from .durations import parse_duration
from .timefmt import format_time_seconds

__all__ = [
    "Cron",
    "HORIZON_YEARS",
    "ScheduleTimes",
    "SpecError",
    "classify",
    "compile_cron",
    "jitter_offset",
]

#: ``next_after`` gives up (returns None) when no match exists within this many
#: years, e.g. for ``0 0 30 2 *``.
HORIZON_YEARS = 5
_HORIZON_S = (HORIZON_YEARS * 366 + 1) * 86_400

#: SPEC §5.8: a schedule interval (including ``@every`` in a schedule) is at least 1 s.
MIN_INTERVAL_MS = 1000

_UTC_NAMES = frozenset({"UTC", "Etc/UTC"})
_EPOCH_NAIVE = _dt.datetime(1970, 1, 1)
_RUN_CACHE_MAX = 256


class SpecError(ValueError):
    """A schedule spec (interval, cron, time zone) is invalid.

    ``reason`` is the bare explanation without the expression, so that callers
    (``classify``) can embed it in their own message.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


# --------------------------------------------------------------------------- zones


@functools.lru_cache(maxsize=256)
def _zone_cached(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*", re.ASCII)


def _load_zone(name: str) -> zoneinfo.ZoneInfo:
    """IANA name -> ZoneInfo, or SpecError for anything zoneinfo cannot load."""
    if not isinstance(name, str) or not _ZONE_NAME.fullmatch(name):
        raise SpecError(f"unknown time zone {name!r}")
    try:
        return _zone_cached(name)
    except (ValueError, KeyError, OSError):
        raise SpecError(f"unknown time zone {name!r}") from None


# ----------------------------------------------------------------------- intervals


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _interval_next(t_ms: int, interval_ms: int, phase_ms: int) -> int:
    """First tick of ``phase + k*interval`` strictly after ``t_ms``, floored to a second.

    Ticks are floored to whole seconds (nominal times are whole seconds, and they
    appear in workflow ids). With interval >= 1 s, distinct ticks stay distinct.
    """
    boundary = (t_ms // 1000 + 1) * 1000  # first whole second > t_ms
    k = -((phase_ms - boundary) // interval_ms)  # ceil((boundary - phase) / interval)
    tick = phase_ms + k * interval_ms
    return tick - tick % 1000


# ---------------------------------------------------------------------------- cron


@dataclass(frozen=True)
class _Field:
    name: str
    lo: int
    hi: int
    names: dict[str, int] | None = None
    question_ok: bool = False


_MONTHS = {
    m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())
}
_DOWS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}

_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DOM = _Field("day-of-month", 1, 31, question_ok=True)
_MONTH = _Field("month", 1, 12, _MONTHS)
_DOW = _Field("day-of-week", 0, 7, _DOWS, question_ok=True)

_FIVE = (_MINUTE, _HOUR, _DOM, _MONTH, _DOW)
_SIX = (_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW)

_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_PART = re.compile(
    r"\*(?:/([0-9]+))?|([0-9a-z]+)(?:-([0-9a-z]+))?(?:/([0-9]+))?", re.ASCII | re.IGNORECASE
)
_TZ_PREFIX = re.compile(r"(?:CRON_TZ|TZ)=(\S*)(.*)", re.DOTALL)
_CRON_WS = re.compile(r"[ \t]+")


class _Bad(Exception):
    """Internal: a grammar violation, carrying the bare reason."""


def _value(token: str, f: _Field) -> int:
    low = token.lower()
    if low.isdigit():
        v = int(low)
    elif f.names is not None and low in f.names:
        v = f.names[low]
    else:
        raise _Bad(f"invalid {f.name} value {token!r}")
    if not f.lo <= v <= f.hi:
        raise _Bad(f"{f.name} value {v} out of range {f.lo}-{f.hi}")
    return v


def _check_field(text: str, f: _Field) -> str:
    """Validate one field against SPEC §2.2 and return the text to give croniter."""
    if text == "?":
        if not f.question_ok:
            raise _Bad(f"'?' is not allowed in the {f.name} field (only day-of-month/day-of-week)")
        return "?"
    out: list[str] = []
    parts = text.split(",")
    for part in parts:
        m = _PART.fullmatch(part) if part.isascii() else None
        if m is None:
            what = "empty list item" if not part else f"invalid item {part!r}"
            raise _Bad(f"{what} in the {f.name} field")
        star_step, start, end, step = m.groups()
        step = star_step if star_step is not None else step
        if step is not None and int(step) == 0:
            raise _Bad(f"step must be at least 1 in {part!r} ({f.name} field)")
        if start is None:  # `*` or `*/n`
            if step is None:
                if len(parts) > 1:
                    raise _Bad(f"'*' cannot be combined with other values in the {f.name} field")
                out.append("*")
            elif f is _DOM or f is _DOW:
                # Spell the range out: croniter decides dom/dow OR-vs-AND partly by
                # looking for '*' in the field text, and the SPEC decides by the
                # first character only (which _parse_cron passes as day_or).
                out.append(f"{f.lo}-{6 if f is _DOW else f.hi}/{step}")
            else:
                out.append(part)
            continue
        a = _value(start, f)
        if end is None:
            # `N/step` means N-max/step. In day-of-week, 7 is the last value, so
            # `7/n` is just Sunday (croniter would map 7 to 0 first and step from there).
            out.append("7" if (f is _DOW and a == 7 and step is not None) else part)
            continue
        b = _value(end, f)
        if a > b:
            raise _Bad(f"range {part!r} in the {f.name} field goes backwards")
        # croniter reads an equal range as the whole field; cron means the single value.
        out.append(str(a) if a == b else part)
    return ",".join(out)


def _parse_cron(expr: str, default_tz: str) -> Cron:
    text = expr.strip()
    if not text:
        raise _Bad("empty cron expression")
    tz_name = default_tz or "UTC"
    m = _TZ_PREFIX.fullmatch(text)
    if m is not None:
        tz_name, text = m.group(1), m.group(2).strip()
        if not tz_name:
            raise _Bad("missing time zone name after TZ= / CRON_TZ=")
        if not text:
            raise _Bad("missing cron expression after the time zone prefix")
    try:
        zone = _load_zone(tz_name)
    except SpecError as e:
        raise _Bad(e.reason) from None

    if text.startswith("@"):
        word, *rest = _CRON_WS.split(text, maxsplit=1)
        word, arg = word.lower(), (rest[0].strip() if rest else "")
        if word == "@every":
            if not arg:
                raise _Bad("@every needs a duration, e.g. '@every 5m'")
            try:
                every = parse_duration(arg)
            except ValueError as e:
                raise _Bad(f"@every: {e}") from None
            if every <= 0:
                raise _Bad(f"@every duration must be positive, got {arg!r}")
            return Cron(expr.strip(), tz_name, zone, every_ms=every)
        if word not in _DESCRIPTORS:
            raise _Bad(f"unknown descriptor {word!r}")
        if arg:
            raise _Bad(f"unexpected text after {word}: {arg!r}")
        text = _DESCRIPTORS[word]

    fields = [f for f in _CRON_WS.split(text) if f]
    if len(fields) not in (5, 6):
        raise _Bad(f"expected 5 or 6 fields, found {len(fields)}")
    six = len(fields) == 6
    defs = _SIX if six else _FIVE
    normalized = " ".join(_check_field(v, d) for v, d in zip(fields, defs, strict=True))
    dom, dow = fields[-3], fields[-1]
    day_or = dom[0] not in "*?" and dow[0] not in "*?"
    try:
        it = croniter(
            normalized,
            0.0,
            day_or=day_or,
            second_at_beginning=six,
            max_years_between_matches=HORIZON_YEARS,
        )
    except (CroniterError, ValueError, TypeError, KeyError, IndexError) as e:
        raise _Bad(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    never = False
    if not day_or:
        # Under AND semantics a day-of-month that no listed month has can never
        # match; detect it once instead of searching the horizon on every call.
        try:
            croniter.expand(normalized, second_at_beginning=six, strict=True)
        except CroniterError:
            never = True
    return Cron(expr.strip(), tz_name, zone, it=it, never=never)


@functools.lru_cache(maxsize=4096)
def _compile_cached(expr: str, default_tz: str) -> Cron:
    try:
        return _parse_cron(expr, default_tz)
    except _Bad as e:
        reason = str(e)
        raise SpecError(f"invalid cron expression {expr.strip()!r}: {reason}", reason) from None


def compile_cron(expr: str, default_tz: str = "UTC") -> Cron:
    """Compile a cron expression (SPEC §2.2 grammar) into a reusable :class:`Cron`.

    ``default_tz`` applies when the expression has no ``CRON_TZ=``/``TZ=`` prefix.
    Results are cached (compiled crons are shared and thread-safe), so calling
    this repeatedly with the same arguments is cheap. Raises :class:`SpecError`.
    """
    if not isinstance(expr, str):
        raise SpecError(f"cron expression must be a string, not {type(expr).__name__}")
    if not isinstance(default_tz, str):
        raise SpecError(f"time zone must be a string, not {type(default_tz).__name__}")
    return _compile_cached(expr, default_tz)


class Cron:
    """A compiled cron expression (or ``@every``), evaluated in one time zone.

    Attributes: ``expr`` (as given, trimmed), ``timezone`` (IANA name used) and
    ``every_ms`` (set only for ``@every``: an interval with phase 0).
    """

    __slots__ = (
        "expr",
        "timezone",
        "every_ms",
        "_zone",
        "_utc",
        "_it",
        "_never",
        "_lock",
        "_anchor",
        "_run",
    )

    def __init__(
        self,
        expr: str,
        timezone: str,
        zone: zoneinfo.ZoneInfo,
        *,
        every_ms: int | None = None,
        it: croniter | None = None,
        never: bool = False,
    ) -> None:
        self.expr = expr
        self.timezone = timezone
        self.every_ms = every_ms
        self._zone = zone
        self._utc = timezone in _UTC_NAMES
        self._it = it
        self._never = never
        self._lock = threading.Lock()
        # Run cache: _run holds consecutive matches, _run[0] being the first match
        # strictly after _anchor. Repeated and sequential queries (timers asking
        # again, `between`, catch-up) are then answered without croniter.
        self._anchor = 0
        self._run: list[int] = []

    def __repr__(self) -> str:
        return f"Cron({self.expr!r}, timezone={self.timezone!r})"

    def next_after(self, t_ms: int) -> int | None:
        """First matching instant strictly after ``t_ms`` (epoch ms, whole seconds).

        None when nothing matches within about :data:`HORIZON_YEARS` years.
        """
        if self.every_ms is not None:
            return _interval_next(t_ms, self.every_ms, 0)
        if self._never:
            return None
        with self._lock:
            run = self._run
            if run and self._anchor <= t_ms < run[-1]:
                return run[bisect.bisect_right(run, t_ms)]
            nxt = self._compute(t_ms)
            if nxt is None:
                return None
            if run and t_ms == run[-1]:
                run.append(nxt)
                if len(run) > _RUN_CACHE_MAX:
                    half = _RUN_CACHE_MAX // 2
                    self._anchor = run[half - 1]
                    del run[:half]
            else:
                self._anchor = t_ms
                self._run = [nxt]
            return nxt

    # -- croniter plumbing (called with the lock held: croniter objects are stateful)

    def _croniter_next(self, naive_s: int) -> int | None:
        """Next match strictly after ``naive_s`` (wall-clock seconds, read as UTC)."""
        assert self._it is not None
        try:
            return int(self._it.get_next(float, start_time=float(naive_s)))
        except (CroniterBadDateError, OverflowError, ValueError, OSError):
            return None

    def _compute(self, t_ms: int) -> int | None:
        t_s = t_ms // 1000  # a whole-second match is > t_ms iff it is > floor(t_ms)
        if self._utc:
            r = self._croniter_next(t_s)
            return None if r is None else r * 1000
        try:
            return self._compute_zoned(t_s)
        except (OverflowError, ValueError, OSError):  # beyond datetime's years 1..9999
            return None

    def _compute_zoned(self, t_s: int) -> int | None:
        offset = _dt.datetime.fromtimestamp(t_s, self._zone).utcoffset()
        assert offset is not None
        cur = t_s + int(offset.total_seconds())
        limit = cur + _HORIZON_S
        while True:
            cand = self._croniter_next(cur)
            if cand is None or cand > limit:
                return None
            utc = self._local_to_utc(cand)
            if utc is None:  # skipped by a DST gap: does not fire
                cur = self._gap_end(cand) - 1
                continue
            if utc > t_s:
                return utc * 1000
            # Only possible inside a repeated hour: that wall time already fired
            # at its first occurrence.
            cur = cand

    def _local_to_utc(self, naive_s: int) -> int | None:
        """Wall-clock seconds -> UTC seconds at the first occurrence; None in a gap."""
        wall = _EPOCH_NAIVE + _dt.timedelta(seconds=naive_s)
        off = wall.replace(tzinfo=self._zone).utcoffset()  # fold=0: first occurrence
        assert off is not None
        utc = naive_s - int(off.total_seconds())
        back = _dt.datetime.fromtimestamp(utc, self._zone).replace(tzinfo=None)
        return utc if back == wall else None

    def _gap_end(self, naive_s: int) -> int:
        """For a wall time inside a DST gap, the first wall time after the gap."""
        zone = self._zone
        wall = _EPOCH_NAIVE + _dt.timedelta(seconds=naive_s)
        before = wall.replace(tzinfo=zone).utcoffset()
        assert before is not None
        u_hi = naive_s - int(before.total_seconds())  # already past the transition
        after = _dt.datetime.fromtimestamp(u_hi, zone).utcoffset()
        assert after is not None
        after_s = int(after.total_seconds())
        u_lo = u_hi - (after_s - int(before.total_seconds()))  # before the transition
        # Binary search for the transition instant: first u with the new offset.
        while u_hi - u_lo > 1:
            mid = (u_lo + u_hi) // 2
            off = _dt.datetime.fromtimestamp(mid, zone).utcoffset()
            if off is not None and int(off.total_seconds()) == after_s:
                u_hi = mid
            else:
                u_lo = mid
        return max(u_hi + after_s, naive_s + 1)


# ---------------------------------------------------------------------- classify


def classify(spec: str) -> tuple[str, int | str]:
    """Classify a ``client.add`` spec (SPEC §2.2): ``("interval", ms)`` or ``("cron", text)``.

    The spec is trimmed; a duration wins over cron (so ``"5m"`` is an interval,
    and ``"@every 5m"`` is a cron string). Raises :class:`SpecError`.
    """
    if not isinstance(spec, str):
        raise SpecError(f"schedule must be a string, not {type(spec).__name__}")
    text = spec.strip()
    if not text:
        raise SpecError("empty schedule")
    try:
        ms = parse_duration(text)
    except ValueError:
        pass
    else:
        if ms <= 0:
            raise SpecError(f'interval "{text}" must be positive')
        return ("interval", ms)
    try:
        compile_cron(text)
    except SpecError as e:
        raise SpecError(
            f'"{text}" is neither a duration nor a cron expression: {e.reason}', e.reason
        ) from None
    return ("cron", text)


# ---------------------------------------------------------------- schedule times


class ScheduleTimes:
    """Nominal times of a schedule spec (SPEC §5.8), in internal units.

    The union of cron matches (in ``timezone`` unless a cron has its own prefix)
    and interval ticks ``epoch + phase + k*interval`` (floored to whole seconds),
    each counted once, restricted to ``[start_ms, end_ms]``. ``@every d`` among
    ``cron_strings`` is the interval ``(d, 0)``. Raises :class:`SpecError` for a
    bad cron, a bad time zone, an interval under 1 s or a phase outside
    ``[0, interval)``.
    """

    def __init__(
        self,
        cron_strings: Sequence[str],
        intervals: Sequence[tuple[int, int]],
        start_ms: int | None = None,
        end_ms: int | None = None,
        timezone: str = "UTC",
    ) -> None:
        tz = timezone or "UTC"  # an omitted/empty timezone is UTC (SPEC §5.8)
        _load_zone(tz)
        crons: list[Cron] = []
        ivs: set[tuple[int, int]] = set()
        for s in cron_strings:
            c = compile_cron(s, tz)
            if c.every_ms is not None:
                ivs.add((c.every_ms, 0))
            else:
                crons.append(c)
        for pair in intervals:
            interval_ms, phase_ms = pair
            if not (_is_int(interval_ms) and _is_int(phase_ms)):
                raise SpecError(f"interval and phase must be int milliseconds, got {pair!r}")
            ivs.add((interval_ms, phase_ms))
        for interval_ms, phase_ms in ivs:
            if interval_ms < MIN_INTERVAL_MS:
                raise SpecError(f"interval must be at least 1s, got {interval_ms}ms")
            if not 0 <= phase_ms < interval_ms:
                raise SpecError(
                    f"phase must be within [0, interval), got {phase_ms}ms for {interval_ms}ms"
                )
        self.crons: tuple[Cron, ...] = tuple(crons)
        self.intervals: tuple[tuple[int, int], ...] = tuple(sorted(ivs))
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.timezone = tz
        sources: list[Callable[[int], int | None]] = [c.next_after for c in self.crons]
        sources += [
            functools.partial(_interval_next, interval_ms=i, phase_ms=p) for i, p in self.intervals
        ]
        self._sources = sources

    def _base(self, t_ms: int) -> int:
        """Clamp a query time so that results are >= start."""
        if self.start_ms is not None and t_ms < self.start_ms:
            return self.start_ms - 1
        return t_ms

    def next_after(self, t_ms: int) -> int | None:
        """The first nominal time strictly after ``t_ms``, or None (past end / none)."""
        base = self._base(t_ms)
        best: int | None = None
        for src in self._sources:
            r = src(base)
            if r is not None and (best is None or r < best):
                best = r
        if best is None or (self.end_ms is not None and best > self.end_ms):
            return None
        return best

    def iter_after(self, t_ms: int) -> Iterator[int]:
        """Ascending nominal times strictly after ``t_ms`` (for catch-up); may be endless."""
        base = self._base(t_ms)
        heap: list[tuple[int, int]] = []
        for i, src in enumerate(self._sources):
            r = src(base)
            if r is not None:
                heap.append((r, i))
        heapq.heapify(heap)
        end = self.end_ms
        last: int | None = None
        while heap:
            r, i = heap[0]
            if end is not None and r > end:
                return
            if r != last:
                last = r
                yield r
            nxt = self._sources[i](r)
            if nxt is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (nxt, i))

    def between(self, from_ms: int, to_ms: int, limit: int = 1000) -> list[int]:
        """Nominal times t with ``from_ms <= t <= to_ms``, ascending, at most ``limit``."""
        out: list[int] = []
        if limit <= 0 or to_ms < from_ms:
            return out
        for t in self.iter_after(from_ms - 1):
            if t > to_ms:
                break
            out.append(t)
            if len(out) >= limit:
                break
        return out


# ------------------------------------------------------------------------ jitter


def jitter_offset(schedule_id: str, nominal_ms: int, jitter_ms: int) -> int:
    """Deterministic jitter in ``[0, jitter_ms)`` for one fire, identical on every node.

    Exact bytes hashed::

        sha256( schedule_id.encode("utf-8")
                + b"\\x00"
                + format_time_seconds(nominal_ms).encode("ascii") )   # e.g. b"2026-05-01T03:00:00Z"

    H = the first 8 bytes of the digest as a big-endian unsigned integer; the
    offset is ``H % jitter_ms``. Returns 0 when ``jitter_ms <= 0``.
    """
    if jitter_ms <= 0:
        return 0
    data = schedule_id.encode("utf-8") + b"\x00" + format_time_seconds(nominal_ms).encode("ascii")
    h = int.from_bytes(hashlib.sha256(data).digest()[:8], "big")
    return h % jitter_ms
