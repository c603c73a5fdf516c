"""error_from and the exception hierarchy (SPEC §2.5, §4.1)."""

from __future__ import annotations

import pickle

import hanzo_tasks as tasks
import pytest
from hanzo_tasks.errors import error_from
from hanzo_tasks.protocol.errors import CODE_STATUS

BY_CODE = {
    "invalid_argument": tasks.InvalidArgument,
    "unauthenticated": tasks.Unauthenticated,
    "permission_denied": tasks.PermissionDenied,
    "not_found": tasks.NotFound,
    "already_exists": tasks.AlreadyExists,
    "already_started": tasks.AlreadyStarted,
    "failed_precondition": tasks.FailedPrecondition,
    "too_large": tasks.TooLarge,
    "rate_limited": tasks.RateLimited,
    "internal": tasks.Internal,
    "not_implemented": tasks.Unsupported,
    "unavailable": tasks.Unavailable,
    "no_workers": tasks.NoWorkers,
    "timeout": tasks.Timeout,
    "storage_full": tasks.StorageFull,
}


@pytest.mark.parametrize(("code", "cls"), sorted(BY_CODE.items()))
def test_code_selects_class(code: str, cls: type[tasks.TasksError]) -> None:
    status = CODE_STATUS[code]
    err = error_from(status, {"code": code, "message": "boom", "details": {"a": 1}})
    assert type(err) is cls
    assert (err.code, err.message, err.status, err.details) == (code, "boom", status, {"a": 1})
    assert str(err) == "boom"
    assert err.retry_after is None


@pytest.mark.parametrize(("code", "cls"), sorted(BY_CODE.items()))
def test_class_defaults_agree_with_protocol_table(code: str, cls: type[tasks.TasksError]) -> None:
    err = cls("x")
    assert (err.code, err.status) == (code, CODE_STATUS[code])


def test_code_wins_over_status() -> None:
    # A 409 can carry three codes; the code decides.
    assert type(error_from(409, {"code": "failed_precondition"})) is tasks.FailedPrecondition
    assert type(error_from(409, {"code": "already_started"})) is tasks.AlreadyStarted


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, tasks.InvalidArgument),
        (401, tasks.Unauthenticated),
        (403, tasks.PermissionDenied),
        (404, tasks.NotFound),
        (409, tasks.AlreadyExists),
        (413, tasks.TooLarge),
        (429, tasks.RateLimited),
        (500, tasks.Internal),
        (501, tasks.Unsupported),
        (503, tasks.Unavailable),
        (504, tasks.Timeout),
        (507, tasks.StorageFull),
    ],
)
def test_unknown_code_falls_back_to_status(status: int, cls: type[tasks.TasksError]) -> None:
    err = error_from(status, {"code": "brand_new_code", "message": "m"})
    assert type(err) is cls
    assert err.code == "brand_new_code"  # the server's code is kept
    assert err.status == status


def test_unknown_code_and_status_gives_base_class() -> None:
    err = error_from(418, {"code": "teapot", "message": "short and stout"})
    assert type(err) is tasks.TasksError
    assert (err.code, err.status, err.message) == ("teapot", 418, "short and stout")
    assert type(error_from(405, {"code": "method_not_allowed"})) is tasks.TasksError


@pytest.mark.parametrize(
    "body", [None, {}, [], "oops", {"code": 5, "message": None, "details": []}]
)
def test_malformed_bodies_are_tolerated(body: object) -> None:
    err = error_from(503, body)  # type: ignore[arg-type]
    assert type(err) is tasks.Unavailable
    assert err.code == "unavailable"
    assert err.details == {}
    assert "503" in err.message


def test_no_body_unknown_status() -> None:
    err = error_from(302, None)
    assert type(err) is tasks.TasksError
    assert err.code == "http_302"


def test_retry_after_is_carried() -> None:
    err = error_from(429, {"code": "rate_limited", "message": "slow down"}, retry_after=2.0)
    assert isinstance(err, tasks.RateLimited)
    assert err.retry_after == 2.0


def test_hierarchy() -> None:
    assert issubclass(tasks.InvalidArgument, ValueError)
    assert issubclass(tasks.AlreadyStarted, tasks.AlreadyExists)
    assert issubclass(tasks.NoWorkers, tasks.Unavailable)
    for cls in (*BY_CODE.values(), tasks.NoHandler, tasks.NonRetryableError, tasks.Canceled):
        assert issubclass(cls, tasks.TasksError)
        assert issubclass(cls, Exception)
    with pytest.raises(ValueError):
        raise tasks.InvalidArgument("bad")


def test_worker_side_errors_are_plain_to_raise() -> None:
    e = tasks.NonRetryableError("card declined")
    assert str(e) == "card declined" and e.status is None
    assert isinstance(tasks.Canceled(), tasks.TasksError)
    assert tasks.NoHandler("x").code == "no_handler"


def test_errors_pickle_with_all_fields() -> None:
    err = error_from(409, {"code": "already_started", "message": "dup", "details": {"runId": "r"}})
    err.retry_after = 1.5
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is tasks.AlreadyStarted
    assert (back.code, back.message, back.status, back.details, back.retry_after) == (
        "already_started",
        "dup",
        409,
        {"runId": "r"},
        1.5,
    )


def test_details_are_copied() -> None:
    d = {"a": 1}
    err = tasks.TasksError("x", details=d)
    d["b"] = 2
    assert err.details == {"a": 1}
