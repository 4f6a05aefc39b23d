"""SQL adapters (SQLAlchemy 2 asyncio: psycopg 3 on PostgreSQL, aiosqlite embedded)."""
