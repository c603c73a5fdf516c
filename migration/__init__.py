"""Moving a namespace between partitions: snapshot + tail + fenced cutover, with job records."""

from hanzo_tasks.migration.coordinator import Migrations, range_hash, shard_counts
from hanzo_tasks.migration.remote import MigrationError

__all__ = ["MigrationError", "Migrations", "range_hash", "shard_counts"]
