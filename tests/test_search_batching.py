"""Coalesced /query searches (service/search_batching.py): each request gets what it would get alone."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from clipmc.gallery import BaseGallery, Filters, GalleryError, IndexConfig, Item, open_gallery
from clipmc.service.errors import APIError
from clipmc.service.search_batching import SearchBatcher
from tests.test_gallery import unit_vectors

DIM = 32


@pytest.fixture(scope="module", params=["flat", "ivf"])
def gallery(request, tmp_path_factory):
    rng = np.random.default_rng(5)
    n = 3000
    vectors = unit_vectors(rng, n, DIM)
    items = [
        Item(vector=vectors[i], modality=i % 2, camera=f"c{i % 6}", external_id=f"e{i}", timestamp=float(i))
        for i in range(n)
    ]
    config = IndexConfig(kind=request.param, nprobe=2, scan_shards=2)
    g = open_gallery(tmp_path_factory.mktemp("g") / request.param, DIM, "v1", index=config)
    g.add(items)
    yield g
    g.close()


class GatedSearch:
    """gallery.search whose first call waits for a gate, so that later requests queue behind it."""

    def __init__(self, gallery: BaseGallery) -> None:
        self.gallery = gallery
        self.gate = threading.Event()
        self.batches: list[int] = []

    def __call__(self, vectors: np.ndarray, top_k: int, filters: Filters | None) -> list:
        if not self.batches:
            self.gate.wait(10)
        self.batches.append(len(vectors))
        return self.gallery.search(vectors, top_k, filters)


def requests_for(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, int, Filters | None]]:
    choices = [
        None,
        Filters(modality=1),
        Filters(cameras=["c1", "c4"]),
        Filters(modality=0, since=500.0, until=2500.0),
        Filters(cameras=["c2"], modality=1),  # nothing matches (c2 items are visible): an empty list
    ]
    queries = unit_vectors(rng, n, DIM)
    return [(queries[i], (5, 10, 25)[i % 3], choices[i % len(choices)]) for i in range(n)]


def test_batched_searches_give_each_request_its_own_result(gallery):
    rng = np.random.default_rng(1)
    requests = requests_for(rng, 40)
    search = GatedSearch(gallery)

    async def run() -> list[list]:
        batcher = SearchBatcher(search, max_batch=64)
        batcher.start()
        try:
            first = asyncio.create_task(batcher.search(*requests[0]))
            await asyncio.sleep(0.05)  # the first search is in the worker, held at the gate
            rest = [asyncio.create_task(batcher.search(*r)) for r in requests[1:]]
            await asyncio.sleep(0.05)
            assert batcher.depth == len(requests) - 1
            search.gate.set()
            return await asyncio.gather(first, *rest)
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    groups = {(f, k) for _, k, f in requests[1:]}
    assert search.batches[0] == 1 and len(search.batches) == 1 + len(groups)  # coalesced by (filters, top_k)
    assert sum(search.batches) == len(requests)
    for (vector, top_k, filters), hits in zip(requests, results, strict=True):
        alone = gallery.search(vector, top_k, filters)[0]
        assert [h.id for h in hits] == [h.id for h in alone]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in alone], atol=1e-5, rtol=0)
        if filters is not None and filters.cameras == ("c2",):
            assert hits == []
        else:
            assert len(hits) == top_k


def test_a_failing_group_fails_only_its_requests(gallery):
    def search(vectors: np.ndarray, top_k: int, filters: Filters | None) -> list:
        if filters is not None and filters.modality == 1:
            raise GalleryError("bad filter for this test")
        return gallery.search(vectors, top_k, filters)

    rng = np.random.default_rng(2)
    q = unit_vectors(rng, 4, DIM)

    async def run() -> list:
        batcher = SearchBatcher(search)
        batcher.start()
        try:
            tasks = [batcher.search(q[i], 5, Filters(modality=i % 2)) for i in range(4)]
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert isinstance(results[1], GalleryError) and isinstance(results[3], GalleryError)
    assert len(results[0]) == 5 and len(results[2]) == 5


def test_not_started_full_queue_and_shutdown_are_503s(gallery):
    one = unit_vectors(np.random.default_rng(3), 1, DIM)[0]

    async def run() -> None:
        batcher = SearchBatcher(gallery.search, max_queue=1)
        with pytest.raises(APIError) as err:
            await batcher.search(one, 5)
        assert err.value.status == 503
        gate = threading.Event()

        def blocked(vectors: np.ndarray, top_k: int, filters: Filters | None) -> list:
            gate.wait(10)
            return gallery.search(vectors, top_k, filters)

        batcher = SearchBatcher(blocked, max_queue=1)
        batcher.start()
        running = asyncio.create_task(batcher.search(one, 5))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(batcher.search(one, 5))
        await asyncio.sleep(0.05)
        with pytest.raises(APIError, match="queue is full"):
            await batcher.search(one, 5)
        gate.set()
        await running
        await waiting
        gate.clear()
        stuck = asyncio.create_task(batcher.search(one, 5))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(batcher.search(one, 5))
        await asyncio.sleep(0.05)
        gate.set()
        await batcher.stop()
        assert stuck.done()
        with pytest.raises(APIError, match="shutting down"):
            await queued

    asyncio.run(run())


def test_concurrent_queries_are_answered_through_the_search_batcher(tmp_path: Path, tiny_checkpoint) -> None:
    """/query searches go through the app's SearchBatcher; concurrent ones get the hits a lone query gets."""
    from concurrent.futures import ThreadPoolExecutor

    from clipmc.export import create_embedder
    from clipmc.service.app import create_app
    from tests.service_fixtures import crop_array, encode, ingest_multipart, live_server, query_multipart, settings_for

    embedder = create_embedder("torch", str(tiny_checkpoint), batch_sizes=(1, 8))
    app = create_app(settings_for(tmp_path), embedder=embedder)
    with live_server(app) as server, server.client() as client:
        crops = [
            (encode(crop_array(pid, 1, i)), {"external_id": f"{pid}/{i}", "modality": "visible", "camera": 1})
            for pid in range(6)
            for i in range(3)
        ]
        assert ingest_multipart(client, crops).status_code == 200
        probes = [encode(crop_array(pid, 2, 9)) for pid in range(6)]

        def ask(image: bytes) -> list[tuple[int, float]]:
            with server.client() as c:
                r = query_multipart(c, image, modality="infrared", top_k=5)
                assert r.status_code == 200, r.text
                return [(hit["id"], hit["score"]) for hit in r.json()["results"]]

        alone = [ask(image) for image in probes]
        searched = server.state.searcher.searched
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(ask, probes * 3))
        assert server.state.searcher.searched == searched + len(together)
        for got, want in zip(together, alone * 3, strict=True):
            assert [i for i, _ in got] == [i for i, _ in want]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
