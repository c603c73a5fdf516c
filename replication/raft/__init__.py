"""Raft replication: the multiplexed peer transport and the Raft replicator."""
