"""Objects several services of one process share, created once per process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recsys.ports.features import FeatureStore
from recsys.registry import create_adapter

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
    return store
