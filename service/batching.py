"""Cross-request dynamic batching around the Embedder, as Triton's dynamic batcher does.

Requests put their crops in a queue and await one future per crop. A single batcher task takes the
first waiting crop, then gathers more until it has ``max_batch`` or ``max_wait_ms`` has passed, and runs
one model call on the whole batch (crops of both modalities together: the Embedder takes a modality
per row) in a dedicated thread, so the event loop never blocks on the model. While a call runs, new
crops queue up and form the next batch. ``max_batch=1`` turns batching off (one call per crop), the
baseline of the benchmark.

A model call that fails on a coalesced batch is retried crop by crop, so one request's bad crop fails
that request only, never the healthy requests it happened to share a call with. ``stop`` lets the call
in flight finish (its requests get their vectors) and answers the crops still waiting 503.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from clipmc.service.errors import APIError
from clipmc.service.metrics import Metrics

log = logging.getLogger("clipmc.service.batching")

EmbedFn = Callable[..., np.ndarray]  # (images, modality) or (images, modality, cameras)


@dataclass
class _Pending:
    crop: np.ndarray
    modality: int
    future: asyncio.Future[np.ndarray]
    camera: str | None = None  # the crop's camera name, for models with a camera input
    queued_at: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Coalesces concurrent ``embed`` calls into model calls of up to ``max_batch`` crops."""

    def __init__(
        self,
        embed_fn: EmbedFn,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        executor: concurrent.futures.ThreadPoolExecutor,
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.embed_fn = embed_fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.executor = executor
        self.metrics = metrics
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self._stopping = False
        self.calls = 0  # model calls made, for tests and logs

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="clipmc-batcher")

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop the batcher: crops still waiting get a 503, the model call in flight may finish first."""
        self._stopping = True
        self._fail_waiting()
        if self._in_flight is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._in_flight), drain_timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(APIError(503, "shutting_down", "the service is shutting down"))
        self._set_depth()

    async def embed(
        self, crops: np.ndarray, modalities: np.ndarray | list[int], cameras: list[str | None] | None = None
    ) -> np.ndarray:
        """Vectors [N, D] for crops uint8 [N, H, W, 3], each with its modality (0 visible, 1 infrared)
        and camera name (None: unknown; only models with a camera input use it)."""
        if self._stopping:
            raise APIError(503, "shutting_down", "the service is shutting down")
        if self._task is None or self._task.done():
            raise APIError(503, "not_ready", "the embedding worker is not running")
        n = len(crops)
        if n == 0:
            raise ValueError("no crops to embed")
        if len(self._pending) + n > self.max_queue:
            raise APIError(
                503, "overloaded", f"embedding queue is full ({len(self._pending)} crops waiting)", {"Retry-After": "1"}
            )
        loop = asyncio.get_running_loop()
        cams = cameras if cameras is not None else [None] * n
        items = [_Pending(crops[i], int(modalities[i]), loop.create_future(), cams[i]) for i in range(n)]
        self._pending.extend(items)
        self._set_depth()
        self._wakeup.set()
        # A cancelled request (client gone) cancels its futures, and the batcher skips them.
        results = await asyncio.gather(*(item.future for item in items), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return np.stack(results)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = loop.time() + self.max_wait
            while len(self._pending) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch: list[_Pending] = []
            while self._pending and len(batch) < self.max_batch:
                item = self._pending.popleft()
                if not item.future.done():  # skip crops whose request was cancelled
                    batch.append(item)
            self._set_depth()
            if batch:
                self._in_flight = loop.create_future()
                try:
                    await self._call(loop, batch)
                finally:
                    self._in_flight.set_result(None)
                    self._in_flight = None

    async def _call(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], *, isolate: bool = True) -> None:
        images = np.stack([item.crop for item in batch])
        modality = np.asarray([item.modality for item in batch], dtype=np.int64)
        cameras = [item.camera for item in batch]
        args = (images, modality) if all(c is None for c in cameras) else (images, modality, cameras)
        start = time.perf_counter()
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch))
            for item in batch:
                self.metrics.queue_wait.observe(start - item.queued_at)
        try:
            vectors = await loop.run_in_executor(self.executor, self.embed_fn, *args)
            if len(vectors) != len(batch):
                raise RuntimeError(f"embedder returned {len(vectors)} vectors for {len(batch)} crops")
        except asyncio.CancelledError:
            for item in batch:
                item.future.cancel()
            raise
        except Exception as exc:
            log.error("model call on %d crops failed: %r", len(batch), exc)
            if isolate and len(batch) > 1:
                # Coalesced crops of other requests must not share the failure: one call per crop.
                for item in batch:
                    if not item.future.done():
                        await self._call(loop, [item], isolate=False)
                return
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self.calls += 1
            if self.metrics is not None:
                self.metrics.embed_latency.observe(time.perf_counter() - start)
        for item, vector in zip(batch, vectors, strict=True):
            if not item.future.done():
                item.future.set_result(vector)

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))
