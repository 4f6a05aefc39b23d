"""Redis adapters (redis.asyncio with the hiredis parser)."""
