"""Re-ranking equals a direct, loop-by-loop implementation of the published algorithm on small matrices."""

from __future__ import annotations

import numpy as np
import pytest

from clipmc.model.rerank import RerankConfig, average_query_expansion, k_reciprocal_rerank


def _unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(
    rng: np.random.Generator, ids: int, per: int, d: int = 16, noise: float = 0.35
) -> tuple[np.ndarray, np.ndarray]:
    centres = _unit(rng, ids, d)
    labels = np.repeat(np.arange(ids), per)
    x = centres[labels] + noise * rng.standard_normal((ids * per, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def direct_k_reciprocal(q: np.ndarray, g: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """Zhong et al. 2017 written from the paper's definitions, one pair at a time (slow, obvious)."""
    x = np.concatenate([q, g]).astype(np.float64)
    n, nq = len(x), len(q)
    d = np.array([[float(((x[i] - x[j]) ** 2).sum()) for j in range(n)] for i in range(n)])
    d = d / d.max(axis=1, keepdims=True)
    order = [sorted(range(n), key=lambda j, i=i: (d[i, j], j)) for i in range(n)]

    def n_nearest(i: int, k: int) -> list[int]:
        return order[i][: k + 1]

    def reciprocal(i: int, k: int) -> set[int]:
        return {j for j in n_nearest(i, k) if i in n_nearest(j, k)}

    V = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        star = set(r)
        for c in r:
            rc = reciprocal(c, round(k1 / 2))
            if len(rc & r) > 2 / 3 * len(rc):
                star |= rc
        for j in star:
            V[i, j] = np.exp(-d[i, j])
        V[i] /= V[i].sum()
    V = np.array([np.mean([V[j] for j in order[i][:k2]], axis=0) for i in range(n)])
    out = np.zeros((nq, n - nq))
    for i in range(nq):
        for j in range(nq, n):
            jaccard = 1 - np.minimum(V[i], V[j]).sum() / np.maximum(V[i], V[j]).sum()
            out[i, j - nq] = (1 - lam) * jaccard + lam * d[i, j]
    return out


@pytest.mark.parametrize(("seed", "k1", "k2"), [(0, 20, 6), (1, 5, 3), (2, 8, 1)])
def test_k_reciprocal_equals_the_direct_algorithm(seed: int, k1: int, k2: int) -> None:
    rng = np.random.default_rng(seed)
    x, _ = _clustered(rng, 6, 5)
    q, g = x[:9], x[9:]
    ours = k_reciprocal_rerank(q, g, k1, k2, 0.3)
    ref = direct_k_reciprocal(q, g, k1, k2, 0.3)
    assert ours.shape == (9, 21) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_k_reciprocal_ranks_true_matches_first_on_separated_identities() -> None:
    """A sanity check of direction (smaller = closer): on well-separated identities every query's nearest
    gallery item after re-ranking is of its own identity, as before."""
    rng = np.random.default_rng(5)
    x, labels = _clustered(rng, 10, 6, noise=0.08)
    q_idx = np.arange(0, 60, 6)
    g_mask = np.ones(60, bool)
    g_mask[q_idx] = False
    q, g, ql, gl = x[q_idx], x[g_mask], labels[q_idx], labels[g_mask]
    plain = (gl[np.argmin(-(q @ g.T), axis=1)] == ql).mean()
    rr = (gl[np.argmin(k_reciprocal_rerank(q, g), axis=1)] == ql).mean()
    assert plain == 1.0 and rr == 1.0


def test_aqe_is_the_normalised_mean_of_query_and_top_k() -> None:
    rng = np.random.default_rng(3)
    q, g = _unit(rng, 4), _unit(rng, 12)
    got = average_query_expansion(q, g, k=3)
    for i in range(4):
        top = np.argsort(-(g @ q[i]), kind="stable")[:3]
        expect = q[i] + g[top].sum(0)
        np.testing.assert_allclose(got[i], expect / np.linalg.norm(expect), atol=1e-6)


def test_config_labels_and_validation() -> None:
    assert "re-ranked" in RerankConfig().label and "k1=20" in RerankConfig().label
    assert "re-ranked" in RerankConfig(kind="aqe").label
    with pytest.raises(ValueError, match="unknown re-ranking"):
        RerankConfig(kind="magic")
    with pytest.raises(ValueError, match="k1"):
        RerankConfig(k1=0)
    rng = np.random.default_rng(0)
    q, g = _unit(rng, 3), _unit(rng, 7)
    assert RerankConfig().distances(q, g).shape == (3, 7)
    assert RerankConfig(kind="aqe").distances(q, g).shape == (3, 7)
