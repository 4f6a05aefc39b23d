"""ShardClient adapters: in-process shards (embedded mode) and remote shards over gRPC."""
