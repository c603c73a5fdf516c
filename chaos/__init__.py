"""Chaos suite: real ``tasksd`` processes, injected faults, and a checker.

Modelled on etcd's robustness tests and Jepsen: a run starts a Raft cluster
of real node processes (every peer link through a fault-injecting TCP proxy),
drives a recorded workload against it, injects faults (SIGKILL, SIGSTOP,
network partitions, clock skew, a full disk), heals, waits for the replicas to
converge, stops the nodes and then checks the recorded history and the
replicas' bytes for anomalies: a lost acknowledged write, something applied
twice, a schedule slot fired twice (or not at all), a non-linearizable
register, replicas that differ.

Run ``python -m chaos list`` for the scenarios, ``python -m chaos run
--scenario NAME`` for one run, ``python -m chaos smoke`` for the short suite
and ``python -m chaos long`` for the long mixed run. Nothing here is imported by
the server: the package talks to nodes over HTTP, ZAP (workers) and signals
only, and reads their LMDB files after they stopped.
"""
