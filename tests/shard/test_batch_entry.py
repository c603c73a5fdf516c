"""``sys.batch``: several commands in one log entry (proposals that waited for a
partition at the same moment share an entry, issue 14).

The reference applies every command in an entry of its own; the batched run
cuts the same stream into ``sys.batch`` entries anywhere. Each command must get
the result it gets alone, and the shard state must be the same, whatever the cuts.
"""

from __future__ import annotations

import tempfile
from typing import Any

from hanzo_tasks.shard import PartitionStore, StateMachine, encode, encode_batch, keys
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.shard.test_machine import cmd, command_streams


def _state(store: PartitionStore) -> dict[bytes, bytes]:
    """Every key but the applied index (the runs have different entry counts)."""
    with store.read() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor() if bytes(k) != keys.APPLIED}


def _cut(items: list[bytes], cuts: list[int]) -> list[list[bytes]]:
    ends = sorted({min(c, len(items)) for c in cuts if c > 0} | {len(items)})
    out, start = [], 0
    for end in ends:
        if end > start:
            out.append(items[start:end])
            start = end
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=command_streams(), cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=10))
def test_a_batch_entry_gives_each_command_its_own_result_and_the_same_state(
        stream: list[dict[str, Any]], cuts: list[int]) -> None:
    commands = [encode(c) for c in stream]
    with tempfile.TemporaryDirectory() as tmp:
        alone = StateMachine(PartitionStore(f"{tmp}/alone", sync=False))
        together = StateMachine(PartitionStore(f"{tmp}/together", sync=False))
        expected = [alone.apply(i, c) for i, c in enumerate(commands, start=1)]
        got: list[Any] = []
        for i, batch in enumerate(_cut(commands, cuts), start=1):
            res = together.apply(i, encode_batch(batch))
            assert res is not None and res["ok"] and res["_op"] == "sys.batch"
            got.extend(res["_batch"])
        assert got == expected
        assert _state(together.store) == _state(alone.store)
        alone.store.close()
        together.store.close()


def test_a_bad_command_inside_a_batch_fails_alone() -> None:
    good = encode(cmd("ns.register", 1_700_000_000_000, "default"))
    with tempfile.TemporaryDirectory() as tmp:
        m = StateMachine(PartitionStore(f"{tmp}/p", sync=False))
        res = m.apply(1, encode_batch([b"\xc1 not msgpack", encode_batch([good]), good]))
        assert res is not None and res["ok"]
        first, nested, last = res["_batch"]
        assert first["code"] == "invalid_argument" and nested["code"] == "invalid_argument"
        assert last["ok"], last
        assert m.apply(1, encode_batch([good])) is None  # idempotent by log index, as any entry
        m.store.close()


def test_commands_without_randomness_get_distinct_ids_by_their_place_in_the_batch() -> None:
    """Ids derive from ``rnd``; without it from the entry's index, and inside a
    batch from index.position, so two commands of one entry never share an id."""
    reg = cmd("ns.register", 1_700_000_000_000, "default")
    starts = []
    for n in range(2):
        c = cmd("wf.start", 1_700_000_000_000, "default", start={"type": "T", "workflowId": f"w{n}"})
        del c["rnd"]
        starts.append(encode(c))
    with tempfile.TemporaryDirectory() as tmp:
        m = StateMachine(PartitionStore(f"{tmp}/p", sync=False))
        m.apply(1, encode(reg))
        res = m.apply(2, encode_batch(starts))
        assert res is not None
        runs = [r["run"]["runId"] for r in res["_batch"]]
        assert runs[0] != runs[1], res
        m.store.close()


def test_the_batch_envelope_must_carry_a_list_of_commands() -> None:
    bad = encode({"v": 1, "op": "sys.batch", "org": "", "ns": "", "now": 0, "cmds": "nope"})
    with tempfile.TemporaryDirectory() as tmp:
        m = StateMachine(PartitionStore(f"{tmp}/p", sync=False))
        res = m.apply(1, bad)
        assert res is not None and res["code"] == "invalid_argument"
        m.store.close()

