"""Runs the shard searches started in one event-loop turn as a few executor jobs.

In the embedded mode one Retrieve fans out to every in-process shard at once; one executor job
per shard costs a thread hop, a wake-up and GIL hand-overs each, which cost more than a small
shard's FAISS search. The batcher collects the searches submitted during one turn of the loop
and runs them in `lanes` jobs (each searching its share of the shards one after another, FAISS
releasing the GIL so the lanes overlap on the cores), then settles the results in one
callback per lane.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from typing import Any


class SearchBatcher:
    def __init__(self, executor: concurrent.futures.Executor | None, *, lanes: int) -> None:
        if lanes < 1:
            raise ValueError("a batcher needs at least one lane")
        self._executor = executor
        self.lanes = lanes
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []

    def submit(self, job: Callable[[], Any]) -> asyncio.Future[Any]:
        """A future of `job()`, run in the executor with the others submitted this turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            # Runs after the tasks already scheduled for this turn: a fan-out's searches all
            # get submitted before it.
            loop.call_soon(self._flush, loop)
        self._pending.append((job, future))
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        pending, self._pending = self._pending, []
        lanes = min(self.lanes, len(pending))
        for lane in range(lanes):
            # Interleaved, so consecutive shards of one fan-out run on different lanes.
            share = pending[lane::lanes]
            try:
                submitted = loop.run_in_executor(self._executor, _run_lane, loop, share)
            except RuntimeError as error:  # the executor is shut down
                _settle([(future, None, error) for _, future in share])
                continue
            submitted.add_done_callback(functools.partial(_fail_lane, share=share))


def _run_lane(
    loop: asyncio.AbstractEventLoop, share: list[tuple[Callable[[], Any], asyncio.Future[Any]]]
) -> None:
    outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
    for job, future in share:
        if future.cancelled():
            # The caller gave up (deadline) while the lane waited for a thread: skip its search,
            # as the executor drops a job cancelled before it starts. A racy read at worst runs
            # one search for nothing.
            continue
        try:
            outcomes.append((future, job(), None))
        except Exception as error:
            outcomes.append((future, None, error))
    loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.done():  # cancelled meanwhile (the caller's deadline passed)
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _fail_lane(
    done: asyncio.Future[None], share: list[tuple[Callable[[], Any], asyncio.Future[Any]]]
) -> None:
    """The lane itself failed (executor shut down): its searches fail instead of hanging."""
    if done.cancelled():
        error: BaseException = asyncio.CancelledError()
    else:
        failure = done.exception()
        if failure is None:
            return
        error = failure
    for _, future in share:
        if not future.done():
            if isinstance(error, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(error)
