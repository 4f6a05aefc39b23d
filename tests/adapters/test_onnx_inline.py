"""OnnxRanker runs a batch its model is expected to score quickly on the event loop, and
everything else (and every batch before an estimate exists) in the executor."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys.adapters.rankers.onnx import OnnxRanker
from recsys.domain.ranking import RANKING_FEATURES
from recsys.ranking.model_repository import ModelRepository

ROOT = Path(__file__).resolve().parents[2]
FEATURES = np.random.default_rng(2).random((1000, len(RANKING_FEATURES)), np.float32)


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def executor() -> Iterator[CountingExecutor]:
    pool = CountingExecutor()
    yield pool
    pool.shutdown()


def ranker(executor: CountingExecutor, inline_max_seconds: float) -> OnnxRanker:
    model = OnnxRanker(
        ModelRepository(ROOT / "triton_models"),
        executor=executor,
        inline_max_seconds=inline_max_seconds,
    )
    model.load()
    return model


async def test_a_batch_within_the_estimate_runs_inline(executor: CountingExecutor) -> None:
    model = ranker(executor, inline_max_seconds=60.0)
    first = await model.score(FEATURES, timeout=10)
    assert executor.submitted == 1  # no estimate yet: the executor
    second = await model.score(FEATURES, timeout=10)
    third = await model.score(FEATURES[:10], timeout=10)
    assert executor.submitted == 1  # estimated well under a minute: inline
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[:10], third)
    model.load()  # a (re)loaded model has no estimate
    await model.score(FEATURES, timeout=10)
    assert executor.submitted == 2


@pytest.mark.parametrize("inline_max_seconds", [0.0, 1e-12])
async def test_otherwise_the_executor(
    executor: CountingExecutor, inline_max_seconds: float
) -> None:
    model = ranker(executor, inline_max_seconds=inline_max_seconds)
    for _ in range(3):
        await model.score(FEATURES, timeout=10)
    assert executor.submitted == 3
