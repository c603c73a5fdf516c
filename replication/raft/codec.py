"""pysyncobj messages <-> msgpack bytes, for the peer port.

pysyncobj's own TCP transport pickles its messages; we never unpickle what
comes from the network, so messages travel as msgpack maps instead. The only
message shapes pysyncobj produces are maps of str keys to ints, strs, bools,
None, bytes and lists of ``(command, index, term)`` entries, which msgpack
carries as they are (tuples come back as lists, which pysyncobj indexes the
same way).

One pysyncobj path would unpickle network data: an entry larger than
``appendEntriesBatchSizeBytes`` is pickled and sent as a "transmission". We
configure that size above the largest frame, and ``decode`` refuses any
message that carries a transmission, so that path can never run.
"""

from __future__ import annotations

from typing import Any

import msgpack

ALLOWED_TYPES = frozenset(
    (
        "request_vote",
        "response_vote",
        "append_entries",
        "next_node_idx",
        "apply_command",
        "apply_command_response",
        "timeout_now",
        "snapshot_ack",  # ours: a follower acknowledges the image bytes it holds
        "pre_vote",  # ours, with the two below (replication.raft.elections)
        "pre_vote_response",
        "term_notice",
    )
)


class BadMessage(ValueError):
    pass


def encode(message: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return body


def _is_chunk(c: Any) -> bool:
    """``[data, first, last, offset, size, crc32, index]`` (``LmdbSnapshotter.getTransmissionData``)."""
    return (
        isinstance(c, list)
        and len(c) == 7
        and isinstance(c[0], bytes)
        and isinstance(c[1], bool)
        and isinstance(c[2], bool)
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in c[3:])
    )


_INT_FIELDS = {
    "snapshot_ack": ("term", "id", "offset"),
    "pre_vote": ("term", "last_log_index", "last_log_term"),
    "pre_vote_response": ("term", "current"),
    "term_notice": ("term",),
}
_BOOL_FIELDS = {"snapshot_ack": ("gap",), "pre_vote_response": ("granted",)}


def _check_fields(msg: dict[str, Any]) -> None:
    kind = msg["type"]
    for k in _INT_FIELDS.get(kind, ()):
        v = msg.get(k)
        if not isinstance(v, int) or isinstance(v, bool):
            raise BadMessage(f"{kind}: {k} must be an integer")
    for k in _BOOL_FIELDS.get(kind, ()):
        if not isinstance(msg.get(k), bool):
            raise BadMessage(f"{kind}: {k} must be a boolean")
    if "transfer" in msg and not isinstance(msg["transfer"], bool):
        raise BadMessage("transfer must be a boolean")


def decode(body: bytes) -> dict[str, Any]:
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise BadMessage(f"undecodable raft message: {e}") from None
    if not isinstance(msg, dict) or msg.get("type") not in ALLOWED_TYPES:
        raise BadMessage("not a raft message")
    if "transmission" in msg:
        raise BadMessage("chunked transmissions are not accepted")
    for key in ("term", "commit_index", "prevLogIdx", "prevLogTerm", "last_log_index", "last_log_term", "rs", "idle"):
        if key in msg and not isinstance(msg[key], int):
            raise BadMessage(f"{key} must be an integer")
    entries = msg.get("entries")
    if entries is not None:
        if not isinstance(entries, list):
            raise BadMessage("entries must be a list")
        for entry in entries:
            if (
                not isinstance(entry, list)
                or len(entry) != 3
                or not isinstance(entry[0], bytes)
                or not isinstance(entry[1], int)
                or not isinstance(entry[2], int)
            ):
                raise BadMessage("malformed entry")
    serialized = msg.get("serialized")
    if serialized is not None and not _is_chunk(serialized):
        raise BadMessage("malformed snapshot chunk")

    _check_fields(msg)
    if msg["type"] == "apply_command" and not isinstance(msg.get("command"), bytes):
        raise BadMessage("apply_command without command bytes")
    return msg
