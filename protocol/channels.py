"""The channels of the node-to-node peer port (SPEC §8.7).

Every node has one authenticated peer port; each frame names its channel, so
Raft, forwarded requests, migration streams and relayed events share it. The
Raft transport (``replication.raft.transport``) frames them; the cluster code
that speaks a node-level protocol over them (dispatch relaying, SSE event
relaying) names its channel from here, not from the Raft implementation.
"""

from __future__ import annotations

from typing import Final

RAFT: Final = 1
"""Raft messages of every group (the frame's group field says which)."""
FORWARD: Final = 2
"""Node-to-node calls (``replication.rpc``) and the dispatch relay's messages."""
MIGRATE: Final = 3
"""Migration streams (reserved: migration reads go over FORWARD calls today)."""
EVENTS: Final = 4
"""Events a partition's leader relays to the members holding no replica of it."""
MEMBERSHIP: Final = 5
"""The dialer's hello frame, which names it to the acceptor."""

CHANNELS: Final = frozenset((RAFT, FORWARD, MIGRATE, EVENTS, MEMBERSHIP))
"""Every channel a frame may carry; any other is malformed."""
