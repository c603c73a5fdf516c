"""Moving a namespace between partitions: snapshot + tail + fenced cutover, with job records."""

from migration.coordinator import MigrationError, Migrations, range_hash, shard_counts

__all__ = ["MigrationError", "Migrations", "range_hash", "shard_counts"]
