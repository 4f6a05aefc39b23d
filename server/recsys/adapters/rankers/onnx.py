"""In-process ONNX Runtime ranker: the embedded default and the "CPU model" fallback.

Runs `model.onnx` of the newest valid version of the model repository. `reload()` loads a newer
version, checks it with a canary batch and swaps it in atomically; on any failure the serving
session stays.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime

from recsys.domain.ranking import RANKING_FEATURES
from recsys.errors import DeadlineExceeded, FailedPrecondition
from recsys.ports.ranker import Ranker
from recsys.ranking.model_repository import ModelRepository, ModelVersion
from recsys.settings import RecsysSettings

logger = logging.getLogger(__name__)

CANARY_ROWS = 8
# Weight of the newest run in the running estimate of a model's seconds per row.
ESTIMATE_WEIGHT = 0.2


@dataclass(frozen=True)
class LoadedModel:
    version: ModelVersion
    session: Any  # onnxruntime.InferenceSession


def load_session(version: ModelVersion, *, threads: int, use_gpu: bool = False) -> LoadedModel:
    """Builds a session and proves it with a canary batch; FailedPrecondition otherwise."""
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if use_gpu and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = onnxruntime.InferenceSession(
            str(version.model_file), sess_options=options, providers=providers
        )
    except Exception as error:  # onnxruntime raises its own exception types
        raise FailedPrecondition(
            f"{version.label}: ONNX Runtime cannot load the model: {error}",
            reason="MODEL_INVALID",
        ) from error
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    schema = version.schema
    if schema.input_name not in inputs or schema.output_name not in outputs:
        raise FailedPrecondition(
            f"{version.label}: the model has inputs {sorted(inputs)} and outputs "
            f"{sorted(outputs)}, the schema names {schema.input_name} and {schema.output_name}",
            reason="FEATURE_SCHEMA_MISMATCH",
        )
    width = inputs[schema.input_name].shape[-1]
    if isinstance(width, int) and width != len(schema.features):
        raise FailedPrecondition(
            f"{version.label}: the model takes {width} features, its schema names "
            f"{len(schema.features)}",
            reason="FEATURE_SCHEMA_MISMATCH",
        )
    canary = np.random.default_rng(0).random((CANARY_ROWS, len(schema.features)), np.float32)
    try:
        (scores,) = session.run([schema.output_name], {schema.input_name: canary})
    except Exception as error:
        raise FailedPrecondition(
            f"{version.label}: the canary batch failed: {error}", reason="MODEL_INVALID"
        ) from error
    scores = np.asarray(scores).reshape(-1)
    if scores.shape != (CANARY_ROWS,) or not np.isfinite(scores).all():
        raise FailedPrecondition(
            f"{version.label}: the canary batch gave {scores.shape} non-finite or misshaped scores",
            reason="MODEL_INVALID",
        )
    return LoadedModel(version, session)


class OnnxRanker(Ranker):
    def __init__(
        self,
        repository: ModelRepository,
        *,
        threads: int = 1,
        executor: concurrent.futures.Executor | None = None,
        use_gpu: bool = False,
        inline_max_seconds: float = 0.0,
    ) -> None:
        self.repository = repository
        self._threads = threads
        self._executor = executor
        self._use_gpu = use_gpu
        # A batch the loaded model is expected to score within this runs on the event loop:
        # handing it to the executor and back costs ~0.1 ms, more than a small model takes for
        # thousands of rows. 0: always in the executor.
        self._inline_max_seconds = inline_max_seconds
        # Running estimate of the loaded model's seconds per row; None until it has run once
        # (in the executor) since it was loaded.
        self._seconds_per_row: float | None = None
        self._loaded: LoadedModel | None = None
        self._reload_lock = asyncio.Lock()
        # Pinned (rank.model_version, set by a release): reload() keeps the loaded version.
        self.pinned = False

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> OnnxRanker:
        rank = settings.rank
        ranker = cls(
            ModelRepository(rank.model_repository, rank.model_name),
            threads=rank.onnx_threads,
            use_gpu=rank.onnx_use_gpu,
            inline_max_seconds=rank.onnx_inline_max_ms / 1000,
        )
        if rank.model_version:
            # A pinned version (a release pins it): that one only, no hot reload past it.
            ranker.load(rank.model_version)
            ranker.pinned = True
        else:
            ranker.load()
        return ranker

    @property
    def model_version(self) -> str:
        return self._loaded.version.label if self._loaded else ""

    def load(self, version: str | None = None) -> ModelVersion:
        """Loads a version, or without one the newest version that passes its checks (refused
        versions are logged and skipped); raises when none passes."""
        candidates = [version] if version else self.repository.versions()
        if not candidates:
            self.repository.read()  # raises NotFound naming the repository
        error: FailedPrecondition | None = None
        for candidate in candidates:
            try:
                loaded = load_session(
                    self.repository.read(candidate), threads=self._threads, use_gpu=self._use_gpu
                )
            except FailedPrecondition as refused:
                logger.error(
                    "ranking model version refused",
                    extra={"refused_version": candidate, "reason": refused.message},
                )
                error = refused
                continue
            self._loaded = loaded
            self._seconds_per_row = None
            logger.info("ranking model loaded", extra={"model_version": loaded.version.label})
            return loaded.version
        assert error is not None
        raise error

    async def reload(self) -> bool:
        """Swaps in the newest version if it is newer and passes; returns whether it swapped."""
        if self.pinned:
            return False
        async with self._reload_lock:
            newest = self.repository.versions()
            current = self._loaded.version.version if self._loaded else None
            if not newest or newest[0] == current:
                return False
            loop = asyncio.get_running_loop()
            try:
                version = await loop.run_in_executor(
                    self._executor, self.repository.read, newest[0]
                )
                loaded = await loop.run_in_executor(
                    self._executor,
                    lambda: load_session(version, threads=self._threads, use_gpu=self._use_gpu),
                )
            except FailedPrecondition as error:
                logger.error(
                    "new ranking model refused; the serving one stays",
                    extra={"refused_version": newest[0], "reason": error.message},
                )
                return False
            previous = self.model_version
            self._loaded = loaded  # atomic: calls in flight keep the session they started with
            self._seconds_per_row = None
            logger.info(
                "ranking model swapped",
                extra={"model_version": loaded.version.label, "previous_model_version": previous},
            )
            return True

    async def watch(self, poll_seconds: float) -> None:
        if self.pinned:
            return
        while True:
            await asyncio.sleep(poll_seconds)
            try:
                await self.reload()
            except Exception:
                logger.exception("ranking model watcher failed")

    async def score(
        self, features: npt.NDArray[np.float32], *, timeout: float
    ) -> npt.NDArray[np.float32]:
        loaded = self._loaded
        if loaded is None:
            raise FailedPrecondition("no ranking model is loaded", reason="MODEL_MISSING")
        if features.ndim != 2 or features.shape[1] != len(RANKING_FEATURES):
            raise FailedPrecondition(
                f"features have shape {features.shape}", reason="FEATURE_SCHEMA_MISMATCH"
            )
        schema = loaded.version.schema
        features = schema.project(features)
        rows = max(features.shape[0], 1)

        def run() -> npt.NDArray[np.float32]:
            started = time.perf_counter()
            (scores,) = loaded.session.run([schema.output_name], {schema.input_name: features})
            per_row = (time.perf_counter() - started) / rows
            if loaded is self._loaded:  # a run of a model swapped out since says nothing
                previous = self._seconds_per_row
                self._seconds_per_row = (
                    per_row
                    if previous is None
                    else (1 - ESTIMATE_WEIGHT) * previous + ESTIMATE_WEIGHT * per_row
                )
            return np.asarray(scores, dtype=np.float32).reshape(-1)

        estimate = self._seconds_per_row
        if estimate is not None and 0 < estimate * rows <= self._inline_max_seconds:
            # Expected to take less than the executor round trip would; the timeout cannot
            # fire within that (and an estimate that grows moves the next batches off again).
            return run()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                return await loop.run_in_executor(self._executor, run)
        except TimeoutError:
            raise DeadlineExceeded("the ONNX ranking model did not answer in time") from None
