"""Request/response calls between nodes over the peer port (channel FORWARD).

With fewer replicas than nodes, a node is asked about partitions it does not
hold: it forwards proposals, reads and whole client requests to a node that
does (ARCHITECTURE.md "Routing": any node accepts any request). Frames are
authenticated by the peer mux before they arrive here, and bodies are msgpack
(never pickle).

A request is ``{"q": id, "m": method, "a": args}``; its answer
``{"p": id, "v": value}`` or ``{"p": id, "e": message}``. Any other frame of
the channel goes to ``fallback`` (the dispatch relay's own messages).
A call whose frame could not be queued raises ``PeerUnavailable`` (nothing
was sent, so trying another peer is safe); a call that was sent but got no
answer in time raises ``TimeoutError`` (its effect is unknown).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

log = logging.getLogger("tasks.rpc")

Handler = Callable[[str, Any], Awaitable[Any]]


class PeerUnavailable(Exception):
    """The request was not sent: the peer is not connected (safe to try another)."""


class RemoteError(Exception):
    """The peer answered with an error."""


class PeerRpc:
    def __init__(self, send: Callable[[str, bytes], bool]) -> None:
        self._send = send
        self._handlers: dict[str, Handler] = {}
        self._pending: dict[int, tuple[str, asyncio.Future[dict[str, Any]]]] = {}  # id -> (peer, answer)
        self._ids = itertools.count(1)
        self.fallback: Callable[[str, bytes], None] | None = None
        self.calls = 0
        self.served = 0
        self.bad_frames = 0
        self.timeouts = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def register(self, method: str, handler: Handler) -> None:
        """``handler(peer, args)`` answers ``method``; what it returns must be msgpack-able."""
        self._handlers[method] = handler

    async def call(self, peer: str, method: str, args: Any, timeout: float) -> Any:
        rid = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[rid] = (peer, fut)
        try:
            body = msgpack.packb({"q": rid, "m": method, "a": args}, use_bin_type=True)
            if not self._send(peer, body):
                raise PeerUnavailable(f"no connection to {peer}")
            self.calls += 1
            try:
                msg = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                self.timeouts += 1
                log.warning("no answer from %s to %s within %.1f s (outcome unknown)", peer, method, timeout)
                raise
        finally:
            self._pending.pop(rid, None)
        if "e" in msg:
            raise RemoteError(str(msg["e"]))
        return msg.get("v")

    def on_frame(self, peer: str, body: bytes) -> None:
        """Called on the event loop for each frame of the channel."""
        try:
            msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception:
            self.bad_frames += 1
            return
        if isinstance(msg, dict) and "p" in msg:
            pending = self._pending.get(msg["p"])
            if pending is not None and pending[0] == peer and not pending[1].done():
                pending[1].set_result(msg)
            return
        if isinstance(msg, dict) and "q" in msg and isinstance(msg.get("m"), str):
            task = asyncio.get_running_loop().create_task(self._serve(peer, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if self.fallback is not None:
            self.fallback(peer, body)
        else:
            self.bad_frames += 1

    async def _serve(self, peer: str, msg: dict[str, Any]) -> None:
        handler = self._handlers.get(msg["m"])
        reply: dict[str, Any] = {"p": msg["q"]}
        if handler is None:
            reply["e"] = f"unknown method {msg['m']!r}"
        else:
            try:
                reply["v"] = await handler(peer, msg.get("a"))
                self.served += 1
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the caller gets the message, this node goes on
                log.debug("rpc %s from %s failed: %s", msg["m"], peer, e)
                reply["e"] = f"{type(e).__name__}: {e}"
        try:
            data = msgpack.packb(reply, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as e:
            data = msgpack.packb({"p": msg["q"], "e": f"unencodable answer: {e}"}, use_bin_type=True)
        self._send(peer, data)

    def peer_down(self, peer: str) -> None:
        """The link to ``peer`` dropped: its answers in flight are lost, so the
        calls waiting on it end now (outcome unknown) instead of at their timeout."""
        for p, fut in list(self._pending.values()):
            if p == peer and not fut.done():
                fut.set_exception(TimeoutError(f"the link to {peer} dropped"))

    def cancel_all(self) -> None:
        for t in list(self._tasks):
            t.cancel()
