"""Objects several services of one process share, created once per process."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.ports.features import FeatureStore
from recsys.registry import create_adapter

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from recsys.services import ServiceContext


def shared_adapter(context: ServiceContext, port: str, name: str) -> Any:
    """The process's adapter for a port, created on first use and closed at shutdown."""

    def create() -> Any:
        adapter = create_adapter(port, name, context.settings)
        context.resources.push_async_callback(adapter.close)
        return adapter

    return context.shared_object(port, create)


def feature_store(context: ServiceContext) -> FeatureStore:
    """The process's feature store, shared by every service hosted in it."""
    store = shared_adapter(context, "feature_store", context.settings.features.store)
    assert isinstance(store, FeatureStore)
    preload = context.settings.features.preload_path
    if preload is not None:
        # Registered once per process, before the hooks of the services that read the store.
        context.shared_object("feature_preload", lambda: _register_preload(context, store, preload))
    return store


def _register_preload(context: ServiceContext, store: FeatureStore, path: Path) -> bool:
    async def preload() -> None:
        from recsys.data.features_file import load_features, load_into_store

        snapshot = await asyncio.to_thread(load_features, path)
        await load_into_store(snapshot, store)
        logger.info(
            "feature snapshot loaded",
            extra={
                "path": str(path),
                "users": len(snapshot.user_ids),
                "items": len(snapshot.item_ids),
                "embedding_version": snapshot.embedding_version,
            },
        )

    context.startup_hooks.append(preload)
    return True
