"""Visibility query language (SPEC §5.11): parse once, evaluate per row.

A list scan calls :meth:`Query.matches` on every stored run, so the query is
compiled up front into a tree of plain closures: all parsing, field lookup,
type checking and literal conversion happen in :func:`compile_query`, and the
per-row work is a dict lookup plus one comparison per leaf.

Grammar (keywords ``AND OR NOT IN BETWEEN TRUE FALSE`` are case-insensitive)::

    expr := and (OR and)*
    and  := not (AND not)*
    not  := NOT not | atom
    atom := '(' expr ')' | cmp
    cmp  := ident op value
          | ident [NOT] IN '(' value (',' value)* ')'
          | ident BETWEEN value AND value
    op   := = | != | > | < | >= | <=

The ``run`` mapping given to :meth:`Query.matches` holds ``WorkflowId``,
``RunId``, ``WorkflowType``, ``TaskQueue`` (str), ``ExecutionStatus`` (bare
upper-case, e.g. ``"RUNNING"``), ``StartTime`` (epoch ms), ``CloseTime`` (epoch
ms or None), ``HistoryLength``, ``Attempt`` (int) and ``searchAttrs`` (custom
attribute values as stored: str / int / float / bool / list[str], Datetime
values as RFC 3339 strings).

Decisions where the spec leaves room (all documented here so that callers and
users can rely on them):

* **Field names.** A name is resolved in this order: a built-in field spelled
  exactly; a registered custom attribute spelled exactly (custom names are
  case-sensitive); a built-in field matched case-insensitively
  (``workflowid`` works). The exact custom match wins over the case-insensitive
  built-in one so that an attribute such as ``startTime`` stays reachable if
  the registry allowed it. A name may be back-quoted (`` `My_Attr` ``), which
  is also how a field literally called ``And`` or ``Not`` can be named.
* **Bare words.** A bare value is ``[A-Za-z_][A-Za-z0-9_.-]*`` (so
  ``WorkflowId = charge-card-1`` works unquoted); the keywords above are not
  values except ``true``/``false``. Dates and times must be quoted: a number
  glued to more characters (``2024-01-01``) is rejected with a hint.
* **Escapes.** Inside quotes only ``\\'``, ``\\"`` and ``\\\\`` are escapes;
  any other backslash sequence is a syntax error rather than a guess.
* **Literal types.** Keyword, Text and KeywordList fields accept any literal
  and compare against its source text (``WorkflowId = 007`` means ``"007"``).
  Int fields accept integers only (``1.0`` is rejected), Double fields any
  number; both also accept a quoted number (``'5'``). Bool fields accept
  ``true``/``false`` bare or quoted, case-insensitively. Datetime fields
  accept a quoted (or bare) RFC 3339 time with offset or ``YYYY-MM-DD``
  (midnight UTC); numbers are rejected.
* **ExecutionStatus** values are normalised by upper-casing, dropping the
  ``WORKFLOW_EXECUTION_STATUS_`` prefix and ignoring underscores, so
  ``Running``, ``RUNNING``, ``workflow_execution_status_running``,
  ``TimedOut`` and ``TIMED_OUT`` are all accepted. An unknown status is an
  error.
* **Operators per type.** Ordering (``> < >= <=``, ``BETWEEN``) is allowed on
  Keyword, Int, Double and Datetime; ExecutionStatus, Bool, Text and
  KeywordList allow only ``=``, ``!=``, ``IN`` and ``NOT IN``. For Text,
  ``IN`` means "contains any of" (case-insensitively); for KeywordList ``=``
  means "has the element" and ``IN`` "has any of the elements".
* **Uniform negation.** ``a != v`` is exactly ``NOT a = v`` and
  ``a NOT IN (...)`` is exactly ``NOT a IN (...)``; since every positive
  comparison is false on a missing value, this yields the spec's rule that
  only ``!=`` and ``NOT IN`` are true for a run without the field.
  ``BETWEEN`` is inclusive on both ends.
* **Stored values of the wrong type** (e.g. a registration re-created with a
  different type) count as missing; :meth:`Query.matches` never raises.
* **Nesting** of parentheses is limited to :data:`MAX_DEPTH` so that a
  hostile query cannot exhaust the interpreter stack; ``NOT NOT ...`` chains
  are folded iteratively and do not count.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hanzo_tasks.protocol.timefmt import parse_time_or_date

__all__ = ["MAX_DEPTH", "MAX_QUERY_LENGTH", "Query", "QueryError", "compile_query"]

#: Longest accepted query text, in characters (SPEC §5.11).
MAX_QUERY_LENGTH = 4096
#: Deepest accepted parenthesis nesting; keeps parser and evaluator recursion bounded.
MAX_DEPTH = 64

Run = Mapping[str, Any]
Predicate = Callable[[Run], bool]


class QueryError(ValueError):
    """A query that cannot be compiled; the message is shown to API users (HTTP 400)."""


# --------------------------------------------------------------------------- types

KEYWORD = "Keyword"
TEXT = "Text"
INT = "Int"
DOUBLE = "Double"
BOOL = "Bool"
DATETIME = "Datetime"
KEYWORD_LIST = "KeywordList"
STATUS = "ExecutionStatus"  # internal kind for the built-in enum field

_CUSTOM_TYPES = frozenset({KEYWORD, TEXT, INT, DOUBLE, BOOL, DATETIME, KEYWORD_LIST})
_ORDERED_KINDS = frozenset({KEYWORD, INT, DOUBLE, DATETIME})

_STATUS_PREFIX = "WORKFLOW_EXECUTION_STATUS_"
_STATUSES = (
    "RUNNING",
    "CANCELING",
    "COMPLETED",
    "FAILED",
    "CANCELED",
    "TERMINATED",
    "TIMED_OUT",
    "CONTINUED_AS_NEW",
)
# Key: upper-cased, prefix stripped, underscores removed -> canonical bare name.
_STATUS_BY_KEY = {s.replace("_", ""): s for s in _STATUSES}
# Exact spellings the store actually uses, so the per-row path is one dict hit.
_STATUS_FAST = {s: s for s in _STATUSES} | {_STATUS_PREFIX + s: s for s in _STATUSES}


def _normalise_status(value: str) -> str | None:
    """Canonical bare status for any accepted spelling, or None if unknown."""
    fast = _STATUS_FAST.get(value)
    if fast is not None:
        return fast
    key = value.upper().removeprefix(_STATUS_PREFIX).replace("_", "")
    return _STATUS_BY_KEY.get(key)


# ------------------------------------------------------------------------- getters
# A getter returns the run's value for one field, already in the comparable
# form, or None when the run has no usable value. Comparators rely on
# "None means missing" and never see a value of the wrong Python type.


def _is_number(v: Any) -> bool:
    # bool is an int subclass but never a valid Int/Double value.
    return type(v) is int or type(v) is float


@functools.lru_cache(maxsize=8192)
def _stored_instant(text: str) -> int | None:
    """Parse a stored Datetime attribute; cached because every row repeats the work."""
    try:
        return parse_time_or_date(text)
    except Exception:  # a corrupt stored value is "missing", never a crash
        return None


def _convert_keyword(v: Any) -> Any:
    return v if type(v) is str else None


def _convert_text(v: Any) -> Any:
    return v.casefold() if type(v) is str else None


def _convert_number(v: Any) -> Any:
    return v if _is_number(v) else None


def _convert_bool(v: Any) -> Any:
    return v if v is True or v is False else None


def _convert_datetime(v: Any) -> Any:
    if type(v) is str:
        return _stored_instant(v)
    return v if _is_number(v) else None


def _convert_keyword_list(v: Any) -> Any:
    if type(v) is list or type(v) is tuple:
        return v
    return (v,) if type(v) is str else None


def _convert_status(v: Any) -> Any:
    return _normalise_status(v) if type(v) is str else None


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    KEYWORD: _convert_keyword,
    TEXT: _convert_text,
    INT: _convert_number,
    DOUBLE: _convert_number,
    BOOL: _convert_bool,
    DATETIME: _convert_datetime,
    KEYWORD_LIST: _convert_keyword_list,
    STATUS: _convert_status,
}

_BUILTINS: dict[str, str] = {
    "WorkflowId": KEYWORD,
    "RunId": KEYWORD,
    "WorkflowType": KEYWORD,
    "TaskQueue": KEYWORD,
    "ExecutionStatus": STATUS,
    "StartTime": DATETIME,
    "CloseTime": DATETIME,
    "HistoryLength": INT,
    "Attempt": INT,
}
_BUILTINS_FOLDED = {name.casefold(): name for name in _BUILTINS}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: str
    get: Callable[[Run], Any]


def _builtin_getter(name: str, kind: str) -> Callable[[Run], Any]:
    convert = _CONVERTERS[kind]
    if kind == KEYWORD:
        # Hot path for the commonest filters: avoid the extra converter call.
        def get_keyword(run: Run) -> Any:
            v = run.get(name)
            return v if type(v) is str else None

        return get_keyword

    def get(run: Run) -> Any:
        return convert(run.get(name))

    return get


def _custom_getter(name: str, kind: str) -> Callable[[Run], Any]:
    convert = _CONVERTERS[kind]

    def get(run: Run) -> Any:
        attrs = run.get("searchAttrs")
        if not attrs:
            return None
        try:
            v = attrs.get(name)
        except AttributeError:  # not a mapping: treat as having no attributes
            return None
        return None if v is None else convert(v)

    return get


def _resolve_field(name: str, search_attrs: Mapping[str, str]) -> _Field:
    """Exact built-in, then exact custom, then case-insensitive built-in (see module doc)."""
    if name in _BUILTINS:
        kind = _BUILTINS[name]
        return _Field(name, kind, _builtin_getter(name, kind))
    if name in search_attrs:
        kind = search_attrs[name]
        if kind not in _CUSTOM_TYPES:
            raise QueryError(f"search attribute {name!r} has unsupported type {kind!r}")
        return _Field(name, kind, _custom_getter(name, kind))
    canonical = _BUILTINS_FOLDED.get(name.casefold())
    if canonical is not None:
        kind = _BUILTINS[canonical]
        return _Field(canonical, kind, _builtin_getter(canonical, kind))
    raise QueryError(f"unknown field {_show(name)}")


# ------------------------------------------------------------------------- lexer

_LPAREN, _RPAREN, _COMMA, _OP, _STRING, _NUMBER, _WORD, _QIDENT, _EOF = (
    "(",
    ")",
    ",",
    "operator",
    "string",
    "number",
    "word",
    "quoted identifier",
    "end of query",
)
_KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "BETWEEN"})
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?", re.ASCII)
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_INT_TEXT_RE = re.compile(r"-?\d+", re.ASCII)
_GLUE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-:+")
_ESCAPES = {"'": "'", '"': '"', "\\": "\\"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    value: str  # decoded text: string contents, operator, word, number source
    pos: int  # 1-based character position, for error messages

    @property
    def keyword(self) -> str | None:
        """The upper-cased keyword if this is a bare keyword word, else None."""
        if self.kind == _WORD:
            up = self.value.upper()
            if up in _KEYWORDS:
                return up
        return None

    def describe(self) -> str:
        if self.kind == _EOF:
            return "end of query"
        if self.kind == _STRING:
            return f"string {_show(self.value)}"
        return _show(self.value)


def _show(text: str, limit: int = 40) -> str:
    """Quote user text for an error message without echoing a huge query back."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        start = i
        if ch in "(),":
            tokens.append(_Token(ch, ch, start + 1))
            i += 1
        elif ch in "=<>!":
            two = text[i : i + 2]
            if two in ("!=", ">=", "<="):
                tokens.append(_Token(_OP, two, start + 1))
                i += 2
            elif ch == "!":
                raise QueryError(f"syntax error at position {start + 1}: expected '!='")
            else:
                tokens.append(_Token(_OP, ch, start + 1))
                i += 1
        elif ch in "'\"":
            value, i = _lex_string(text, i)
            tokens.append(_Token(_STRING, value, start + 1))
        elif ch == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise QueryError(f"syntax error at position {start + 1}: unterminated `identifier`")
            if end == i + 1:
                raise QueryError(f"syntax error at position {start + 1}: empty `identifier`")
            tokens.append(_Token(_QIDENT, text[i + 1 : end], start + 1))
            i = end + 1
        elif ch in "-0123456789":
            m = _NUMBER_RE.match(text, i)
            end = m.end() if m else i + 1
            if m is None or (end < n and text[end] in _GLUE_CHARS):
                while end < n and text[end] in _GLUE_CHARS:
                    end += 1
                raise QueryError(
                    f"syntax error at position {start + 1}: invalid number "
                    f"{_show(text[start:end])} (quote dates, times and other strings)"
                )
            tokens.append(_Token(_NUMBER, m.group(), start + 1))
            i = end
        else:
            m = _WORD_RE.match(text, i)
            if m is None:
                raise QueryError(
                    f"syntax error at position {start + 1}: unexpected character {ch!r}"
                )
            tokens.append(_Token(_WORD, m.group(), start + 1))
            i = m.end()
    tokens.append(_Token(_EOF, "", n + 1))
    return tokens


def _lex_string(text: str, i: int) -> tuple[str, int]:
    """Decode a quoted string starting at text[i]; returns (value, index after it)."""
    quote = text[i]
    start = i
    i += 1
    parts: list[str] = []
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == quote:
            return "".join(parts), i + 1
        if ch == "\\":
            if i + 1 >= n:
                break  # a trailing backslash leaves the string unterminated
            nxt = text[i + 1]
            if nxt not in _ESCAPES:
                seq = f"'\\{nxt}'" if nxt.isprintable() else repr("\\" + nxt)
                raise QueryError(
                    f"syntax error at position {i + 1}: unsupported escape {seq} "
                    "(only \\', \\\" and \\\\ are allowed)"
                )
            parts.append(_ESCAPES[nxt])
            i += 2
            continue
        parts.append(ch)
        i += 1
    raise QueryError(f"syntax error at position {start + 1}: unterminated string")


# ---------------------------------------------------------------- literal values

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


def _coerce(field: _Field, tok: _Token) -> Any:
    """Convert a literal token to the field's comparable form, or raise QueryError."""
    kind = field.kind
    if kind in (KEYWORD, KEYWORD_LIST):
        return tok.value
    if kind == TEXT:
        return tok.value.casefold()
    if kind == INT:
        if _INT_TEXT_RE.fullmatch(tok.value) and tok.kind in (_NUMBER, _STRING):
            try:
                return int(tok.value)
            except ValueError:
                pass
        raise _wrong_type(field, tok, "an integer")
    if kind == DOUBLE:
        if tok.kind in (_NUMBER, _STRING) and _NUMBER_RE.fullmatch(tok.value):
            try:
                return int(tok.value) if _INT_TEXT_RE.fullmatch(tok.value) else float(tok.value)
            except ValueError:
                pass
        raise _wrong_type(field, tok, "a number")
    if kind == BOOL:
        if tok.kind in (_WORD, _STRING):
            low = tok.value.lower()
            if low == "true":
                return True
            if low == "false":
                return False
        raise _wrong_type(field, tok, "true or false")
    if kind == DATETIME:
        if tok.kind in (_STRING, _WORD):
            try:
                return parse_time_or_date(tok.value)
            except Exception:  # any parse failure is the user's bad value
                pass
        raise _wrong_type(
            field, tok, "an RFC 3339 time with offset or a YYYY-MM-DD date, in quotes"
        )
    if kind == STATUS:
        status = _normalise_status(tok.value) if tok.kind in (_STRING, _WORD) else None
        if status is None:
            raise QueryError(
                f"unknown execution status {_show(tok.value)}; expected one of "
                + ", ".join(_STATUSES)
            )
        return status
    raise QueryError(f"field {field.name!r} has unsupported type {kind!r}")  # pragma: no cover


def _wrong_type(field: _Field, tok: _Token, expected: str) -> QueryError:
    return QueryError(
        f"invalid value {tok.describe()} for {field.kind} field {field.name!r}: expected {expected}"
    )


# ------------------------------------------------------------------ comparisons


def _check_op(field: _Field, op: str, pos: int) -> None:
    if op in ("=", "!=", "IN", "NOT IN"):
        return
    if field.kind not in _ORDERED_KINDS:
        raise QueryError(
            f"operator {op} at position {pos} is not supported for {field.kind} field "
            f"{field.name!r} (only =, !=, IN and NOT IN)"
        )


def _negate(pred: Predicate) -> Predicate:
    def negated(run: Run) -> bool:
        return not pred(run)

    return negated


def _compare(field: _Field, op: str, value: Any) -> Predicate:
    """Build the predicate for `field op value`; `!=` is the negation of `=`."""
    if op == "!=":
        return _negate(_compare(field, "=", value))
    get = field.get
    if op == "=" and field.kind == TEXT:

        def contains(run: Run) -> bool:
            v = get(run)
            return v is not None and value in v

        return contains
    if op == "=" and field.kind == KEYWORD_LIST:

        def has(run: Run) -> bool:
            v = get(run)
            return v is not None and value in v

        return has
    if op == "=":

        def eq(run: Run) -> bool:
            v = get(run)
            return v is not None and v == value

        return eq
    cmp = _OPS[op]

    def ordered(run: Run) -> bool:
        v = get(run)
        return v is not None and cmp(v, value)

    return ordered


def _membership(field: _Field, values: Sequence[Any]) -> Predicate:
    """`field IN (values)`, i.e. the OR of `field = v` for each v."""
    get = field.get
    if field.kind == TEXT:
        needles = tuple(dict.fromkeys(values))

        def contains_any(run: Run) -> bool:
            v = get(run)
            if v is None:
                return False
            return any(needle in v for needle in needles)

        return contains_any
    choices = frozenset(values)
    if field.kind == KEYWORD_LIST:

        def has_any(run: Run) -> bool:
            v = get(run)
            if v is None:
                return False
            # Not isdisjoint(): a corrupt stored list may hold unhashable items.
            for item in v:
                if type(item) is str and item in choices:
                    return True
            return False

        return has_any

    def member(run: Run) -> bool:
        v = get(run)
        return v is not None and v in choices

    return member


def _between(field: _Field, low: Any, high: Any) -> Predicate:
    get = field.get

    def between(run: Run) -> bool:
        v = get(run)
        return v is not None and low <= v <= high

    return between


def _all_of(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda run: a(run) and b(run)
    items = tuple(preds)

    def all_of(run: Run) -> bool:
        for p in items:
            if not p(run):
                return False
        return True

    return all_of


def _any_of(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda run: a(run) or b(run)
    items = tuple(preds)

    def any_of(run: Run) -> bool:
        for p in items:
            if p(run):
                return True
        return False

    return any_of


def _match_all(run: Run) -> bool:
    return True


# ------------------------------------------------------------------------ parser


class _Parser:
    """Recursive descent over the token list, emitting closures as it goes."""

    def __init__(self, tokens: list[_Token], search_attrs: Mapping[str, str]) -> None:
        self._tokens = tokens
        self._i = 0
        self._attrs = search_attrs
        self._depth = 0

    # -- token helpers
    def _peek(self) -> _Token:
        return self._tokens[self._i]

    def _next(self) -> _Token:
        tok = self._tokens[self._i]
        if tok.kind != _EOF:
            self._i += 1
        return tok

    def _error(self, tok: _Token, expected: str) -> QueryError:
        return QueryError(
            f"syntax error at position {tok.pos}: expected {expected}, found {tok.describe()}"
        )

    def _expect(self, kind: str, expected: str) -> _Token:
        tok = self._next()
        if tok.kind != kind:
            raise self._error(tok, expected)
        return tok

    def _expect_keyword(self, word: str) -> None:
        tok = self._next()
        if tok.keyword != word:
            raise self._error(tok, word)

    # -- grammar
    def parse(self) -> Predicate:
        pred = self._expr()
        tok = self._peek()
        if tok.kind != _EOF:
            raise self._error(tok, "AND, OR or end of query")
        return pred

    def _expr(self) -> Predicate:
        terms = [self._and()]
        while self._peek().keyword == "OR":
            self._next()
            terms.append(self._and())
        return _any_of(terms)

    def _and(self) -> Predicate:
        factors = [self._not()]
        while self._peek().keyword == "AND":
            self._next()
            factors.append(self._not())
        return _all_of(factors)

    def _not(self) -> Predicate:
        # `NOT NOT ... atom` is folded iteratively so long chains cannot recurse.
        negations = 0
        while self._peek().keyword == "NOT":
            self._next()
            negations += 1
        pred = self._atom()
        return _negate(pred) if negations % 2 else pred

    def _atom(self) -> Predicate:
        tok = self._peek()
        if tok.kind == _LPAREN:
            self._next()
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise QueryError(f"query nested too deeply (more than {MAX_DEPTH} parentheses)")
            pred = self._expr()
            self._expect(_RPAREN, "')'")
            self._depth -= 1
            return pred
        return self._cmp()

    def _cmp(self) -> Predicate:
        tok = self._next()
        if not (tok.kind == _QIDENT or (tok.kind == _WORD and tok.keyword is None)):
            raise self._error(tok, "a field name or '('")
        field = _resolve_field(tok.value, self._attrs)
        op_tok = self._next()
        if op_tok.kind == _OP:
            _check_op(field, op_tok.value, op_tok.pos)
            return _compare(field, op_tok.value, self._value(field))
        kw = op_tok.keyword
        if kw == "NOT":
            self._expect_keyword("IN")
            _check_op(field, "NOT IN", op_tok.pos)
            return _negate(_membership(field, self._value_list(field)))
        if kw == "IN":
            _check_op(field, "IN", op_tok.pos)
            return _membership(field, self._value_list(field))
        if kw == "BETWEEN":
            _check_op(field, "BETWEEN", op_tok.pos)
            low = self._value(field)
            self._expect_keyword("AND")
            high = self._value(field)
            return _between(field, low, high)
        raise self._error(op_tok, "a comparison operator, IN, NOT IN or BETWEEN")

    def _value(self, field: _Field) -> Any:
        tok = self._next()
        if tok.kind not in (_STRING, _NUMBER) and not (tok.kind == _WORD and tok.keyword is None):
            raise self._error(tok, "a value")
        return _coerce(field, tok)

    def _value_list(self, field: _Field) -> list[Any]:
        self._expect(_LPAREN, "'('")
        values = [self._value(field)]
        while self._peek().kind == _COMMA:
            self._next()
            values.append(self._value(field))
        self._expect(_RPAREN, "',' or ')'")
        return values


# -------------------------------------------------------------------- public API


class Query:
    """A compiled visibility query.

    ``text`` is the original query text, kept verbatim so that page tokens can
    be bound to the query that produced them. Build instances with
    :func:`compile_query`.
    """

    __slots__ = ("text", "_pred", "match_all")

    def __init__(self, text: str, pred: Predicate, match_all: bool = False) -> None:
        self.text = text
        self._pred = pred
        #: True for the empty query, so a caller may skip filtering entirely.
        self.match_all = match_all

    def matches(self, run: Run) -> bool:
        """Whether ``run`` (the mapping described in the module doc) satisfies the query."""
        return self._pred(run)

    def __repr__(self) -> str:
        return f"Query({self.text!r})"


def compile_query(text: str, search_attrs: Mapping[str, str]) -> Query:
    """Parse and type-check ``text`` against the built-in fields and ``search_attrs``.

    ``search_attrs`` maps each registered custom attribute name to its type
    (``Keyword``, ``Text``, ``Int``, ``Double``, ``Bool``, ``Datetime`` or
    ``KeywordList``). Everything that can be wrong with a query is reported
    here as :class:`QueryError`, so that :meth:`Query.matches` is a pure,
    exception-free predicate.
    """
    if not isinstance(text, str):
        raise QueryError("query must be a string")
    if len(text) > MAX_QUERY_LENGTH:
        raise QueryError(f"query too long ({len(text)} characters; at most {MAX_QUERY_LENGTH})")
    if not text.strip():
        return Query(text, _match_all, match_all=True)
    tokens = _tokenize(text)
    pred = _Parser(tokens, search_attrs).parse()
    return Query(text, pred)


def run_view(r: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a run record the query language sees."""
    return {
        "WorkflowId": r["workflowId"],
        "RunId": r["runId"],
        "WorkflowType": r["type"],
        "TaskQueue": r["taskQueue"],
        "ExecutionStatus": r["status"],
        "StartTime": r["startTime"],
        "CloseTime": r.get("closeTime"),
        "HistoryLength": r["historyLength"],
        "Attempt": r["attempt"],
        "searchAttrs": r.get("searchAttrs") or {},
    }
