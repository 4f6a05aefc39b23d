"""Builds shard hosts from the settings (the shard service and the embedded Retrieve share it)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging

from recsys.index.faiss_module import faiss
from recsys.index.host import ShardHost
from recsys.index.snapshots import SnapshotManager
from recsys.ports.snapshots import SnapshotStore
from recsys.registry import create_adapter
from recsys.release import current_release
from recsys.settings import RecsysSettings

logger = logging.getLogger(__name__)


def configure_faiss(settings: RecsysSettings) -> None:
    """Applies the process-wide FAISS thread count (an explicit choice, logged)."""
    threads = settings.index.faiss_threads
    if threads:
        faiss.omp_set_num_threads(threads)
    logger.info(
        "faiss configured",
        extra={
            "faiss_version": faiss.__version__,
            "omp_threads": faiss.omp_get_max_threads(),
            "gpus_visible": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
            "use_gpu": settings.index.use_gpu,
        },
    )


def search_executor(
    settings: RecsysSettings, resources: contextlib.AsyncExitStack
) -> concurrent.futures.ThreadPoolExecutor:
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=settings.index.search_workers, thread_name_prefix="faiss"
    )
    resources.callback(executor.shutdown, wait=True, cancel_futures=True)
    return executor


def snapshot_manager(settings: RecsysSettings) -> SnapshotManager:
    store: SnapshotStore = create_adapter("snapshot_store", settings.index.snapshot_store, settings)
    return SnapshotManager(store, keep_versions=settings.index.keep_versions)


def shard_host(
    settings: RecsysSettings,
    shard_id: int,
    *,
    snapshots: SnapshotManager | None,
    executor: concurrent.futures.Executor | None,
) -> ShardHost:
    index = settings.index
    expected = index.expected_embedding_version
    release = current_release(settings.release.directory)
    if release is not None:
        # The release decides: a snapshot built from other embeddings is refused at load.
        expected = release.embedding_version
    return ShardHost(
        index.spec,
        shard_id=shard_id,
        num_shards=index.num_shards,
        snapshots=snapshots,
        expected_embedding_version=expected,
        executor=executor,
        use_gpu=index.use_gpu,
        gpu_device=index.gpu_device,
    )
