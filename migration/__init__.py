"""Moving a namespace between partitions: snapshot + tail + fenced cutover, with job records."""

from migration.coordinator import Migrations, range_hash, shard_counts
from migration.remote import MigrationError

__all__ = ["MigrationError", "Migrations", "range_hash", "shard_counts"]
