"""A member's failure domain (``node_zone``) as the meta group records it
(real LMDB): published with the addresses, kept by a command that does not
carry it (older nodes, a join through the API), cleared by an empty one, and
absent from every record an older log produces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
from hanzo_tasks.shard import PartitionStore
from hanzo_tasks.shard.meta import MetaMachine


def meta(tmp: Path) -> tuple[MetaMachine, Any]:
    m = MetaMachine(PartitionStore(tmp / "meta", sync=False))
    index = [0]

    def apply(cmd: dict[str, Any]) -> dict[str, Any]:
        index[0] += 1
        res = m.apply(index[0], msgpack.packb(cmd, use_bin_type=True))
        assert res is not None and res["ok"], res
        return res

    return m, apply


def member(cmd: dict[str, Any]) -> dict[str, Any]:
    return {"op": "meta.member", "peer": "127.0.0.1:1", "http": None, "zap": None, **cmd}


def test_a_member_publishes_its_zone_and_a_command_without_one_keeps_it(tmp_path: Path) -> None:
    m, apply = meta(tmp_path)
    assert apply(member({"id": "n1", "zone": "machine-a"}))["member"]["zone"] == "machine-a"
    assert m.members()["n1"]["zone"] == "machine-a"
    apply(member({"id": "n1", "peer": "127.0.0.1:2"}))  # POST /cluster/members carries no zone
    assert m.members()["n1"] == {"id": "n1", "peer": "127.0.0.1:2", "http": None, "zap": None,
                                 "zone": "machine-a"}
    apply(member({"id": "n1", "zone": "machine-b"}))  # restarted on another machine
    assert m.members()["n1"]["zone"] == "machine-b"
    apply(member({"id": "n1", "zone": ""}))  # restarted without a zone
    assert "zone" not in m.members()["n1"]


def test_an_old_log_has_no_zone_anywhere(tmp_path: Path) -> None:
    m, apply = meta(tmp_path)
    apply({"op": "meta.init", "partitions": 2, "members": [{"id": "n1", "peer": "p1"}, {"id": "n2", "peer": "p2"}],
           "replicas": [["n1", "n2"], ["n2", "n1"]], "voters": ["n1", "n2"]})
    apply(member({"id": "n1"}))
    apply(member({"id": "n3"}))
    assert all("zone" not in rec for rec in m.members().values()), m.members()


def test_a_zone_that_is_not_a_string_is_no_zone(tmp_path: Path) -> None:
    m, apply = meta(tmp_path)
    apply(member({"id": "n1", "zone": 7}))
    assert "zone" not in m.members()["n1"]
