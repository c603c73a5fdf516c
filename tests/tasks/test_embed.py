"""tasks.embed() (SPEC §2.1).

The wrapper is tested against a stand-in for ``cluster.embedded``; the
end-to-end tests run only once the real server module exists.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Any

import hanzo_tasks as tasks
import pytest


class FakeServer:
    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.http_url = "http://127.0.0.1:18080"
        self.zap_addr: str | None = "127.0.0.1:19999"
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


@pytest.fixture
def fake_embedded(monkeypatch: pytest.MonkeyPatch) -> list[FakeServer]:
    started: list[FakeServer] = []

    def start(**kw: Any) -> FakeServer:
        assert os.path.isdir(kw["data_dir"])
        server = FakeServer(**kw)
        started.append(server)
        return server

    module = types.ModuleType("hanzo_tasks.cluster.embedded")
    module.start = start  # type: ignore[attr-defined]
    from hanzo_tasks import cluster

    monkeypatch.setitem(sys.modules, "hanzo_tasks.cluster.embedded", module)
    monkeypatch.setattr(cluster, "embedded", module, raising=False)
    return started


def test_embed_with_temporary_dir(fake_embedded: list[FakeServer]) -> None:
    with tasks.embed(namespace="dev", config={"limits": {}}) as e:
        (server,) = fake_embedded
        data_dir = server.kw["data_dir"]
        assert server.kw == {
            "data_dir": data_dir,
            "http": "127.0.0.1:0",
            "zap": "127.0.0.1:0",
            "namespace": "dev",
            "config": {"limits": {}},
        }
        assert os.path.isdir(data_dir)
        assert e.http_url == "http://127.0.0.1:18080"
        assert e.zap_addr == "127.0.0.1:19999"
        c = e.client(task_queue="q")
        assert c.mode == "remote"
        assert (c.tasks_url, c.namespace, c.task_queue) == (e.http_url, "dev", "q")
        assert e.client(namespace="other").namespace == "other"
    assert server.stops == 1
    assert not os.path.exists(data_dir)  # the temporary directory is removed
    with pytest.raises(tasks.FailedPrecondition):
        c.now("t")  # clients made by the embed are stopped with it
    e.stop()  # idempotent
    assert server.stops == 1
    with pytest.raises(tasks.FailedPrecondition):
        e.client()


def test_embed_keeps_a_given_dir(fake_embedded: list[FakeServer], tmp_path: Path) -> None:
    (tmp_path / "data-dir-given").mkdir()
    e = tasks.embed(tmp_path / "data-dir-given", http="127.0.0.1:8081", zap=None)
    e.stop()
    (server,) = fake_embedded
    assert server.kw["data_dir"] == str(tmp_path / "data-dir-given")
    assert (server.kw["http"], server.kw["zap"]) == ("127.0.0.1:8081", None)
    assert (tmp_path / "data-dir-given").exists()


def test_embed_failure_removes_temporary_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def start(**kw: Any) -> Any:
        seen.append(kw["data_dir"])
        raise OSError("port in use")

    module = types.ModuleType("hanzo_tasks.cluster.embedded")
    module.start = start  # type: ignore[attr-defined]
    from hanzo_tasks import cluster

    monkeypatch.setitem(sys.modules, "hanzo_tasks.cluster.embedded", module)
    monkeypatch.setattr(cluster, "embedded", module, raising=False)
    with pytest.raises(OSError, match="port in use"):
        tasks.embed()
    assert seen and not os.path.exists(seen[0])


def test_embed_rejects_bad_namespace(fake_embedded: list[FakeServer]) -> None:
    with pytest.raises(tasks.InvalidArgument):
        tasks.embed(namespace="..")
    assert fake_embedded == []


# -- end to end, against the real single-node server ------------------------------------

def test_real_embedded_server_starts_workflows_and_schedules() -> None:
    with tasks.embed() as e:
        assert e.http_url.startswith("http://")
        c = e.client()
        wid = c.now("hello", {"who": "world"}, workflow_id="hello-1")
        assert wid == "hello-1"
        assert c.now("hello", request_id="r-1") == c.now("hello", request_id="r-1")
        c.add("tick", "1h", lambda: None)
        c.add("tick", "0 3 * * *", lambda: None)  # an upsert
        with pytest.raises(tasks.AlreadyStarted):
            c.now("hello", workflow_id="hello-1")
        with pytest.raises(tasks.InvalidArgument):
            c.add("fast", "500ms", lambda: None)
        temp_dir = e._temp_dir
        assert temp_dir is not None and os.path.isdir(temp_dir)
    assert not os.path.exists(temp_dir)


def test_real_embedded_server_keeps_a_given_dir(tmp_path: Path) -> None:
    e = tasks.embed(tmp_path / "d")
    try:
        assert e.client().now("x")
    finally:
        e.stop()
    assert (tmp_path / "d").exists()  # a given data dir is kept
