"""Coalescing concurrent gallery searches into batched searches, as `batching.DynamicBatcher` does for crops.

One query vector against a 1M x 1280 gallery reads 2.5-5 GB of memory for a handful of multiply-adds
per byte: a memory-bound scan. Sixteen queries searched together are one matrix product over the same
memory (FAISS switches to BLAS), so under concurrent load throughput grows with the batch
(benchmarks/service.py, `--search-only`).

Requests put (vector, top_k, filters) in a queue and await a future. One task takes everything that
is waiting (up to ``max_batch``; it waits up to ``max_wait_ms`` for more only when that is set: by
default a lone query runs at once, and queries that arrive while a search runs form the next batch),
groups it by (filters, top_k), and runs one ``gallery.search`` per group in a dedicated thread.
Grouping on both keeps every answer what the request would get alone: each row of a batched search is
searched independently (same filter mask, same k, same IVF widening), so batching changes only when a
query runs, not what it finds (tests/test_search_batching.py).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipmc.service.errors import APIError

log = logging.getLogger("clipmc.service.search_batching")

#: gallery.search(vectors [N, D], top_k, filters) -> one list of hits per vector.
SearchFn = Callable[[np.ndarray, int, Any], list[list[Any]]]


@dataclass
class _Pending:
    vector: np.ndarray
    top_k: int
    filters: Any
    future: asyncio.Future[list[Any]]


def group_key(filters: Any, top_k: int) -> Hashable:
    """Requests that can share one batched search: equal filters (a frozen, hashable dataclass) and top_k."""
    return (filters, top_k)


class SearchBatcher:
    """Serialises gallery searches through one worker thread and batches whatever queued meanwhile."""

    def __init__(
        self, search_fn: SearchFn, *, max_batch: int = 64, max_wait_ms: float = 0.0, max_queue: int = 1024
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.search_fn = search_fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.calls = 0  # gallery.search calls made (for tests and logs)
        self.searched = 0  # queries answered

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipmc-search")
            self._task = asyncio.get_running_loop().create_task(self._run(), name="clipmc-search-batcher")

    async def stop(self) -> None:
        """Stop; searches still waiting get a 503."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(APIError(503, "shutting_down", "the service is shutting down"))
        if self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
            self._executor = None

    async def search(self, vector: np.ndarray, top_k: int, filters: Any = None) -> list[Any]:
        """The hits of one query vector [D], as ``gallery.search(vector[None], top_k, filters)[0]``."""
        if self._task is None or self._task.done():
            raise APIError(503, "not_ready", "the search worker is not running")
        if len(self._pending) >= self.max_queue:
            raise APIError(
                503, "overloaded", f"search queue is full ({len(self._pending)} waiting)", {"Retry-After": "1"}
            )
        item = _Pending(
            np.asarray(vector, dtype=np.float32), int(top_k), filters, asyncio.get_running_loop().create_future()
        )
        self._pending.append(item)
        self._wakeup.set()
        return await item.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.max_wait > 0:
                deadline = loop.time() + self.max_wait
                while len(self._pending) < self.max_batch and (remaining := deadline - loop.time()) > 0:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except TimeoutError:
                        break
            batch: list[_Pending] = []
            while self._pending and len(batch) < self.max_batch:
                item = self._pending.popleft()
                if not item.future.done():  # the client went away
                    batch.append(item)
            if batch:
                await self._call(loop, batch)

    async def _call(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        groups: dict[Hashable, list[_Pending]] = {}
        for item in batch:
            groups.setdefault(group_key(item.filters, item.top_k), []).append(item)
        assert self._executor is not None
        try:
            outcomes = await loop.run_in_executor(self._executor, self._search_groups, list(groups.values()))
        except asyncio.CancelledError:
            for item in batch:
                item.future.cancel()
            raise
        for items, outcome in zip(groups.values(), outcomes, strict=True):
            for i, item in enumerate(items):
                if item.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome[i])

    def _search_groups(self, groups: list[list[_Pending]]) -> list[list[list[Any]] | BaseException]:
        """One gallery.search per group, in the worker thread; a failing group fails only its requests."""
        out: list[list[list[Any]] | BaseException] = []
        for items in groups:
            vectors = np.stack([item.vector for item in items])
            try:
                hits = self.search_fn(vectors, items[0].top_k, items[0].filters)
                if len(hits) != len(items):
                    raise RuntimeError(f"search returned {len(hits)} result lists for {len(items)} queries")
                out.append(hits)
            except Exception as exc:  # handed to each request of the group, which reports it
                out.append(exc)
            self.calls += 1
            self.searched += len(items)
        if len(groups) > 1 or len(groups[0]) > 1:
            log.debug("searched %d queries in %d batched calls", sum(map(len, groups)), len(groups))
        return out
