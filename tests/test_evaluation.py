"""rank_metrics: hand-worked cases for each rule of ../shared/PROTOCOLS.md and a randomized comparison
with a plain per-query loop written here from the written rules."""

from __future__ import annotations

import numpy as np
import pytest

from clipmc.model import evaluation
from clipmc.model.evaluation import rank_metrics


def _sorted_dist(n_queries: int, n_gallery: int) -> np.ndarray:
    """Every query ranks the gallery in column order (distance = column index)."""
    return np.tile(np.arange(n_gallery, dtype=np.float64), (n_queries, 1))


def test_sysu_cam3_drops_cam2_and_cmc_is_deduplicated() -> None:
    # Gallery in rank order: pid/cam = 2/2, 1/2, 3/1, 3/4, 1/1.
    g_pids = np.array([2, 1, 3, 3, 1])
    g_cams = np.array([2, 2, 1, 4, 1])
    # Query 0: pid 1 from cam3 -> drops both cam2 entries -> list [3, 3, 1], match at rank 3:
    #   AP = 1/3, INP = 1/3; de-duplicated list [3, 1] -> CMC rank 2 (standard CMC would say 3).
    # Query 1: pid 1 from cam6 -> keeps everything -> list [2, 1, 3, 3, 1], matches at ranks 2 and 5:
    #   AP = (1/2 + 2/5) / 2 = 0.45, INP = 2/5; de-duplicated [2, 1, 3] -> CMC rank 2.
    q_pids = np.array([1, 1])
    q_cams = np.array([3, 6])
    cmc, m_ap, m_inp = rank_metrics(_sorted_dist(2, 5), q_pids, g_pids, q_cams, g_cams, "sysu", max_rank=5)
    assert m_ap == pytest.approx((1 / 3 + 0.45) / 2)
    assert m_inp == pytest.approx((1 / 3 + 0.4) / 2)
    # Both queries at rank 2: CMC = [0, 1, 1, 1, 1] (not 0.5 at rank 2 as the standard CMC would give).
    np.testing.assert_allclose(cmc, [0, 1, 1, 1, 1])
    assert cmc.dtype == np.float32 and cmc.shape == (5,)


def test_sysu_cam6_query_removes_nothing_and_cam2_rule_ignores_identity() -> None:
    # A cam3 query whose only match sits in cam2 is invalid; a cam6 query sees cam2 entries.
    g_pids = np.array([1, 2])
    g_cams = np.array([2, 1])
    dist = np.array([[0.1, 0.5], [0.1, 0.5]])
    # Query 0 (pid 1, cam3): gallery after removal [2] -> no match -> invalid.
    # Query 1 (pid 1, cam6): [1, 2] -> rank 1: AP = 1, INP = 1.
    cmc, m_ap, m_inp = rank_metrics(dist, np.array([1, 1]), g_pids, np.array([3, 6]), g_cams, "sysu", 3)
    assert m_ap == pytest.approx(1.0)
    assert m_inp == pytest.approx(1.0)
    # One valid query: the invalid query's zero row is summed and the sum divided by 1, not 2.
    np.testing.assert_allclose(cmc, [1, 1, 1])


def test_invalid_query_zero_row_divided_by_valid_count() -> None:
    g_pids = np.array([2, 1])
    g_cams = np.array([1, 2])
    # Query 0: pid 1, cam3, distances [0.5, 0.1] -> order [g1 (1/cam2), g0 (2/cam1)]; g1 dropped -> no match.
    # Query 1: pid 2, cam6, distances [0.3, 0.2] -> order [g1 (pid 1), g0 (pid 2)] -> match at rank 2:
    #   AP = 1/2, INP = 1/2, de-duplicated [1, 2] -> CMC rank 2.
    dist = np.array([[0.5, 0.1], [0.3, 0.2]])
    cmc, m_ap, m_inp = rank_metrics(dist, np.array([1, 2]), g_pids, np.array([3, 6]), g_cams, "sysu", 4)
    # CMC = (zero row + [0, 1, 1, 1]) / 1 valid query; ranks past the 2-entry list keep the last value.
    np.testing.assert_allclose(cmc, [0, 1, 1, 1])
    assert m_ap == pytest.approx(0.5)
    assert m_inp == pytest.approx(0.5)


def test_llcm_drops_same_identity_and_same_camera_only() -> None:
    # Gallery in rank order: pid/cam = 5/2, 7/2, 7/3, 5/4, 8/2, 5/2; query pid 5 from camera 2.
    g_pids = np.array([5, 7, 7, 5, 8, 5])
    g_cams = np.array([2, 2, 3, 4, 2, 2])
    # LLCM removes 5/2 twice (same identity and camera) and keeps 7/2 and 8/2 (other identities):
    #   list [7, 7, 5, 8] -> match at rank 3: AP = 1/3, INP = 1/3; de-duplicated [7, 5, 8] -> rank 2.
    cmc, m_ap, m_inp = rank_metrics(_sorted_dist(1, 6), np.array([5]), g_pids, np.array([2]), g_cams, "llcm", 4)
    assert m_ap == pytest.approx(1 / 3)
    assert m_inp == pytest.approx(1 / 3)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1])
    # The SYSU rule keeps them all (query not from cam3): matches at ranks 1, 4, 6:
    #   AP = (1/1 + 2/4 + 3/6) / 3 = 2/3, INP = 3/6.
    cmc, m_ap, m_inp = rank_metrics(_sorted_dist(1, 6), np.array([5]), g_pids, np.array([2]), g_cams, "sysu", 4)
    assert m_ap == pytest.approx(2 / 3)
    assert m_inp == pytest.approx(0.5)
    np.testing.assert_allclose(cmc, [1, 1, 1, 1])


def test_regdb_standard_cmc_and_no_camera_rule() -> None:
    # Gallery in rank order: pids 2, 2, 1, 1 (all "same camera" as the query: RegDB removes nothing).
    # Matches at ranks 3 and 4: AP = (1/3 + 2/4) / 2 = 5/12, INP = 2/4.
    # Standard CMC: first match at rank 3 -> [0, 0, 1, 1] (the de-duplicated CMC would give rank 2).
    g_pids = np.array([2, 2, 1, 1])
    cams = np.array([1, 1, 1, 1])
    cmc, m_ap, m_inp = rank_metrics(_sorted_dist(1, 4), np.array([1]), g_pids, cams[:1], cams, "regdb", 4)
    assert m_ap == pytest.approx(5 / 12)
    assert m_inp == pytest.approx(0.5)
    np.testing.assert_allclose(cmc, [0, 0, 1, 1])
    # Camera ids are optional for RegDB.
    cmc2, m_ap2, _ = rank_metrics(_sorted_dist(1, 4), np.array([1]), g_pids, None, None, "regdb", 4)
    np.testing.assert_array_equal(cmc, cmc2)
    assert m_ap2 == m_ap


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"protocol": "market"}, "unknown protocol"),
        ({"q_pids": np.array([1, 2, 3])}, "q_pids"),
        ({"g_camids": np.array([1])}, "g_camids"),
        ({"distmat": np.zeros(4)}, "2-D"),
        ({"q_camids": None}, "camera ids"),
        ({"distmat": np.full((2, 3), np.nan)}, "NaN"),
        ({"q_pids": np.array([8, 9])}, "no valid query"),
        ({"max_rank": 0}, "max_rank"),
    ],
)
def test_errors(kwargs: dict, message: str) -> None:
    args = {
        "distmat": np.zeros((2, 3)),
        "q_pids": np.array([1, 2]),
        "g_pids": np.array([1, 2, 3]),
        "q_camids": np.array([3, 6]),
        "g_camids": np.array([1, 2, 4]),
        "protocol": "sysu",
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        rank_metrics(**args)


def _loop_metrics(distmat, q_pids, g_pids, q_cams, g_cams, protocol, max_rank):
    """Straightforward per-query implementation of the written rules (independent of the module)."""
    order_all = np.argsort(distmat, axis=1)
    cmc_sum = np.zeros(max_rank)
    aps, inps = [], []
    for i in range(len(q_pids)):
        ranked = []
        for j in order_all[i]:
            if protocol == "sysu" and q_cams[i] == 3 and g_cams[j] == 2:
                continue
            if protocol == "llcm" and g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i]:
                continue
            ranked.append(g_pids[j])
        hits = [p == q_pids[i] for p in ranked]
        if not any(hits):
            continue
        found, precisions = 0, []
        for rank, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                precisions.append(found / rank)
                last_rank = rank
        aps.append(sum(precisions) / found)
        inps.append(found / last_rank)
        if protocol == "regdb":
            listing = ranked
        else:
            listing, seen = [], set()
            for p in ranked:
                if p not in seen:
                    seen.add(p)
                    listing.append(p)
        first = listing.index(q_pids[i])
        for k in range(max_rank):
            cmc_sum[k] += 1.0 if first <= k else 0.0
    return cmc_sum / len(aps), float(np.mean(aps)), float(np.mean(inps))


@pytest.mark.parametrize("protocol", ["sysu", "regdb", "llcm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_on_random_problems(protocol: str, seed: int, monkeypatch) -> None:
    rng = np.random.default_rng(seed)
    n_q, n_g = 70, 45
    q_pids = rng.integers(0, 14, n_q)  # ids 12, 13 never in the gallery: invalid queries
    g_pids = rng.integers(0, 12, n_g)
    if protocol == "sysu":
        q_cams, g_cams = rng.choice([3, 6], n_q), rng.choice([1, 2, 4, 5], n_g)
    else:
        q_cams, g_cams = rng.integers(1, 5, n_q), rng.integers(1, 5, n_g)
    # Integer distances make ties; both sides use the same np.argsort order.
    dist = rng.integers(0, 30, (n_q, n_g)).astype(np.float32) if seed == 2 else rng.normal(size=(n_q, n_g))
    # Small chunks so that the chunked path is exercised too.
    monkeypatch.setattr(evaluation, "_CHUNK_ELEMENTS", 7 * n_g)
    cmc, m_ap, m_inp = rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, protocol, max_rank=20)
    ref_cmc, ref_ap, ref_inp = _loop_metrics(dist, q_pids, g_pids, q_cams, g_cams, protocol, 20)
    np.testing.assert_allclose(cmc, ref_cmc, rtol=1e-6, atol=0)
    assert m_ap == pytest.approx(ref_ap, rel=1e-12)
    assert m_inp == pytest.approx(ref_inp, rel=1e-12)
    assert 0 < cmc[0] <= cmc[-1] <= 1


def test_large_gallery_chunks_agree(monkeypatch) -> None:
    rng = np.random.default_rng(7)
    n_q, n_g = 300, 200
    q_pids, g_pids = rng.integers(0, 40, n_q), rng.integers(0, 40, n_g)
    q_cams, g_cams = rng.choice([3, 6], n_q), rng.choice([1, 2, 4, 5], n_g)
    dist = rng.normal(size=(n_q, n_g))
    whole = rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, "sysu")
    monkeypatch.setattr(evaluation, "_CHUNK_ELEMENTS", 13 * n_g)
    chunked = rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, "sysu")
    np.testing.assert_array_equal(whole[0], chunked[0])
    assert whole[1] == pytest.approx(chunked[1], rel=1e-14)
    assert whole[2] == pytest.approx(chunked[2], rel=1e-14)
