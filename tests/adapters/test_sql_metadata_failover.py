"""The SQL metadata repository on a real PostgreSQL primary and streaming replica, through the
multi-host URL (`target_session_attrs=read-write`): the primary stopped, every call fails fast
with Unavailable; the replica promoted, the same engine reads and writes again, nothing
restarted; the primary hung instead (SIGSTOP), a read given up on returns at once and reads
reach the promoted replica. The servers are this test's own (tests/support/postgres_cluster.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from recsys.adapters.sql.metadata import SqlMetadataRepository
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.errors import Unavailable
from recsys.metadata.database import create_engine
from recsys.metadata.migrate import current_revision, head_revision, upgrade
from recsys.ports.metadata import ItemMetadata, UserProfile
from recsys.settings import DatabaseSettings
from tests.support.postgres_cluster import PostgresCluster, available

pytestmark = pytest.mark.integration

# A call on a stopped primary: refused at once, the replica refused as read-only.
FAIL_FAST_SECONDS = 1.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[PostgresCluster]:
    if not available():
        message = "PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: a missing service is a failure)")
        pytest.skip(message)
    servers = PostgresCluster(tmp_path)
    try:
        servers.start_primary()
        servers.start_replica()
        servers.wait_streaming()
        yield servers
    finally:
        servers.stop()


def event(index: int) -> Interaction:
    return Interaction(
        f"failover-{index}", "u1", index, InteractionKind.CLICK, 1.0, dt.datetime.now(dt.UTC)
    )


async def server_port(repository: SqlMetadataRepository) -> int:
    async with repository.engine.connect() as connection:
        return int((await connection.execute(text("SELECT inet_server_port()"))).scalar_one())


async def test_the_repository_follows_a_promoted_replica(cluster: PostgresCluster) -> None:
    settings = DatabaseSettings(url=cluster.url(), schema_name="recsys_failover", pool_size=4)
    # Migrations run through the same URL (the synchronous engine, the schema created first).
    upgrade(settings)
    assert current_revision(settings) == head_revision(settings)
    repository = SqlMetadataRepository(create_engine(settings))
    try:
        await repository.upsert_users([UserProfile("u1", 30, "US")])
        await repository.upsert_items([ItemMetadata(1, "Action", False, (), 0.5)])
        assert await repository.record_interactions([event(1)]) == 1
        assert await server_port(repository) == cluster.primary_port
        # Every pooled connection in use once, so the pool holds several to the primary.
        await asyncio.gather(*(repository.get_items([1]) for _ in range(4)))
        await asyncio.to_thread(cluster.wait_replayed)

        await asyncio.to_thread(cluster.stop_primary)
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: repository.get_user("u1"),
            lambda: repository.get_items([1]),
            lambda: repository.consumed_item_ids("u1"),
            lambda: repository.upsert_users([UserProfile("u2", 40, "DE")]),
            lambda: repository.record_interactions([event(2)]),
            repository.ping,
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await call()
            assert time.monotonic() - started < FAIL_FAST_SECONDS

        await asyncio.to_thread(cluster.promote)
        # The same engine, nothing restarted: the next connection goes to the new primary.
        assert await repository.get_user("u1") == UserProfile("u1", 30, "US")
        assert set(await repository.get_items([1])) == {1}
        await repository.upsert_users([UserProfile("u2", 40, "DE")])
        assert await repository.record_interactions([event(1), event(2)]) == 1
        assert await repository.consumed_item_ids("u1") == {1, 2}
        assert await server_port(repository) == cluster.replica_port
    finally:
        await repository.close()


async def test_a_hung_primary_holds_no_caller_past_its_budget(cluster: PostgresCluster) -> None:
    settings = DatabaseSettings(url=cluster.url(), pool_size=4)
    upgrade(settings)
    repository = SqlMetadataRepository(create_engine(settings))
    try:
        await repository.upsert_users([UserProfile("u1", 30, "US")])
        await asyncio.to_thread(cluster.wait_replayed)
        cluster.freeze_primary()
        # A pooled connection to the hung server: the query is cancelled in the background
        # (psycopg waits up to 10 s for a server that does not answer), not in the caller.
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await repository.get_user("u1")
        assert time.monotonic() - started < FAIL_FAST_SECONDS

        await asyncio.to_thread(cluster.promote)
        # Reads within a budget shorter than connect_timeout: they reach the replica only
        # because the hosts are tried in random order (load_balance_hosts=random).
        started = time.monotonic()
        while True:
            try:
                async with asyncio.timeout(0.2):
                    assert await repository.get_user("u1") == UserProfile("u1", 30, "US")
                break
            except (TimeoutError, Unavailable):
                assert time.monotonic() - started < 10, "no read reached the promoted replica"
                await asyncio.sleep(0.05)
        await repository.upsert_users([UserProfile("u2", 40, "DE")])
        assert await server_port(repository) == cluster.replica_port
    finally:
        # The old primary must not come back writable beside the new one (fencing).
        await asyncio.to_thread(cluster.stop)
        await repository.close()
