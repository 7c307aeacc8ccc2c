"""Re-ranking of a query-gallery distance matrix: k-reciprocal encoding and average query expansion.

k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, CVPR 2017, "Re-ranking Person Re-identification with
k-reciprocal Encoding") with the parameters the field uses (k1 = 20, k2 = 6, lambda = 0.3; IDKL, CAJ and
AGW ship the same defaults). It changes every metric, so a re-ranked number is always labelled as such
and never set beside plain ones (PROTOCOLS.md, "Selection, re-ranking and labels").

The algorithm, on all N = Q + G features together:

1. d(i, j): squared Euclidean distance, each row divided by its maximum.
2. R(i, k1): the k1-reciprocal neighbours of i (j in i's k1+1 nearest and i in j's), expanded by the
   R(c, k1/2) of each candidate c that shares more than 2/3 of its own set with R(i, k1).
3. V[i, j] = exp(-d(i, j)) over that set, rows normalised to sum 1; then (local query expansion)
   each row is replaced by the mean of the rows of its k2 nearest neighbours.
4. Jaccard distance between query i and gallery j: 1 - sum_k min(V_ik, V_jk) / sum_k max(V_ik, V_jk)
   (= 1 - m / (2 - m) with m the sum of minima, since the rows sum to 1).
5. final = (1 - lambda) * Jaccard + lambda * d, for the query rows and gallery columns.

Written with NumPy, sparse where it matters (V has a few hundred non-zeros per row): SYSU-MM01's
3,803 queries x 301 gallery images take seconds on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

KINDS = ("k-reciprocal", "aqe")


@dataclass(frozen=True)
class RerankConfig:
    """Which re-ranking and its parameters; recorded in every result it produced.

    Args:
        kind: "k-reciprocal" or "aqe" (average query expansion).
        k1, k2, lambda_value: k-reciprocal parameters (the field's defaults).
        aqe_k: gallery neighbours averaged into each query by AQE.
    """

    kind: str = "k-reciprocal"
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    aqe_k: int = 5

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown re-ranking {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.k1 < 1 or self.k2 < 1 or self.aqe_k < 1 or not 0.0 <= self.lambda_value <= 1.0:
            raise ValueError("re-ranking needs k1, k2, aqe_k >= 1 and 0 <= lambda <= 1")

    @property
    def label(self) -> str:
        """What every table and JSON says next to a re-ranked number."""
        if self.kind == "aqe":
            return f"re-ranked (average query expansion, k={self.aqe_k})"
        return f"re-ranked (k-reciprocal, k1={self.k1}, k2={self.k2}, lambda={self.lambda_value})"

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}

    def distances(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """The re-ranked query x gallery distance matrix (smaller = closer) for L2-normalised features."""
        if self.kind == "aqe":
            q = average_query_expansion(query, gallery, self.aqe_k)
            return -(q @ np.asarray(gallery, np.float32).T)
        return k_reciprocal_rerank(query, gallery, self.k1, self.k2, self.lambda_value)


def squared_euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a_i - b_j||^2 for all pairs, float32, clipped at 0 (rounding can make it slightly negative)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _k_reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """R(i, k): the j among i's k+1 nearest (itself included) that have i among their own k+1 nearest."""
    forward = rank[i, : k + 1]
    backward = rank[forward, : k + 1]
    return forward[(backward == i).any(axis=1)]


def k_reciprocal_rerank(
    query: np.ndarray, gallery: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """k-reciprocal re-ranked distances [Q, G] (module docstring for the algorithm).

    Args:
        query: [Q, D] features (L2-normalised, as every embedding of this project).
        gallery: [G, D] features.
        k1, k2, lambda_value: the published parameters.

    Returns:
        float32 [Q, G]; smaller is closer.
    """
    q = np.asarray(query, np.float32)
    g = np.asarray(gallery, np.float32)
    nq, n = q.shape[0], q.shape[0] + g.shape[0]
    feats = np.concatenate([q, g])
    dist = squared_euclidean(feats, feats)
    dist /= np.maximum(dist.max(axis=1, keepdims=True), 1e-12)
    k1 = min(k1, n - 1)
    # A stable sort, so that ties (duplicate crops) rank in index order on every machine.
    rank = np.argsort(dist, axis=1, kind="stable")

    half = int(np.around(k1 / 2.0))
    V = np.zeros((n, n), np.float32)
    for i in range(n):
        core = _k_reciprocal(rank, i, k1)
        expansion = [core]
        for c in core:
            cand = _k_reciprocal(rank, int(c), half)
            if len(np.intersect1d(cand, core)) > 2.0 / 3.0 * len(cand):
                expansion.append(cand)
        members = np.unique(np.concatenate(expansion))
        weight = np.exp(-dist[i, members])
        V[i, members] = weight / weight.sum()
    if k2 > 1:  # local query expansion, in row chunks (the gather is k2 x larger than V)
        expanded = np.empty_like(V)
        for start in range(0, n, 512):
            expanded[start : start + 512] = V[rank[start : start + 512, :k2]].mean(axis=1)
        V = expanded

    g_rows = V[nq:]
    jaccard = np.empty((nq, n - nq), np.float32)
    for i in range(nq):
        nz = np.flatnonzero(V[i])
        m = np.minimum(V[i, nz][None, :], g_rows[:, nz]).sum(axis=1)
        jaccard[i] = 1.0 - m / (2.0 - m)
    return (1.0 - lambda_value) * jaccard + lambda_value * dist[:nq, nq:]


def average_query_expansion(query: np.ndarray, gallery: np.ndarray, k: int = 5) -> np.ndarray:
    """Each query replaced by the L2-normalised mean of itself and its k most similar gallery features.

    Returns:
        float32 [Q, D], L2-normalised.
    """
    q = np.asarray(query, np.float32)
    g = np.asarray(gallery, np.float32)
    k = min(k, g.shape[0])
    sims = q @ g.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < g.shape[0] else np.tile(np.arange(k), (len(q), 1))
    expanded = q + g[top].sum(axis=1)
    return expanded / np.maximum(np.linalg.norm(expanded, axis=1, keepdims=True), 1e-12)
