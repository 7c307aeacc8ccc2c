"""The dynamic batcher (service/batching.py): grouping, failure isolation, shutdown and overflow.

Unit checks drive ``DynamicBatcher`` with a NumPy embed function; the HTTP checks run the real
service (uvicorn on loopback, the tiny model) with an embedder wrapper that can block or fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import numpy as np
import pytest

from clipmc.service.batching import DynamicBatcher
from clipmc.service.errors import APIError
from tests.service_fixtures import INFRARED_CAMERA, crop_bytes, encode, live_server, query_multipart, settings_for


def _fake_embed(calls: list[tuple[int, list[int]]]) -> Any:
    """Vectors that echo each crop's first pixel and modality; a crop whose first pixel is 255 fails the call."""

    def embed(images: np.ndarray, modality: np.ndarray) -> np.ndarray:
        calls.append((len(images), modality.tolist()))
        if (images[:, 0, 0, 0] == 255).any():
            raise RuntimeError("model failure")
        out = np.zeros((len(images), 4), np.float32)
        out[:, 0] = images[:, 0, 0, 0]
        out[:, 1] = modality
        return out

    return embed


def _crop(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 2, 2, 3), value, np.uint8)


def test_batcher_groups_modalities_and_refuses_queue_overflow() -> None:
    calls: list[tuple[int, list[int]]] = []

    async def scenario() -> None:
        executor = concurrent.futures.ThreadPoolExecutor(1)
        batcher = DynamicBatcher(_fake_embed(calls), max_batch=4, max_wait_ms=50, max_queue=10, executor=executor)
        batcher.start()
        results = await asyncio.gather(*(batcher.embed(_crop(i), [i % 2]) for i in range(6)))
        for i, vec in enumerate(results):
            assert vec[0, 0] == i and vec[0, 1] == i % 2
        assert [n for n, _ in calls] == [4, 2]  # both modalities in one call
        with pytest.raises(APIError, match="queue is full") as info:
            await batcher.embed(_crop(0, 11), [0] * 11)
        assert info.value.status == 503 and info.value.code == "overloaded"
        await batcher.stop()
        executor.shutdown()

    asyncio.run(scenario())


def test_a_failing_crop_coalesced_with_healthy_ones_fails_its_request_only() -> None:
    calls: list[tuple[int, list[int]]] = []

    async def scenario() -> None:
        executor = concurrent.futures.ThreadPoolExecutor(1)
        batcher = DynamicBatcher(_fake_embed(calls), max_batch=8, max_wait_ms=200, max_queue=32, executor=executor)
        batcher.start()
        requests = [batcher.embed(_crop(3, 2), [0, 1]), batcher.embed(_crop(255), [0]), batcher.embed(_crop(9), [1])]
        healthy_a, bad, healthy_b = await asyncio.gather(*requests, return_exceptions=True)
        assert calls[0][0] == 4  # the three requests shared one model call, which failed
        assert isinstance(bad, RuntimeError) and "model failure" in str(bad)
        assert healthy_a[:, 0].tolist() == [3, 3] and healthy_a[:, 1].tolist() == [0, 1]
        assert healthy_b[:, 0].tolist() == [9] and healthy_b[:, 1].tolist() == [1]
        ok = await batcher.embed(_crop(7, 2), [1, 0])  # and the batcher keeps working
        assert ok[:, 1].tolist() == [1, 0]
        await batcher.stop()
        executor.shutdown()

    asyncio.run(scenario())


def test_stop_lets_the_call_in_flight_finish_and_answers_waiting_crops_503() -> None:
    started = threading.Event()
    release = threading.Event()

    def slow_embed(images: np.ndarray, modality: np.ndarray) -> np.ndarray:
        started.set()
        release.wait(10)
        return np.ones((len(images), 4), np.float32)

    async def scenario() -> None:
        executor = concurrent.futures.ThreadPoolExecutor(1)
        batcher = DynamicBatcher(slow_embed, max_batch=1, max_wait_ms=0, max_queue=8, executor=executor)
        batcher.start()
        in_flight = asyncio.ensure_future(batcher.embed(_crop(1), [0]))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        waiting = asyncio.ensure_future(batcher.embed(_crop(2), [0]))
        await asyncio.sleep(0.05)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.05)
        with pytest.raises(APIError) as info:
            await batcher.embed(_crop(3), [0])  # nothing new is accepted while stopping
        assert info.value.code == "shutting_down"
        release.set()
        assert (await in_flight).shape == (1, 4)
        with pytest.raises(APIError) as info:
            await waiting
        assert info.value.status == 503 and info.value.code == "shutting_down"
        await stopping
        executor.shutdown()

    asyncio.run(scenario())


# -- over HTTP ----------------------------------------------------------------------------------------


class ControlledEmbedder:
    """Wraps the tiny embedder: ``embed`` waits for ``gate`` and fails any batch holding an all-black crop."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)
        self.sizes: list[int] = []

    def embed(self, images: np.ndarray, modality: Any) -> np.ndarray:
        self.sizes.append(len(images))
        self.entered.release()
        if not self.gate.wait(30):
            raise TimeoutError("gate never opened")
        if (images.reshape(len(images), -1).max(axis=1) == 0).any():
            raise RuntimeError("simulated model fault on a black crop")
        return self._inner.embed(images, modality)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture(scope="module")
def embedder(tiny_checkpoint):
    from clipmc.export import create_embedder

    return create_embedder("torch", str(tiny_checkpoint), batch_sizes=(1, 8))


def _black() -> bytes:
    return encode(np.zeros((128, 64, 3), np.uint8))


def test_http_failing_crop_coalesced_with_healthy_queries(tmp_path, embedder) -> None:
    from clipmc.service.app import create_app

    controlled = ControlledEmbedder(embedder)
    app = create_app(settings_for(tmp_path, max_batch=8, max_wait_ms=300.0), embedder=controlled)
    images = [crop_bytes(1, INFRARED_CAMERA), _black(), crop_bytes(2, INFRARED_CAMERA)]
    with live_server(app) as srv:
        controlled.sizes.clear()
        barrier = threading.Barrier(len(images))

        def one(image: bytes) -> Any:
            with srv.client() as c:
                barrier.wait()
                return query_multipart(c, image, top_k=1)

        with concurrent.futures.ThreadPoolExecutor(len(images)) as pool:
            responses = list(pool.map(one, images))
        assert max(controlled.sizes) > 1, controlled.sizes  # the bad crop shared a model call
        assert responses[0].status_code == 200 and responses[2].status_code == 200
        assert responses[1].status_code == 500, responses[1].text
        assert responses[1].json()["error"]["code"] == "internal_error"


def test_http_queue_overflow_is_503_overloaded_and_recovers(tmp_path, embedder) -> None:
    from clipmc.service.app import create_app

    controlled = ControlledEmbedder(embedder)
    app = create_app(settings_for(tmp_path, max_batch=1, max_wait_ms=0.0, max_queue=2), embedder=controlled)
    with live_server(app) as srv:
        while controlled.entered.acquire(blocking=False):  # warm-up calls
            pass
        controlled.gate.clear()
        pool = concurrent.futures.ThreadPoolExecutor(3)

        def one() -> Any:
            with srv.client() as c:
                return query_multipart(c, crop_bytes(3, INFRARED_CAMERA), top_k=1)

        try:
            first = pool.submit(one)
            assert controlled.entered.acquire(timeout=30)  # one crop in the model, blocked
            queued = [pool.submit(one), pool.submit(one)]
            deadline = time.monotonic() + 30
            while srv.state.batcher.depth < 2:  # two crops waiting: the queue is full
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with srv.client() as c:
                r = query_multipart(c, crop_bytes(4, INFRARED_CAMERA), top_k=1)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] == "1"
        finally:
            controlled.gate.set()
            answers = [first.result(60), *(f.result(60) for f in queued)]
            pool.shutdown()
        assert [a.status_code for a in answers] == [200, 200, 200]


def test_http_shutdown_with_requests_in_flight_answers_them(tmp_path, embedder) -> None:
    from clipmc.service.app import create_app

    controlled = ControlledEmbedder(embedder)
    app = create_app(settings_for(tmp_path, max_batch=1, max_wait_ms=0.0), embedder=controlled)
    with live_server(app) as srv:
        while controlled.entered.acquire(blocking=False):
            pass
        controlled.gate.clear()
        pool = concurrent.futures.ThreadPoolExecutor(3)

        def one(pid: int) -> Any:
            with srv.client() as c:
                return query_multipart(c, crop_bytes(pid, INFRARED_CAMERA), top_k=1)

        futures = [pool.submit(one, pid) for pid in (1, 2, 3)]
        assert controlled.entered.acquire(timeout=30)
        deadline = time.monotonic() + 30
        while srv.state.batcher.depth < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        srv.server.should_exit = True  # uvicorn stops accepting and waits for the requests in flight
        time.sleep(0.3)
        controlled.gate.set()
        answers = [f.result(60) for f in futures]
        pool.shutdown()
        srv.thread.join(30)
        assert not srv.thread.is_alive()
    assert [a.status_code for a in answers] == [200, 200, 200]
