"""FAISS index shards: specification, the in-memory shard index, snapshots and building."""
