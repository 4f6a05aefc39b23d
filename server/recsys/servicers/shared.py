"""Objects several services of one process share, created once per process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from recsys.ports.features import FeatureStore
from recsys.registry import create_adapter

if TYPE_CHECKING:
    from recsys.services import ServiceContext


def feature_store(context: ServiceContext) -> FeatureStore:
    """The process's feature store, shared by every service hosted in it."""

    def create() -> FeatureStore:
        settings = context.settings
        store: FeatureStore = create_adapter("feature_store", settings.features.store, settings)
        context.resources.push_async_callback(store.close)
        return store

    store = context.shared_object("feature_store", create)
    assert isinstance(store, FeatureStore)
    return store
