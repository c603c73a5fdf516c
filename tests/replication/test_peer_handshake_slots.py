"""Silent connections on the peer port cannot keep a peer out (issue 16, finding 8).

140 connections that never send a byte held every handshake slot of a node's
peer port (128) until the 5 s handshake deadline, and a restarting node was
refused, redialled, and rejoined about 5 s late. Now a connection past a cap
takes the slot of the oldest one still in its handshake (of its own address
first), so a real peer, which authenticates within a round trip, gets in at
once. The handshake deadline is left at its 5 s default here on purpose: the
peer must connect well before it frees anything.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from hanzo_tasks.protocol.channels import RAFT

from tests.replication.test_peer_transport import make_mux, mesh, run, stop_all, wait_until

pytestmark = pytest.mark.timeout(30)


async def hold_silent(address: str, n: int) -> list[socket.socket]:
    host, port = address.rsplit(":", 1)

    def open_all() -> list[socket.socket]:
        return [socket.create_connection((host, int(port))) for _ in range(n)]

    return await asyncio.to_thread(open_all)


def test_silent_connections_do_not_delay_a_rejoining_peer() -> None:
    async def main() -> None:
        muxes, sinks = await mesh("n1", "n2")
        n1, n2 = muxes["n1"], muxes["n2"]
        held: list[socket.socket] = []
        joiner = None
        try:
            held += await hold_silent(n1.address, 140)
            held += await hold_silent(n2.address, 140)
            await wait_until(lambda: n1._pending_handshakes > 0 and n2._pending_handshakes > 0)
            # n3 (re)joins: both nodes know it, it dials both
            t0 = time.monotonic()
            joiner, _ = await make_mux("n3", {"n1": n1.address, "n2": n2.address})
            for m in (n1, n2):
                m.set_peers({"n1": n1.address, "n2": n2.address, "n3": joiner.address})
            await wait_until(lambda: joiner.is_connected("n1") and joiner.is_connected("n2"),
                             timeout=4.0, what="n3 connected to both")
            assert joiner.send("n1", RAFT, 0, b"hi") and joiner.send("n2", RAFT, 0, b"hi")
            await wait_until(lambda: sinks["n1"].bodies("n3") == [b"hi"] == sinks["n2"].bodies("n3"))
            elapsed = time.monotonic() - t0
            assert elapsed < 2.0, f"rejoin took {elapsed:.2f}s"
            assert n1._pending_handshakes <= 8  # per-address cap: the strangers hold at most 8
            assert n1.limited["per_address_evicted"] >= 132
        finally:
            for s in held:
                s.close()
            await stop_all(*muxes.values(), *([joiner] if joiner else []))

    run(main(), timeout=25)


def test_the_oldest_handshake_makes_room_when_every_slot_is_taken() -> None:
    async def main() -> None:
        muxes, sinks = await mesh("n1", "n2", max_handshakes=4, max_handshakes_per_address=100)
        n1 = muxes["n1"]
        held: list[socket.socket] = []
        try:
            held += await hold_silent(n1.address, 10)
            await wait_until(lambda: n1.limited["handshake_evicted"] == 6)
            assert n1._pending_handshakes == 4
            # the evicted ones see EOF; a real peer still gets through
            await stop_all(muxes["n2"])
            again, _ = await make_mux("n2", {"n1": n1.address})
            muxes["n2"] = again
            await wait_until(lambda: again.is_connected("n1"), timeout=3.0, what="n2 reconnected")
        finally:
            for s in held:
                s.close()
            await stop_all(*muxes.values())

    run(main(), timeout=25)
