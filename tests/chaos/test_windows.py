"""The pure parts of the Raft-window scenarios: what a node's files, metrics and
leader timeline say, the choices the episodes make, and the journal ENOSPC shim
(run in a real subprocess, on real files)."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import msgpack

from chaos.faults import PRELOAD, files_state, watch_phase
from chaos.proxy import Bucket
from chaos.scenarios import SCENARIOS, WINDOW_SCENARIOS
from chaos.windows import (
    Excuse,
    balanced,
    compaction_state,
    excused,
    fewest_led,
    followed,
    journal_first_index,
    leaderless_stretches,
    metric_value,
    namespaces_in,
    phase_files,
    phases_in,
    pick_episode,
    snapshot_entries,
    swapped_images,
    tally,
)


def image(entries: list[tuple[bytes, int, int]]) -> bytes:
    """A snapshot file's head as ``replication/raft/snapshots.py`` writes it."""
    header = msgpack.packb({"index": entries[0][1], "entries": [list(e) for e in entries], "cluster": ["n1"]},
                           use_bin_type=True)
    return b"HZTSNAP1" + struct.pack(">I", len(header)) + header + b"lmdb bytes"


def journal(first_idx: int) -> bytes:
    """A journal's head: the 16-byte header, then one record (crc, length, idx, term, command)."""
    return b"HZTJRNL\0" + b"\0" * 8 + struct.pack("<IIQQ", zlib.crc32(b"c"), 1, first_idx, 3) + b"c"


def test_phases_from_file_names() -> None:
    raft = ["0.journal", "0.journal.meta", "0.snapshot", "0.snapshot.work", "1.snapshot.work",
            "2.journal.compact", "3.snapshot.recv", "meta.journal"]
    got = phases_in(raft, [".restore-abc", "0", "1"])
    assert got == {"serializing": ["0", "1"], "dropping-prefix": ["2"], "receiving": ["3"],
                   "restoring": [".restore-abc"]}
    assert phase_files(["1.snapshot.work"])["serializing"] == [("1", "1.snapshot.work")]
    assert phases_in(["0.journal", "0.snapshot", "meta.journal.meta"]) == {}


def test_swapped_images() -> None:
    before = {"0.snapshot": (1, 10), "1.snapshot": (2, 20)}
    assert swapped_images(before, dict(before)) == []
    assert swapped_images(before, {"0.snapshot": (1, 10), "1.snapshot": (3, 30), "2.snapshot": (4, 1)}) == ["1", "2"]


def test_compaction_state_from_the_files_left_by_a_kill() -> None:
    head = image([(b"x", 625, 7), (b"y", 624, 7)])
    assert snapshot_entries(head) == [625, 624]
    assert snapshot_entries(head[:12]) is None
    assert snapshot_entries(b"not a snapshot") is None
    assert journal_first_index(journal(576)) == 576
    assert journal_first_index(journal(576)[:20]) is None
    # The image was swapped in, the journal still starts before it: defect 1's window.
    assert compaction_state([625, 624], 576) == "journal-prefix-kept"
    assert compaction_state([625, 624], 624) == "consistent"
    assert compaction_state(None, 576) == "unknown"
    assert compaction_state([625, 624], None) == "unknown"


def test_files_state_reads_a_header_bigger_than_any_fixed_read(tmp_path: Path) -> None:
    raft = tmp_path / "raft"
    raft.mkdir()
    (raft / "3.snapshot").write_bytes(image([(b"x" * 300_000, 625, 7), (b"y" * 300_000, 624, 7)]))
    (raft / "3.journal").write_bytes(journal(576))
    (raft / "3.journal.compact").write_bytes(b"")
    got = files_state(tmp_path, "3")
    assert got["image_entries"] == [625, 624] and got["journal_first"] == 576
    assert got["state"] == "journal-prefix-kept" and got["leftovers"] == ["3.journal.compact"]


def test_watch_phase_ignores_leftovers_and_sees_new_files(tmp_path: Path) -> None:
    raft = tmp_path / "raft"
    raft.mkdir()
    (raft / "1.snapshot.recv").write_bytes(b"left by an earlier crash")
    assert watch_phase(tmp_path, ("receiving",), 0.1) is None
    (raft / "2.snapshot.recv").write_bytes(b"chunk")
    # Created after the watch began: seen (from a thread, as the scenarios run it).
    import threading

    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(watch_phase(tmp_path, ("receiving",), 3.0, groups={"5"})))
    t.start()
    import time

    time.sleep(0.2)  # the watcher's baseline first
    (raft / "5.snapshot.recv").write_bytes(b"chunk")
    t.join(5)
    assert result and result[0] is not None and result[0][:2] == ("receiving", "5")  # type: ignore[index]


def test_watch_phase_sees_a_swap(tmp_path: Path) -> None:
    import threading

    raft = tmp_path / "raft"
    raft.mkdir()
    (raft / "0.snapshot").write_bytes(b"old")
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(watch_phase(tmp_path, ("swapped",), 3.0)))
    t.start()
    import time

    time.sleep(0.05)
    (raft / "0.snapshot.work").write_bytes(b"new")
    os.replace(raft / "0.snapshot.work", raft / "0.snapshot")
    t.join(5)
    assert result and result[0] is not None and result[0][:2] == ("swapped", "0")  # type: ignore[index]


def test_metric_value_sums_matching_samples() -> None:
    text = "\n".join([
        "# HELP tasks_raft_snapshots_total Log compaction snapshots",
        "# TYPE tasks_raft_snapshots_total counter",
        'tasks_raft_snapshots_total{direction="taken",group_kind="partition"} 7.0',
        'tasks_raft_snapshots_total{direction="installed",group_kind="partition"} 2.0',
        'tasks_raft_snapshots_created{direction="taken",group_kind="partition"} 1.7e9',
        "tasks_other 5",
    ])
    assert metric_value(text, "tasks_raft_snapshots", direction="taken") == 7.0
    assert metric_value(text, "tasks_raft_snapshots") == 9.0
    assert metric_value(text, "tasks_raft_snapshots", direction="sent") is None
    assert metric_value(text, "tasks_other") == 5.0


def test_choosing_the_follower_to_hold_behind() -> None:
    rnd = random.Random(1)
    holding = {"n1": [0, 1, 2], "n2": [0, 1, 3], "n3": [1, 2, 3], "n4": [0]}
    leaders = {0: "n1", 1: "n1", 2: "n3", 3: "n2"}
    assert fewest_led(holding, leaders, rnd) in ("n2", "n3")  # n4 holds fewer partitions; n1 leads two
    assert fewest_led({}, leaders, rnd) is None
    assert followed([0, 1, 2], "n1", leaders) == [2]
    assert followed([0, 1], "n1", leaders) == [0, 1]  # leads all it holds: all of them
    assert namespaces_in([1, 3], {"a": 1, "b": 2, "c": 3}, ["a", "b", "c", "d"]) == ["a", "c"]


def test_pick_episode_runs_each_once_then_some_again() -> None:
    durations = {"a": 50.0, "b": 60.0, "c": 500.0}
    pending = ["b", "a", "c"]
    rnd = random.Random(3)
    picks = [pick_episode(pending, 1000.0, durations, rnd, chance=1.0) for _ in range(3)]
    assert picks == ["b", "a", "c"] and pending == []
    # With little time left: only what fits.
    pending = ["c", "a"]
    assert pick_episode(pending, 100.0, durations, random.Random(1), chance=1.0) == "a"
    assert pending == ["c"]
    # Pending episodes that no longer fit: plain faults.
    assert pick_episode(pending, 40.0, durations, random.Random(1), chance=1.0) is None
    # The time left cannot hold the pending ones unless they start now.
    pending = ["a", "b"]
    assert pick_episode(pending, 120.0, durations, random.Random(1), chance=0.0) == "a"
    # After every one ran: now and then one again, never one too long.
    got = {pick_episode([], 70.0, durations, random.Random(s), chance=1.0) for s in range(40)}
    assert got <= {None, "a", "b"} and got & {"a", "b"}


def test_excused_exits() -> None:
    ex = [Excuse("n1", 10.0, 30.0, "journal full")]
    assert excused("n1", 12.0, ex) is ex[0]
    assert excused("n1", 44.0, ex) is ex[0]  # noticed late: slack
    assert excused("n1", 46.0, ex) is None
    assert excused("n1", 9.0, ex) is None
    assert excused("n2", 12.0, ex) is None
    assert excused("n1", 1e6, [Excuse("n1", 10.0, None, "open")]) is not None


def test_tally_lists_every_window() -> None:
    eps = [{"scenario": "a", "reached": True}, {"scenario": "a", "reached": False},
           {"scenario": "a", "skipped": "nodes not ready: ['n4']"}]
    assert tally(eps, ["a", "b"]) == {"a": {"ran": 2, "reached": 1, "skipped": 1},
                                      "b": {"ran": 0, "reached": 0, "skipped": 0}}


def test_leaderless_stretches() -> None:
    samples = [(0.0, {0: "n1", 1: "n2"}), (1.0, {0: None, 1: "n2"}), (2.0, {0: None, 1: None}),
               (4.5, {0: "n3", 1: None}), (5.0, {0: "n3", 1: None})]
    assert leaderless_stretches(samples, [0, 1]) == {0: 3.5, 1: 3.0}
    assert leaderless_stretches(samples, [0, 1], end=10.0) == {0: 3.5, 1: 8.0}
    assert leaderless_stretches([], [0]) == {0: 0.0}


def test_balanced_layouts() -> None:
    assert balanced({0: ["n1", "n2", "n3"], 1: ["n2", "n3", "n4"], 2: ["n1", "n3", "n4"], 3: ["n1", "n2", "n4"]},
                    ["n1", "n2", "n3", "n4"], 3)
    assert not balanced({0: ["n1", "n2"], 1: ["n2", "n3", "n4"]}, ["n1", "n2", "n3", "n4"], 3)  # short set
    assert not balanced({0: ["n1", "n2", "n5"]}, ["n1", "n2", "n3"], 3)  # not a member
    assert balanced({0: ["n1", "n2"]}, ["n1", "n2"], 3)  # R capped by the members
    assert not balanced({0: ["n1", "n2", "n3"], 1: ["n1", "n2", "n3"]}, ["n1", "n2", "n3", "n4"], 3)


def test_bucket_keeps_the_rate() -> None:
    b = Bucket(rate=1000.0, burst=100.0)
    assert b.take(0.0, 100) == 0.0  # the burst
    assert abs(b.take(0.0, 100) - 0.1) < 1e-9  # then 100 bytes cost 0.1 s
    assert abs(b.take(0.1, 50) - 0.05) < 1e-9  # 0.1 s refilled 100: 50 short
    assert b.take(10.0, 50) == 0.0  # refilled (up to the burst)


def test_window_scenarios_are_registered_with_an_episode() -> None:
    for name in WINDOW_SCENARIOS:
        s = SCENARIOS[name]
        assert s.episode is not None and s.episode_time > 0, name
    assert SCENARIOS["disk-full-journal"].node_env is not None
    assert SCENARIOS["mixed"].node_env is not None and SCENARIOS["mixed"].node_args
    from chaos.__main__ import SMOKE

    assert not {n for n, _ in SMOKE} & set(WINDOW_SCENARIOS), "window scenarios stay out of the smoke suite"


SHIM_PROBE = r"""
import errno, os, sys
raft = sys.argv[1]
trigger = os.environ["CHAOS_JOURNAL_FULL"]
j = os.open(os.path.join(raft, "0.journal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
other = os.open(os.path.join(raft, "0.snapshot"), os.O_WRONLY | os.O_CREAT, 0o644)
out = []
out.append(os.write(j, b"ok"))
open(trigger, "w").close()
for fn in (lambda: os.write(j, b"x"), lambda: os.fsync(j), lambda: os.ftruncate(j, 0)):
    try:
        fn()
        out.append("no error")
    except OSError as e:
        out.append(errno.errorcode[e.errno])
out.append(os.write(other, b"fine"))
os.fsync(other)
os.remove(trigger)
out.append(os.write(j, b"back"))
print(out)
"""


def test_journal_shim_fails_only_journal_writes_while_triggered(tmp_path: Path) -> None:
    raft = tmp_path / "raft"
    raft.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PRELOAD), os.environ.get("PYTHONPATH", "")]),
           "CHAOS_JOURNAL_FULL": str(tmp_path / "full")}
    out = subprocess.run([sys.executable, "-c", SHIM_PROBE, str(raft)], env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[2, 'ENOSPC', 'ENOSPC', 'ENOSPC', 4, 4]", out.stdout + out.stderr
    assert "ENOSPC injected" in out.stderr
    assert (raft / "0.journal").read_bytes() == b"okback"
    # Without the variable the module does nothing.
    env.pop("CHAOS_JOURNAL_FULL")
    probe = "import os; print(os.write.__module__)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "posix", out.stdout


TRUNCATED_PROBE = r"""
import sys
from pathlib import Path
import lmdb
from chaos.hashes import partition_digest
d = Path(sys.argv[1])
env = lmdb.open(str(d), map_size=1 << 24)
with env.begin(write=True) as txn:
    for i in range(2000):
        txn.put(b"s" + i.to_bytes(4, "big"), bytes(3000))
env.close()
print(partition_digest(d)["hash"][:4] != "")
with open(d / "data.mdb", "r+b") as f:
    f.truncate((d / "data.mdb").stat().st_size // 2)
print(partition_digest(d))
"""


def test_a_truncated_store_is_reported_not_read(tmp_path: Path) -> None:
    """A snapshot image cut short that became a store: its digest is an error, not a SIGBUS."""
    out = subprocess.run([sys.executable, "-c", TRUNCATED_PROBE, str(tmp_path / "p")], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert out.returncode == 0, f"rc {out.returncode}: {out.stderr}"
    first, second = out.stdout.strip().splitlines()
    assert first == "True" and "data.mdb truncated" in second, out.stdout
