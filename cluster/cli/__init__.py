"""The node's command lines: ``tasksd`` (serve, dev-cluster)."""
