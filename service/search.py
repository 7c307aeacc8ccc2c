"""What ``POST /query`` does between the embedder and the response: fuse a tracklet, re-rank, group, calibrate.

Kept apart from the route so each step is a plain function over vectors and search hits, tested on
its own (tests/test_service_search.py) and over HTTP (tests/test_service_operator.py):

- :func:`fuse_tracklet`: several crops of one person -> one query vector, the mean of their unit
  vectors renormalised (the usual tracklet feature of video ReID; a crop does not weigh more for
  being larger or brighter, since every vector is unit length first).
- :func:`rerank_hits`: k-reciprocal re-ranking or average query expansion (``clipmc.model.rerank``,
  the same code ``clipmc evaluate --rerank`` uses) over the best ``RERANK_CANDIDATES`` hits, with the
  vectors the gallery stored for them. Only the order changes: ``score`` stays the inner product with
  the query (what a calibration maps), the re-ranked distance is reported beside it.
- :func:`group_by_track`: one result per gallery track, its best crop; a track is a ``track_id``
  within one camera (trackers number tracks per video stream). Items without a track id stay
  individual results.
- :func:`search_query`: the loop that widens the candidate pool until ``top_k`` results (tracks)
  are found or the gallery has no more matching items.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from starlette.concurrency import run_in_threadpool

from clipmc.contract import MAX_TOP_K
from clipmc.gallery import SearchHit
from clipmc.model.rerank import RerankConfig

#: How many of the best hits a re-ranking reorders (more when ``top_k`` is larger, up to MAX_TOP_K).
RERANK_CANDIDATES = 100
#: How many candidates per requested track ``group_by=track`` starts with (then widens x4 while short).
GROUP_CANDIDATES_PER_RESULT = 5


@dataclass
class Ranked:
    """A hit in a query's answer: the gallery hit and what re-ranking and grouping added."""

    hit: SearchHit
    rerank_distance: float | None = None
    track_crops: int | None = None  # with group_by=track: the track's crops among the candidates


@dataclass
class SearchOutcome:
    """The ranked results and how they were obtained (for the response)."""

    results: list[Ranked]
    candidates: int  # hits retrieved before re-ranking / grouping
    extra: dict[str, object] = field(default_factory=dict)


def fuse_tracklet(vectors: np.ndarray) -> np.ndarray:
    """One query vector for several crops of one person: the mean of their unit vectors, renormalised.

    Args:
        vectors: [N, D] embeddings of the tracklet's crops (N >= 1).

    Returns:
        float32 [D], unit length. For N = 1 it is the crop's own (unit) vector.
    """
    v = np.asarray(vectors, np.float32)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"expected [N, D] vectors with N >= 1, got shape {v.shape}")
    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    mean = unit.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm < 1e-6:  # crops pointing in opposite directions: no direction to search with
        raise ValueError("the tracklet's crops cancel out (their mean vector is zero)")
    return (mean / norm).astype(np.float32)


def rerank_hits(query: np.ndarray, hits: list[SearchHit], config: RerankConfig) -> list[Ranked]:
    """Reorder ``hits`` by the re-ranked distance between the query and the hits' stored vectors.

    Args:
        query: [D] unit query vector.
        hits: search hits fetched ``with_vectors=True``.
        config: which re-ranking (``k-reciprocal`` with k1/k2/lambda, or ``aqe``).

    Returns:
        The hits, closest first by the re-ranked distance (ties keep the retrieval order).
    """
    if not hits:
        return []
    if any(h.item.vector is None for h in hits):
        raise RuntimeError("re-ranking needs the hits' stored vectors (search with_vectors=True)")
    gallery = np.stack([np.asarray(h.item.vector, np.float32) for h in hits])
    distances = config.distances(np.asarray(query, np.float32)[None, :], gallery)[0]
    order = np.argsort(distances, kind="stable")
    return [Ranked(hits[i], rerank_distance=float(distances[i])) for i in order]


def track_key(hit: SearchHit) -> tuple[str | None, str] | None:
    """The track a hit belongs to, (camera, track_id), or None for an item without a track id."""
    if hit.item.track_id is None:
        return None
    return (hit.item.camera, hit.item.track_id)


def group_by_track(ranked: list[Ranked]) -> list[Ranked]:
    """One result per track, its best-ranked crop, in rank order; items without a track id stay as they are.

    Each kept result records in ``track_crops`` how many of its track's crops were among ``ranked``.
    """
    counts: dict[tuple[str | None, str], int] = {}
    for r in ranked:
        key = track_key(r.hit)
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    seen: set[tuple[str | None, str]] = set()
    out = []
    for r in ranked:
        key = track_key(r.hit)
        if key is None:
            out.append(r)
        elif key not in seen:
            seen.add(key)
            out.append(Ranked(r.hit, r.rerank_distance, counts[key]))
    return out


async def search_query(
    search: Callable[[int, bool], Awaitable[list[SearchHit]]],
    query: np.ndarray,
    top_k: int,
    *,
    rerank: RerankConfig | None = None,
    group_by_track_: bool = False,
) -> SearchOutcome:
    """Retrieve, optionally re-rank and group, widening the candidate pool while results are short.

    Args:
        search: ``async (n, with_vectors) -> hits``, the gallery search with the request's filters.
        query: [D] unit query vector (for re-ranking).
        top_k: results wanted.
        rerank: the re-ranking to apply over the best ``max(top_k, RERANK_CANDIDATES)`` hits, or None.
        group_by_track_: one result per track.

    Returns:
        At most ``top_k`` results and the number of candidates they were drawn from.
    """
    if rerank is not None:
        n = max(top_k, RERANK_CANDIDATES)
    elif group_by_track_:
        n = top_k * GROUP_CANDIDATES_PER_RESULT
    else:
        n = top_k
    n = min(n, MAX_TOP_K)
    while True:
        hits = await search(n, rerank is not None)
        if rerank is not None:  # a few hundred milliseconds of NumPy at most: off the event loop
            ranked = await run_in_threadpool(rerank_hits, query, hits, rerank)
        else:
            ranked = [Ranked(h) for h in hits]
        results = group_by_track(ranked) if group_by_track_ else ranked
        # Enough results, or the gallery has no more matching items, or the pool is at its cap.
        if len(results) >= top_k or len(hits) < n or n >= MAX_TOP_K or not group_by_track_:
            return SearchOutcome(results[:top_k], candidates=len(hits))
        n = min(n * 4, MAX_TOP_K)
