"""Tests for the visibility query language (SPEC §5.11), shard/visibility.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hanzo_tasks.shard.visibility import (
    MAX_DEPTH,
    MAX_QUERY_LENGTH,
    Query,
    QueryError,
    compile_query,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ATTRS: dict[str, str] = {
    "CustomKeyword": "Keyword",
    "CustomText": "Text",
    "CustomInt": "Int",
    "CustomDouble": "Double",
    "CustomBool": "Bool",
    "CustomDatetime": "Datetime",
    "Tags": "KeywordList",
}


def ms(*args: int, tz: Any = UTC) -> int:
    """Epoch milliseconds, computed independently of the module under test."""
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


JAN1 = ms(2024, 1, 1)
JAN2 = ms(2024, 1, 2)
JAN3 = ms(2024, 1, 3)


def make_run(search_attrs: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "WorkflowId": "order-42",
        "RunId": "0123456789abcdef0123456789abcdef",
        "WorkflowType": "ChargeCard",
        "TaskQueue": "payments",
        "ExecutionStatus": "RUNNING",
        "StartTime": JAN2,
        "CloseTime": None,
        "HistoryLength": 10,
        "Attempt": 1,
        "searchAttrs": {} if search_attrs is None else search_attrs,
    }
    run.update(fields)
    return run


FULL_ATTRS: dict[str, Any] = {
    "CustomKeyword": "gold",
    "CustomText": "The Quick Brown Fox",
    "CustomInt": 7,
    "CustomDouble": 2.5,
    "CustomBool": True,
    "CustomDatetime": "2024-01-02T00:00:00Z",
    "Tags": ["blue", "green"],
}


def q(text: str) -> Query:
    return compile_query(text, ATTRS)


def m(text: str, run: dict[str, Any] | None = None) -> bool:
    return q(text).matches(make_run(FULL_ATTRS) if run is None else run)


# ----------------------------------------------------------------------- basics


@pytest.mark.parametrize("text", ["", "   ", "\t\n "])
def test_empty_query_matches_everything(text: str) -> None:
    query = q(text)
    assert query.match_all
    assert query.matches(make_run())
    assert query.matches({})


def test_text_is_kept_verbatim() -> None:
    text = "  WorkflowId = 'x'  "
    assert q(text).text == text
    assert q("").text == ""


def test_matches_returns_bool() -> None:
    assert m("WorkflowId = 'order-42'") is True
    assert m("WorkflowId = 'nope'") is False
    assert m("NOT WorkflowId = 'nope' OR Attempt = 3") is True


# -------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HistoryLength = 10", True),
        ("HistoryLength = 11", False),
        ("HistoryLength != 10", False),
        ("HistoryLength != 11", True),
        ("HistoryLength > 9", True),
        ("HistoryLength > 10", False),
        ("HistoryLength < 11", True),
        ("HistoryLength < 10", False),
        ("HistoryLength >= 10", True),
        ("HistoryLength >= 11", False),
        ("HistoryLength <= 10", True),
        ("HistoryLength <= 9", False),
        ("HistoryLength IN (1, 10, 100)", True),
        ("HistoryLength IN (1, 100)", False),
        ("HistoryLength NOT IN (1, 100)", True),
        ("HistoryLength NOT IN (10)", False),
        ("HistoryLength BETWEEN 5 AND 15", True),
        ("HistoryLength BETWEEN 10 AND 10", True),  # inclusive on both ends
        ("HistoryLength BETWEEN 11 AND 15", False),
        ("HistoryLength BETWEEN 15 AND 5", False),
        ("HistoryLength>9", True),  # no whitespace needed
        ("HistoryLength>=-1", True),
        ("Attempt = 1", True),
        ("Attempt > -1", True),
    ],
)
def test_int_operators(text: str, expected: bool) -> None:
    assert m(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("WorkflowId = 'order-42'", True),
        ('WorkflowId = "order-42"', True),
        ("WorkflowId = order-42", True),  # bare word with '-'
        ("WorkflowId = 'ORDER-42'", False),  # Keyword is exact, case-sensitive
        ("WorkflowId = 'order'", False),  # ... and not a substring match
        ("WorkflowId != 'order-42'", False),
        ("WorkflowId > 'order-41'", True),
        ("WorkflowId > 'order-42'", False),
        ("WorkflowId < 'order-5'", True),  # code-point order, not numeric
        ("WorkflowId >= 'order-42'", True),
        ("WorkflowId <= 'order-42'", True),
        ("WorkflowId BETWEEN 'order' AND 'order-5'", True),
        ("WorkflowId IN ('a', 'order-42')", True),
        ("WorkflowId NOT IN ('a', 'order-42')", False),
        ("RunId = '0123456789abcdef0123456789abcdef'", True),
        ("WorkflowType = ChargeCard", True),
        ("WorkflowType = chargecard", False),
        ("TaskQueue = payments AND TaskQueue != 'default'", True),
        ("WorkflowType > 'Z'", False),  # 'C' < 'Z' < 'c'
        ("WorkflowType < 'c'", True),
    ],
)
def test_builtin_keyword_fields(text: str, expected: bool) -> None:
    assert m(text) is expected


def test_keyword_code_point_ordering_beyond_bmp() -> None:
    run = make_run(WorkflowId="\U0001f600")
    # U+1F600 > U+FFFD by code point (UTF-16 ordering would say otherwise).
    assert q("WorkflowId > '\ufffd'").matches(run)


def test_keyword_accepts_any_literal_as_its_source_text() -> None:
    assert m("WorkflowId = 007", make_run(WorkflowId="007"))
    assert not m("WorkflowId = 7", make_run(WorkflowId="007"))
    assert m("WorkflowId = true", make_run(WorkflowId="true"))
    assert m("WorkflowId = -1.50", make_run(WorkflowId="-1.50"))


# ---------------------------------------------------------------- status (enum)


@pytest.mark.parametrize(
    "spelling",
    [
        "Running",
        "RUNNING",
        "running",
        "WORKFLOW_EXECUTION_STATUS_RUNNING",
        "workflow_execution_status_running",
        "'Running'",
        '"WORKFLOW_EXECUTION_STATUS_RUNNING"',
    ],
)
def test_status_spellings_are_normalised(spelling: str) -> None:
    assert m(f"ExecutionStatus = {spelling}")
    assert not m(f"ExecutionStatus != {spelling}")


@pytest.mark.parametrize(
    ("status", "spelling"),
    [
        ("TIMED_OUT", "TimedOut"),
        ("TIMED_OUT", "timed_out"),
        ("CONTINUED_AS_NEW", "ContinuedAsNew"),
        ("CONTINUED_AS_NEW", "'CONTINUED_AS_NEW'"),
        ("CANCELING", "Canceling"),
        ("CANCELED", "Canceled"),
        ("COMPLETED", "Completed"),
        ("FAILED", "Failed"),
        ("TERMINATED", "Terminated"),
    ],
)
def test_status_values(status: str, spelling: str) -> None:
    assert m(f"ExecutionStatus = {spelling}", make_run(ExecutionStatus=status))
    assert not m("ExecutionStatus = Running", make_run(ExecutionStatus=status))


def test_status_run_side_is_normalised_too() -> None:
    run = make_run(ExecutionStatus="WORKFLOW_EXECUTION_STATUS_COMPLETED")
    assert m("ExecutionStatus = Completed", run)
    assert m("ExecutionStatus = 'completed'", make_run(ExecutionStatus="completed"))


def test_status_in_and_not_in() -> None:
    assert m("ExecutionStatus IN (Completed, Running)")
    assert not m("ExecutionStatus IN (Completed, Failed)")
    assert m("ExecutionStatus NOT IN (Completed, Failed)")
    assert not m("ExecutionStatus NOT IN ('WORKFLOW_EXECUTION_STATUS_RUNNING')")


@pytest.mark.parametrize(
    "text",
    [
        "ExecutionStatus > Running",
        "ExecutionStatus < Running",
        "ExecutionStatus >= Running",
        "ExecutionStatus <= Running",
        "ExecutionStatus BETWEEN Completed AND Running",
    ],
)
def test_status_ordering_rejected(text: str) -> None:
    with pytest.raises(QueryError, match="not supported"):
        q(text)


@pytest.mark.parametrize(
    "text",
    ["ExecutionStatus = Sleeping", "ExecutionStatus = 1", "ExecutionStatus IN (Running, 'nope')"],
)
def test_unknown_status_rejected(text: str) -> None:
    with pytest.raises(QueryError, match="status"):
        q(text)


# ------------------------------------------------------------------------ times


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("StartTime = '2024-01-02'", True),  # date = midnight UTC
        ("StartTime = '2024-01-02T00:00:00Z'", True),
        ("StartTime = '2024-01-02T00:00:00.000Z'", True),
        ("StartTime = '2024-01-02T01:00:00+01:00'", True),  # same instant
        ("StartTime = '2024-01-01T19:00:00-05:00'", True),
        ("StartTime = '2024-01-02T00:00:00.001Z'", False),
        ("StartTime > '2024-01-01'", True),
        ("StartTime > '2024-01-02'", False),
        ("StartTime >= '2024-01-02'", True),
        ("StartTime < '2024-01-03'", True),
        ("StartTime <= '2024-01-01T23:59:59.999Z'", False),
        ("StartTime BETWEEN '2024-01-01' AND '2024-01-03'", True),
        ("StartTime BETWEEN \"2024-01-02T00:00:00Z\" AND '2024-01-02'", True),
        ("StartTime IN ('2024-01-01', '2024-01-02')", True),
        ("StartTime NOT IN ('2024-01-01', '2024-01-02')", False),
        ("StartTime != '2024-01-03'", True),
    ],
)
def test_start_time(text: str, expected: bool) -> None:
    assert m(text) is expected


def test_close_time_missing_and_present() -> None:
    open_run = make_run(CloseTime=None)
    closed = make_run(CloseTime=JAN3, ExecutionStatus="COMPLETED")
    assert not m("CloseTime > '2000-01-01'", open_run)
    assert not m("CloseTime < '2999-01-01'", open_run)
    assert not m("CloseTime = '2024-01-03'", open_run)
    assert not m("CloseTime BETWEEN '2000-01-01' AND '2999-01-01'", open_run)
    assert not m("CloseTime IN ('2024-01-03')", open_run)
    assert m("CloseTime != '2024-01-03'", open_run)
    assert m("CloseTime NOT IN ('2024-01-03')", open_run)
    assert m("CloseTime = '2024-01-03'", closed)
    assert m("CloseTime > '2024-01-02' AND CloseTime <= '2024-01-03'", closed)


def test_field_on_right_hand_side_is_a_string_not_a_field() -> None:
    # Bare identifiers are values (strings), never field references.
    with pytest.raises(QueryError, match="Datetime"):
        q("CloseTime > StartTime")
    assert m("WorkflowType = WorkflowId", make_run(WorkflowType="WorkflowId"))


@pytest.mark.parametrize(
    "value",
    ["'notatime'", "12345", "'2024-13-01'", "'2024-01-02T00:00:00'", "1.5", "true", "nope"],
)
def test_bad_time_values_rejected(value: str) -> None:
    with pytest.raises(QueryError):
        q(f"StartTime > {value}")


def test_unquoted_date_gives_a_hint() -> None:
    with pytest.raises(QueryError, match="quote"):
        q("StartTime > 2024-01-01")


# ---------------------------------------------------------------- custom: types


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CustomKeyword = gold", True),
        ("CustomKeyword = 'Gold'", False),
        ("CustomKeyword > 'f'", True),
        ("CustomKeyword BETWEEN 'a' AND 'h'", True),
        ("CustomKeyword IN ('silver', 'gold')", True),
        ("CustomKeyword NOT IN ('silver', 'gold')", False),
        ("CustomText = 'quick'", True),  # contains
        ("CustomText = 'QUICK brown'", True),  # case-insensitive
        ("CustomText = 'slow'", False),
        ("CustomText != 'slow'", True),  # does not contain
        ("CustomText != 'fox'", False),
        ("CustomText IN ('slow', 'FOX')", True),  # contains any
        ("CustomText NOT IN ('slow', 'lazy')", True),
        ("CustomText NOT IN ('slow', 'the')", False),
        ("CustomInt = 7", True),
        ("CustomInt = '7'", True),  # quoted number accepted
        ("CustomInt > 6 AND CustomInt < 8", True),
        ("CustomInt BETWEEN -1 AND 7", True),
        ("CustomInt IN (1, 2, 7)", True),
        ("CustomDouble = 2.5", True),
        ("CustomDouble > 2", True),
        ("CustomDouble < 2.49", False),
        ("CustomDouble BETWEEN 2.5 AND 2.5", True),
        ("CustomDouble IN (2.5, 3)", True),
        ("CustomDouble = '2.5'", True),
        ("CustomBool = true", True),
        ("CustomBool = TRUE", True),
        ("CustomBool = 'true'", True),
        ("CustomBool = false", False),
        ("CustomBool != false", True),
        ("CustomBool IN (true, false)", True),
        ("CustomBool NOT IN (false)", True),
        ("CustomDatetime = '2024-01-02'", True),
        ("CustomDatetime > '2024-01-01T23:00:00-01:00'", False),
        ("CustomDatetime < '2024-01-01T23:00:00-02:00'", True),
        ("CustomDatetime BETWEEN '2024-01-01' AND '2024-01-02'", True),
        ("Tags = blue", True),  # has the element
        ("Tags = 'gre'", False),  # whole element only
        ("Tags != blue", False),
        ("Tags != red", True),
        ("Tags IN ('red', 'green')", True),
        ("Tags IN ('red', 'pink')", False),
        ("Tags NOT IN ('red', 'pink')", True),
        ("Tags NOT IN ('red', 'green')", False),
    ],
)
def test_custom_attribute_types(text: str, expected: bool) -> None:
    assert m(text) is expected


def test_int_and_double_compare_numerically_across_stored_types() -> None:
    run = make_run({"CustomDouble": 3, "CustomInt": 7.0})
    assert m("CustomDouble = 3.0", run)
    assert m("CustomDouble > 2.9", run)
    assert m("CustomInt = 7", run)


def test_keyword_list_stored_as_single_string() -> None:
    assert m("Tags = solo", make_run({"Tags": "solo"}))
    assert not m("Tags = so", make_run({"Tags": "solo"}))


def test_custom_datetime_stored_with_offset() -> None:
    run = make_run({"CustomDatetime": "2024-01-02T05:30:00+05:30"})
    assert m("CustomDatetime = '2024-01-02'", run)


@pytest.mark.parametrize(
    "text",
    [
        "CustomText > 'a'",
        "CustomText < 'a'",
        "CustomText >= 'a'",
        "CustomText <= 'a'",
        "CustomText BETWEEN 'a' AND 'b'",
        "CustomBool > false",
        "CustomBool BETWEEN false AND true",
        "Tags > 'a'",
        "Tags BETWEEN 'a' AND 'b'",
    ],
)
def test_ordering_rejected_for_unordered_types(text: str) -> None:
    with pytest.raises(QueryError, match="not supported"):
        q(text)


@pytest.mark.parametrize(
    "text",
    [
        "HistoryLength = 'abc'",
        "HistoryLength = abc",
        "HistoryLength = 1.5",
        "Attempt = 1.0",
        "Attempt = true",
        "HistoryLength IN (1, 'x')",
        "HistoryLength BETWEEN 1 AND 'z'",
        "CustomInt = '7.5'",
        "CustomDouble = 'abc'",
        "CustomDouble = true",
        "CustomBool = 1",
        "CustomBool = yes",
        "CustomBool = 'maybe'",
        "CustomDatetime = 'notatime'",
        "CustomDatetime = 20240101",
        "StartTime = 'notatime'",
        "StartTime = ''",
    ],
)
def test_wrong_value_type_rejected(text: str) -> None:
    with pytest.raises(QueryError, match="invalid value"):
        q(text)


# -------------------------------------------------------------- missing values


MISSING_CASES = [
    ("CustomKeyword", "'x'"),
    ("CustomText", "'x'"),
    ("CustomInt", "1"),
    ("CustomDouble", "1.5"),
    ("CustomBool", "true"),
    ("CustomDatetime", "'2024-01-01'"),
    ("Tags", "x"),
]


@pytest.mark.parametrize(("field", "value"), MISSING_CASES)
@pytest.mark.parametrize(
    "run",
    [
        make_run({}),
        make_run({"CustomKeyword": None, "CustomText": None, "Tags": None, "CustomInt": None}),
        {k: v for k, v in make_run().items() if k != "searchAttrs"},
        make_run(search_attrs=None) | {"searchAttrs": None},
    ],
    ids=["empty", "nulls", "no-key", "attrs-none"],
)
def test_missing_custom_value(field: str, value: str, run: dict[str, Any]) -> None:
    assert not m(f"{field} = {value}", run)
    assert m(f"{field} != {value}", run)
    assert not m(f"{field} IN ({value})", run)
    assert m(f"{field} NOT IN ({value})", run)
    assert not m(f"NOT {field} != {value}", run)
    if field not in ("CustomText", "CustomBool", "Tags"):
        for op in (">", "<", ">=", "<="):
            assert not m(f"{field} {op} {value}", run)
        assert not m(f"{field} BETWEEN {value} AND {value}", run)


def test_stored_value_of_wrong_type_counts_as_missing() -> None:
    run = make_run(
        {
            "CustomInt": "seven",
            "CustomDouble": True,
            "CustomBool": 1,
            "CustomKeyword": 5,
            "CustomText": ["a"],
            "CustomDatetime": "garbage",
            "Tags": 3,
        }
    )
    for field, value in MISSING_CASES:
        assert not m(f"{field} = {value}", run), field
        assert m(f"{field} != {value}", run), field


def test_corrupt_keyword_list_never_raises() -> None:
    run = make_run({"Tags": [["unhashable"], {"x": 1}, "ok"]})
    assert m("Tags IN ('ok')", run)
    assert not m("Tags IN ('x')", run)
    assert m("Tags = ok", run)


def test_builtin_fields_missing_from_run() -> None:
    assert not m("WorkflowId = 'a'", {})
    assert m("WorkflowId != 'a'", {})
    assert not m("HistoryLength > 0", {"HistoryLength": None})
    assert not m("ExecutionStatus = Running", {"ExecutionStatus": "WEIRD"})
    assert m("ExecutionStatus != Running", {"ExecutionStatus": "WEIRD"})
    assert not m("Attempt = 1", {"Attempt": True})  # a bool is not an Int


# ---------------------------------------------------------- logic & precedence


def test_precedence_not_binds_tighter_than_and_than_or() -> None:
    run = make_run(FULL_ATTRS)
    t, f = "Attempt = 1", "Attempt = 2"
    # OR is lowest: f AND f OR t  ==  (f AND f) OR t
    assert m(f"{f} AND {f} OR {t}", run)
    assert not m(f"{f} AND ({f} OR {t})", run)
    # t OR t AND f == t OR (t AND f)
    assert m(f"{t} OR {t} AND {f}", run)
    assert not m(f"({t} OR {t}) AND {f}", run)
    # NOT binds tighter than AND: NOT f AND f == (NOT f) AND f
    assert not m(f"NOT {f} AND {f}", run)
    assert m(f"NOT ({f} AND {f})", run)
    # NOT binds tighter than OR: NOT t OR t == (NOT t) OR t
    assert m(f"NOT {t} OR {t}", run)
    assert not m(f"NOT ({t} OR {t})", run)


def test_not_chains_and_parentheses() -> None:
    assert m("NOT NOT Attempt = 1")
    assert not m("NOT NOT NOT Attempt = 1")
    assert m("not (not (Attempt = 1))")
    assert m("((((Attempt = 1))))")
    assert m("(Attempt = 2 OR (HistoryLength = 10 AND (TaskQueue = payments)))")
    assert m(" NOT " * 501 + "Attempt = 2")  # long chains fold without recursion


def test_keywords_are_case_insensitive() -> None:
    assert m("Attempt = 1 and HistoryLength In (10) oR not Attempt = 1")
    assert m("HistoryLength bEtWeEn 1 aNd 10")
    assert m("HistoryLength not in (1)")
    assert m("CustomBool = True AND CustomBool != FALSE")


def test_multi_term_and_or() -> None:
    assert m("Attempt = 1 AND HistoryLength = 10 AND TaskQueue = payments AND Tags = blue")
    assert not m("Attempt = 1 AND HistoryLength = 10 AND TaskQueue = payments AND Tags = red")
    assert m("Attempt = 5 OR HistoryLength = 5 OR TaskQueue = x OR Tags = blue")
    assert not m("Attempt = 5 OR HistoryLength = 5 OR TaskQueue = x OR Tags = red")


def test_between_and_does_not_confuse_logical_and() -> None:
    assert m("HistoryLength BETWEEN 1 AND 10 AND Attempt = 1")
    assert not m("HistoryLength BETWEEN 1 AND 10 AND Attempt = 2")
    assert m("Attempt = 2 OR HistoryLength BETWEEN 1 AND 10")


# ---------------------------------------------------------- quoting & names


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (r"'it\'s'", "it's"),
        (r'"say \"hi\""', 'say "hi"'),
        (r"'back\\slash'", "back\\slash"),
        (r"'ends with \\'", "ends with \\"),
        ("'double \" inside single'", 'double " inside single'),
        ('"single \' inside double"', "single ' inside double"),
        ("''", ""),
        ("'  spaces  '", "  spaces  "),
        ("'AND OR NOT ( ) , = != '", "AND OR NOT ( ) , = != "),
        ("'ünïcødé 😀'", "ünïcødé 😀"),
    ],
)
def test_quoting_and_escapes(literal: str, value: str) -> None:
    assert m(f"WorkflowId = {literal}", make_run(WorkflowId=value))
    assert not m(f"WorkflowId = {literal}", make_run(WorkflowId=value + "x"))


@pytest.mark.parametrize(
    "text",
    [r"WorkflowId = 'a\nb'", r"WorkflowId = 'a\tb'", "WorkflowId = 'a\\"],
)
def test_bad_escapes_rejected(text: str) -> None:
    with pytest.raises(QueryError):
        q(text)


def test_builtin_names_are_case_insensitive() -> None:
    assert m("workflowid = 'order-42'")
    assert m("WORKFLOWTYPE = ChargeCard AND executionstatus = running")
    assert m("historylength >= 10 AND ATTEMPT = 1")
    assert m("`WorkflowId` = 'order-42'")
    assert m("`starttime` > '2024-01-01'")


def test_custom_names_are_case_sensitive() -> None:
    with pytest.raises(QueryError, match="unknown field"):
        q("customkeyword = gold")
    with pytest.raises(QueryError, match="unknown field"):
        q("TAGS = blue")


def test_exact_custom_name_beats_case_insensitive_builtin() -> None:
    attrs = {"startTime": "Keyword"}
    query = compile_query("startTime = 'abc'", attrs)
    assert query.matches(make_run({"startTime": "abc"}))
    # The exact built-in spelling still means the built-in field.
    assert compile_query("StartTime = '2024-01-02'", attrs).matches(make_run())


def test_backquoted_identifiers() -> None:
    attrs = {"And": "Keyword", "Not": "Int"}
    run = make_run({"And": "x", "Not": 3})
    assert compile_query("`And` = x AND `Not` > 2", attrs).matches(run)
    assert m("`CustomKeyword` = gold")
    with pytest.raises(QueryError):
        compile_query("And = x", attrs)


def test_unregistered_attribute_is_unknown_even_if_stored() -> None:
    run = make_run({"Removed": "v"})
    with pytest.raises(QueryError, match="unknown field"):
        compile_query("Removed = v", ATTRS).matches(run)


def test_unsupported_registered_type_is_a_query_error() -> None:
    with pytest.raises(QueryError, match="unsupported type"):
        compile_query("Odd = 1", {"Odd": "Float"})


# ------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "text",
    [
        "WorkflowId",
        "WorkflowId =",
        "= 'x'",
        "WorkflowId == 'x'",
        "WorkflowId <> 'x'",
        "WorkflowId ! 'x'",
        "WorkflowId = 'x' AND",
        "WorkflowId = 'x' OR",
        "AND WorkflowId = 'x'",
        "NOT",
        "WorkflowId = 'x' WorkflowId = 'y'",
        "WorkflowId = 'x' 'y'",
        "(WorkflowId = 'x'",
        "WorkflowId = 'x')",
        "()",
        "(",
        ")",
        "WorkflowId IN ()",
        "WorkflowId IN ('a',)",
        "WorkflowId IN 'a'",
        "WorkflowId IN ('a' 'b')",
        "WorkflowId NOT 'a'",
        "WorkflowId NOT = 'a'",
        "WorkflowId NOT BETWEEN 'a' AND 'b'",
        "WorkflowId BETWEEN 'a'",
        "WorkflowId BETWEEN 'a' OR 'b'",
        "WorkflowId BETWEEN 'a' AND",
        "WorkflowId = 'unterminated",
        'WorkflowId = "unterminated',
        "WorkflowId = AND",
        "WorkflowId = NOT",
        "WorkflowId = (",
        "WorkflowId = 'a' ; DROP TABLE runs",
        "WorkflowId = @x",
        "HistoryLength = 1.",
        "HistoryLength = .5",
        "HistoryLength = 1e5",
        "HistoryLength = --1",
        "HistoryLength = 12abc",
        "`` = 1",
        "`WorkflowId = 'x'",
        "WorkflowId = 'x' AND AND Attempt = 1",
        "WorkflowId = 'x' NOT Attempt = 1",
        "Attempt = 1 Attempt",
        "Attempt = ١",  # non-ASCII digit
    ],
)
def test_syntax_errors(text: str) -> None:
    with pytest.raises(QueryError):
        q(text)


def test_syntax_error_reports_position() -> None:
    with pytest.raises(QueryError, match="position 13"):
        q("Attempt = 1 Attempt")


@pytest.mark.parametrize("text", ["Foo = 1", "ExecutionTime > '2024-01-01'", "searchAttrs = 1"])
def test_unknown_field(text: str) -> None:
    with pytest.raises(QueryError, match="unknown field"):
        q(text)


def test_query_error_is_a_value_error() -> None:
    assert issubclass(QueryError, ValueError)


def test_length_limit() -> None:
    base = "WorkflowId = 'x'"
    ok = base + " " * (MAX_QUERY_LENGTH - len(base))
    assert len(ok) == MAX_QUERY_LENGTH == 4096
    assert q(ok).matches(make_run(WorkflowId="x"))
    with pytest.raises(QueryError, match="too long"):
        q(ok + " ")
    with pytest.raises(QueryError, match="too long"):
        q(" " * (MAX_QUERY_LENGTH + 1))  # even whitespace-only


def test_error_message_does_not_echo_huge_input() -> None:
    with pytest.raises(QueryError) as info:
        q("Foo" + "x" * 3000 + " = 1")
    assert len(str(info.value)) < 200


def test_nesting_depth_limit() -> None:
    ok = "(" * MAX_DEPTH + "Attempt = 1" + ")" * MAX_DEPTH
    assert m(ok)
    too_deep = "(" * (MAX_DEPTH + 1) + "Attempt = 1" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(QueryError, match="nested"):
        q(too_deep)
    # The worst case within the length limit must be a QueryError, not RecursionError.
    with pytest.raises(QueryError):
        q("(" * MAX_QUERY_LENGTH)


def test_long_flat_query_within_limit() -> None:
    clause = "Attempt = 2 OR "
    text = clause * ((MAX_QUERY_LENGTH - 20) // len(clause)) + "Attempt = 1"
    assert m(text)
    assert not m(text.replace("Attempt = 1", "Attempt = 3"))


# ------------------------------------------------------------- hypothesis: model

KEYWORD_VALUES = ["", "a", "b", "ab", "B", "é"]
TEXT_VALUES = ["", "Alpha beta", "ALPHA", "beta gamma", "x"]
TEXT_NEEDLES = ["", "alpha", "BETA", "gam", "x", "zzz"]
INTS = [-2, -1, 0, 1, 2]
DOUBLES = [-1.5, 0.0, 0.5, 1, 2.25]
TIMES = [JAN1, JAN2, JAN3]
TIME_LITERALS = {
    JAN1: ["'2024-01-01'", "'2024-01-01T00:00:00Z'"],
    JAN2: ["'2024-01-02'", "'2024-01-02T02:00:00+02:00'"],
    JAN3: ['"2024-01-03T00:00:00.000Z"', "'2024-01-02T19:00:00-05:00'"],
}
STATUS_LITERALS = ["Running", "COMPLETED", "workflow_execution_status_failed", "'TimedOut'"]
STATUS_STORED = ["RUNNING", "COMPLETED", "FAILED", "TIMED_OUT"]

EQ_OPS = ["=", "!="]
ALL_OPS = ["=", "!=", ">", "<", ">=", "<="]


def quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


# field -> (kind of literal strategy, allowed operators, ordered?)
def literal_for(field: str) -> st.SearchStrategy[str]:
    if field in ("WorkflowId", "TaskQueue", "CustomKeyword", "Tags"):
        return st.sampled_from(KEYWORD_VALUES).map(quote)
    if field == "CustomText":
        return st.sampled_from(TEXT_NEEDLES).map(quote)
    if field in ("HistoryLength", "Attempt", "CustomInt"):
        return st.sampled_from(INTS).map(str)
    if field == "CustomDouble":
        return st.sampled_from(DOUBLES).map(str)
    if field == "CustomBool":
        return st.sampled_from(["true", "false", "TRUE", "'False'"])
    if field in ("StartTime", "CloseTime", "CustomDatetime"):
        return st.sampled_from(TIMES).flatmap(lambda t: st.sampled_from(TIME_LITERALS[t]))
    if field == "ExecutionStatus":
        return st.sampled_from(STATUS_LITERALS)
    raise AssertionError(field)


ORDERED_FIELDS = [
    "WorkflowId",
    "TaskQueue",
    "CustomKeyword",
    "HistoryLength",
    "Attempt",
    "CustomInt",
    "CustomDouble",
    "StartTime",
    "CloseTime",
    "CustomDatetime",
]
UNORDERED_FIELDS = ["CustomText", "CustomBool", "Tags", "ExecutionStatus"]


@st.composite
def comparisons(draw: st.DrawFn) -> str:
    field = draw(st.sampled_from(ORDERED_FIELDS + UNORDERED_FIELDS))
    ordered = field in ORDERED_FIELDS
    lit = literal_for(field)
    forms = ["op", "in", "not in"] + (["between"] if ordered else [])
    form = draw(st.sampled_from(forms))
    if form == "op":
        op = draw(st.sampled_from(ALL_OPS if ordered else EQ_OPS))
        return f"{field} {op} {draw(lit)}"
    if form == "between":
        return f"{field} BETWEEN {draw(lit)} AND {draw(lit)}"
    values = draw(st.lists(lit, min_size=1, max_size=3))
    kw = "IN" if form == "in" else "NOT IN"
    return f"{field} {kw} ({', '.join(values)})"


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


@st.composite
def runs(draw: st.DrawFn) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    candidates: dict[str, st.SearchStrategy[Any]] = {
        "CustomKeyword": st.sampled_from(KEYWORD_VALUES),
        "CustomText": st.sampled_from(TEXT_VALUES),
        "CustomInt": st.sampled_from(INTS),
        "CustomDouble": st.sampled_from(DOUBLES),
        "CustomBool": st.booleans(),
        "CustomDatetime": st.sampled_from(
            ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00.000Z", "2024-01-03T01:00:00+01:00"]
        ),
        "Tags": st.lists(st.sampled_from(KEYWORD_VALUES), max_size=3),
    }
    for name, strategy in candidates.items():
        value = draw(maybe(strategy))
        if value is not None or draw(st.booleans()):
            attrs[name] = value
    return {
        "WorkflowId": draw(st.sampled_from(KEYWORD_VALUES)),
        "RunId": "0" * 32,
        "WorkflowType": "T",
        "TaskQueue": draw(st.sampled_from(KEYWORD_VALUES)),
        "ExecutionStatus": draw(st.sampled_from(STATUS_STORED)),
        "StartTime": draw(st.sampled_from(TIMES)),
        "CloseTime": draw(maybe(st.sampled_from(TIMES))),
        "HistoryLength": draw(st.sampled_from(INTS)),
        "Attempt": draw(st.sampled_from(INTS)),
        "searchAttrs": attrs,
    }


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    """Random nested boolean expression over comparisons."""
    if depth >= 2 or draw(st.booleans()):
        return draw(comparisons())
    kind = draw(st.sampled_from(["and", "or", "not", "paren"]))
    if kind == "not":
        return "NOT " + draw(expressions(depth + 1))
    if kind == "paren":
        return "(" + draw(expressions(depth + 1)) + ")"
    a, b = draw(expressions(depth + 1)), draw(expressions(depth + 1))
    return f"({a}) {kind.upper()} ({b})"


HYPO = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPO
@given(a=expressions(), b=expressions(), run=runs())
def test_logical_composition(a: str, b: str, run: dict[str, Any]) -> None:
    qa, qb = q(a).matches(run), q(b).matches(run)
    assert q(f"({a}) AND ({b})").matches(run) == (qa and qb)
    assert q(f"({a}) OR ({b})").matches(run) == (qa or qb)
    assert q(f"NOT ({a})").matches(run) == (not qa)
    assert q(f"NOT NOT ({a})").matches(run) == qa


@HYPO
@given(a=comparisons(), b=comparisons(), c=comparisons(), run=runs())
def test_precedence_matches_explicit_parentheses(
    a: str, b: str, c: str, run: dict[str, Any]
) -> None:
    assert q(f"{a} OR {b} AND {c}").matches(run) == q(f"({a}) OR (({b}) AND ({c}))").matches(run)
    assert q(f"{a} AND {b} OR {c}").matches(run) == q(f"(({a}) AND ({b})) OR ({c})").matches(run)
    assert q(f"NOT {a} AND {b}").matches(run) == q(f"(NOT ({a})) AND ({b})").matches(run)
    assert q(f"NOT {a} OR {b}").matches(run) == q(f"(NOT ({a})) OR ({b})").matches(run)


@HYPO
@given(data=st.data(), run=runs())
def test_operator_identities(data: st.DataObject, run: dict[str, Any]) -> None:
    """!=, IN, NOT IN and BETWEEN agree with their expansions, missing values included."""
    field = data.draw(st.sampled_from(ORDERED_FIELDS + UNORDERED_FIELDS))
    lit = literal_for(field)
    v = data.draw(lit)
    assert q(f"{field} != {v}").matches(run) == (not q(f"{field} = {v}").matches(run))
    values = data.draw(st.lists(lit, min_size=1, max_size=4))
    any_eq = any(q(f"{field} = {x}").matches(run) for x in values)
    all_ne = all(q(f"{field} != {x}").matches(run) for x in values)
    assert q(f"{field} IN ({', '.join(values)})").matches(run) == any_eq
    assert q(f"{field} NOT IN ({', '.join(values)})").matches(run) == all_ne
    if field in ORDERED_FIELDS:
        lo, hi = data.draw(lit), data.draw(lit)
        expanded = q(f"{field} >= {lo} AND {field} <= {hi}").matches(run)
        assert q(f"{field} BETWEEN {lo} AND {hi}").matches(run) == expanded


@HYPO
@given(stored=st.text(max_size=20), literal=st.text(max_size=20))
def test_keyword_quoting_roundtrip_and_order(stored: str, literal: str) -> None:
    run = make_run(WorkflowId=stored)
    for quote_char in ("'", '"'):
        lit = (
            quote_char
            + literal.replace("\\", "\\\\").replace(quote_char, "\\" + quote_char)
            + quote_char
        )
        assert q(f"WorkflowId = {lit}").matches(run) == (stored == literal)
        assert q(f"WorkflowId < {lit}").matches(run) == (stored < literal)
        assert q(f"WorkflowId >= {lit}").matches(run) == (stored >= literal)


@HYPO
@given(stored=st.text(max_size=20), needle=st.text(max_size=5))
def test_text_contains_case_insensitively(stored: str, needle: str) -> None:
    run = make_run({"CustomText": stored})
    expected = needle.casefold() in stored.casefold()
    assert q(f"CustomText = {quote(needle)}").matches(run) == expected
    assert q(f"CustomText != {quote(needle)}").matches(run) == (not expected)


@HYPO
@given(stored=st.integers(-(10**20), 10**20), literal=st.integers(-(10**20), 10**20))
def test_int_ordering_model(stored: int, literal: int) -> None:
    run = make_run(HistoryLength=stored)
    assert q(f"HistoryLength > {literal}").matches(run) == (stored > literal)
    assert q(f"HistoryLength <= {literal}").matches(run) == (stored <= literal)
    assert q(f"HistoryLength = {literal}").matches(run) == (stored == literal)


# -------------------------------------------------------------- hypothesis: fuzz

FUZZ_TOKENS = [
    "(",
    ")",
    ",",
    "=",
    "!=",
    ">",
    "<",
    ">=",
    "<=",
    "!",
    "AND",
    "or",
    "Not",
    "IN",
    "between",
    "true",
    "FALSE",
    "WorkflowId",
    "ExecutionStatus",
    "StartTime",
    "CloseTime",
    "HistoryLength",
    "CustomText",
    "CustomBool",
    "CustomInt",
    "CustomDouble",
    "CustomDatetime",
    "Tags",
    "Foo",
    "`Tags`",
    "`",
    "'",
    '"',
    "\\",
    "'a'",
    '"b\\"c"',
    "'\\'",
    "1",
    "-1",
    "1.5",
    "-",
    ".",
    "Running",
    "'2024-01-01'",
    "'2024-01-01T00:00:00Z'",
    "2024-01-01",
    "x",
    "'running'",
    "1e5",
    "\x00",
    "é",
]

SAMPLE_RUNS = [make_run(FULL_ATTRS), make_run(), {}, make_run({"Tags": [[1]], "CustomText": 5})]


def check_only_query_error(text: str) -> None:
    try:
        query = compile_query(text, ATTRS)
    except QueryError as exc:
        assert str(exc)
        return
    assert query.text == text
    for run in SAMPLE_RUNS:
        assert isinstance(query.matches(run), bool)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_random_text(text: str) -> None:
    check_only_query_error(text)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(FUZZ_TOKENS), max_size=25), st.sampled_from([" ", ""]))
def test_fuzz_token_soup(tokens: list[str], sep: str) -> None:
    check_only_query_error(sep.join(tokens))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="() NOTAND", min_size=3000, max_size=MAX_QUERY_LENGTH + 50))
def test_fuzz_long_inputs(text: str) -> None:
    check_only_query_error(text)


@settings(max_examples=300, deadline=None)
@given(expressions())
def test_generated_queries_always_compile(text: str) -> None:
    query = q(text)
    assert isinstance(query.matches(make_run(FULL_ATTRS)), bool)
