"""``tasks.embed()``: a complete single-node server inside this process (SPEC §2.1).

The server lives in ``cluster`` and is imported only when ``embed()`` is
called, so that ``import hanzo_tasks`` stays free of server code and its
dependencies (ARCHITECTURE: "tasks/ imports no server module at import time").
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from types import TracebackType
from typing import Any, Protocol

from hanzo_tasks.client import Client
from hanzo_tasks.errors import FailedPrecondition, InvalidArgument
from hanzo_tasks.protocol.names import is_namespace

__all__ = ["Embedded", "embed"]


class _Server(Protocol):
    """What ``cluster.embedded.start`` returns."""

    http_url: str
    zap_addr: str | None

    def stop(self) -> None: ...


class Embedded:
    """A running embedded server; ``stop()`` (or leaving ``with``) shuts it down.

    Clients made by ``client()`` are stopped first, so their local runners and
    threads do not outlive the server they talk to.
    """

    def __init__(self, server: _Server, namespace: str, temp_dir: str | None = None) -> None:
        self._server = server
        self._namespace = namespace
        self._temp_dir = temp_dir
        self._clients: list[Client] = []
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def http_url(self) -> str:
        return self._server.http_url

    @property
    def zap_addr(self) -> str | None:
        return self._server.zap_addr

    @property
    def namespace(self) -> str:
        return self._namespace

    def client(self, **kw: Any) -> Client:
        """A remote client of this server (its namespace unless ``namespace=`` is given)."""
        kw.setdefault("namespace", self._namespace)
        kw.setdefault("zap_addr", self.zap_addr)
        client = Client(self.http_url, **kw)
        with self._lock:
            if self._stopped:
                raise FailedPrecondition("embedded server stopped")
            self._clients.append(client)
        return client

    def stop(self) -> None:
        """Stop the clients made here, then the server; remove a temporary data dir. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            clients, self._clients = self._clients, []
        try:
            for c in clients:
                c.stop()
            self._server.stop()
        finally:
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)

    def __enter__(self) -> Embedded:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<tasks.Embedded http={self.http_url} zap={self.zap_addr}>"


def embed(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    http: str = "127.0.0.1:0",
    zap: str | None = "127.0.0.1:0",
    namespace: str = "default",
    config: dict[str, Any] | None = None,
) -> Embedded:
    """Start a single-node server (LocalReplicator) on a background thread.

    With ``data_dir=None`` the data lives in a fresh temporary directory that
    ``stop()`` removes: handy for tests and demos, never for data you keep.
    """
    if not is_namespace(namespace):
        raise InvalidArgument(f"invalid namespace {namespace!r}")
    from hanzo_tasks.cluster import embedded as _embedded  # lazy: server code only when asked for

    temp_dir: str | None = None
    if data_dir is None:
        temp_dir = tempfile.mkdtemp(prefix="tasks-embed-")
        data_dir = temp_dir
    try:
        server = _embedded.start(
            data_dir=os.fspath(data_dir), http=http, zap=zap, namespace=namespace, config=config
        )
    except BaseException:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return Embedded(server, namespace, temp_dir)
