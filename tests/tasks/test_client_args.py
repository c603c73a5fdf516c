"""Client construction (SPEC §2.1), the default client, and import hygiene."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hanzo_tasks as tasks
import pytest


@pytest.mark.parametrize(
    "kw",
    [
        {"tasks_url": "ftp://host"},
        {"tasks_url": "localhost:8080"},
        {"tasks_url": "http://"},
        {"tasks_url": "http://host:notaport"},
        {"tasks_url": "http://host/?q=1"},
        {"tasks_url": 8080},
        {"zap_addr": "host"},
        {"zap_addr": "host:"},
        {"zap_addr": ":9999"},
        {"zap_addr": "host:0"},
        {"zap_addr": "host:70000"},
        {"zap_addr": "zap://host:9999"},
        {"fallback": "remote"},
        {"fallback": True},
        {"namespace": ""},
        {"namespace": "."},
        {"namespace": ".."},
        {"namespace": "has space"},
        {"namespace": "x" * 65},
        {"task_queue": ""},
        {"task_queue": "a/b"},
        {"task_queue": ".."},
        {"task_queue": "bell\x07"},
        {"task_queue": "q" * 256},
        {"handler": "not callable"},
        {"auth_token": "abc\r\nX-Evil: 1"},
    ],
)
def test_bad_arguments_raise_invalid_argument(kw: dict[str, Any]) -> None:
    with pytest.raises(tasks.InvalidArgument):
        tasks.Client(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"tasks_url": "http://localhost:8080"},
        {"tasks_url": "https://tasks.example.com/"},
        {"tasks_url": "http://10.0.0.1:8080/prefix"},
        {"tasks_url": "http://[::1]:8080"},
        {"zap_addr": "localhost:9999"},
        {"zap_addr": "[::1]:9999"},
        {"zap_addr": "10.1.2.3:1"},
        {"namespace": "team-a.prod_1"},
        {"task_queue": "emails ✉"},
        {"fallback": "local", "tasks_url": "http://h:1"},
    ],
)
def test_good_arguments(kw: dict[str, Any]) -> None:
    c = tasks.Client(**kw)
    assert c.mode == "remote" if ("tasks_url" in kw or "zap_addr" in kw) else "local"
    c.stop()


def test_mode_and_no_io_on_construction() -> None:
    assert tasks.Client().mode == "local"
    assert tasks.Client(tasks_url="").mode == "local"  # empty counts as unset
    # An unresolvable host is fine: construction does no I/O.
    c = tasks.Client("http://unresolvable.invalid:1", "unresolvable.invalid:2")
    assert c.mode == "remote"
    assert c.tasks_url == "http://unresolvable.invalid:1"
    assert c.zap_addr == "unresolvable.invalid:2"
    assert (c.namespace, c.task_queue) == ("default", "tasks")


# -- default() / set_default() --------------------------------------------------------

ENV = ("TASKS_URL", "TASKS_ZAP", "TASKS_NAMESPACE", "TASKS_TASK_QUEUE", "TASKS_AUTH_TOKEN")


@pytest.fixture
def clean_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    tasks.set_default(None)
    try:
        yield
    finally:
        tasks.set_default(None)


def test_default_from_environment(clean_default: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKS_URL", "http://tasks.internal:8080")
    monkeypatch.setenv("TASKS_NAMESPACE", "billing")
    monkeypatch.setenv("TASKS_TASK_QUEUE", "invoices")
    monkeypatch.setenv("TASKS_AUTH_TOKEN", "t0ken")
    c = tasks.default()
    assert c.mode == "remote"
    assert c.tasks_url == "http://tasks.internal:8080"
    assert (c.namespace, c.task_queue, c.zap_addr) == ("billing", "invoices", None)
    assert c._auth_token == "t0ken"
    assert tasks.default() is c


def test_empty_variables_count_as_unset(
    clean_default: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ENV:
        monkeypatch.setenv(var, "")
    c = tasks.default()
    assert c.mode == "local"
    assert (c.namespace, c.task_queue) == ("default", "tasks")


def test_bad_environment_raises(clean_default: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKS_ZAP", "no-port")
    with pytest.raises(tasks.InvalidArgument):
        tasks.default()


def test_concurrent_first_calls_build_one_client(
    clean_default: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[tasks.Client] = []
    real_init = tasks.Client.__init__

    def counting_init(self: tasks.Client, *a: Any, **kw: Any) -> None:
        built.append(self)
        real_init(self, *a, **kw)

    monkeypatch.setattr(tasks.Client, "__init__", counting_init)
    barrier = threading.Barrier(16)
    got: list[tasks.Client] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        c = tasks.default()
        with lock:
            got.append(c)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1
    assert len(got) == 16 and all(c is built[0] for c in got)


def test_set_default(clean_default: None) -> None:
    mine = tasks.Client(namespace="mine")
    tasks.set_default(mine)
    assert tasks.default() is mine
    tasks.set_default(None)
    fresh = tasks.default()
    assert fresh is not mine and fresh.namespace == "default"
    with pytest.raises(tasks.InvalidArgument):
        tasks.set_default("not a client")  # type: ignore[arg-type]


# -- the package face ------------------------------------------------------------------


def test_public_names() -> None:
    for name in (
        "Client",
        "default",
        "set_default",
        "embed",
        "Embedded",
        "TasksError",
        "InvalidArgument",
        "Unauthenticated",
        "PermissionDenied",
        "NotFound",
        "AlreadyExists",
        "AlreadyStarted",
        "FailedPrecondition",
        "TooLarge",
        "RateLimited",
        "Internal",
        "Unsupported",
        "Unavailable",
        "NoWorkers",
        "Timeout",
        "StorageFull",
        "NoHandler",
        "NonRetryableError",
        "Canceled",
    ):
        assert hasattr(tasks, name), name
        assert name in tasks.__all__


def test_import_pulls_in_no_server_code() -> None:
    code = (
        "import sys, tasks\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('aiohttp', 'cluster', 'shard', 'replication', 'migration', 'routing', 'lmdb', 'uvloop'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == ""
