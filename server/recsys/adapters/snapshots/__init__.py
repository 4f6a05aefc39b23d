"""SnapshotStore adapters."""
