"""Rank metrics (CMC, mAP, mINP) with the camera rules of the reference VI-ReID evaluation.

Same numbers as the reference ``eval_sysu`` / ``eval_regdb`` / ``eval_llcm`` on the same distance
matrix (../shared/PROTOCOLS.md, "Metrics"), computed in row chunks with numpy instead of a Python loop:

- each query sorts the gallery with ``np.argsort(distmat, axis=1)`` (the reference call, so ties break
  the same way), then drops what its dataset's camera rule excludes:
  sysu: a cam3 query drops every cam2 entry; llcm: entries of the query's identity AND camera;
  regdb: nothing;
- AP over the whole remaining list; INP = true matches / rank of the last one;
- CMC: sysu and llcm de-duplicate the list by identity first (keep each identity's first entry), regdb
  uses the standard first-true-match rank;
- a query with no remaining true match is invalid: no AP/INP, an all-zero CMC row; mAP, mINP and the
  summed CMC are divided by the number of valid queries.

One difference by design: the reference shortens the CMC when the gallery (or its de-duplicated list)
has fewer than ``max_rank`` entries (and then fails on ragged rows); here the CMC always has
``max_rank`` entries, a rank past the end of a list keeping that list's final value.
"""

from __future__ import annotations

import numpy as np

PROTOCOLS = ("sysu", "regdb", "llcm")
_CHUNK_ELEMENTS = 1 << 21  # rows per chunk so that a chunk's [rows, gallery] arrays stay small


def rank_metrics(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray | None,
    g_camids: np.ndarray | None,
    protocol: str,
    max_rank: int = 20,
) -> tuple[np.ndarray, float, float]:
    """CMC (float32 [max_rank], fractions), mAP and mINP (fractions) of a query x gallery distance matrix.

    Smaller distance = closer. ``protocol`` picks the camera rule and CMC kind: "sysu", "regdb", "llcm".
    Camera ids may be None for "regdb" only.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (queries x gallery), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"empty distance matrix of shape {distmat.shape}")
    if not np.issubdtype(distmat.dtype, np.number) or np.isnan(distmat).any():
        raise ValueError("distmat must be numeric without NaN")
    if not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    q_pids = _vector(q_pids, num_q, "q_pids")
    g_pids = _vector(g_pids, num_g, "g_pids")
    if protocol == "regdb":
        q_camids = np.zeros(num_q, dtype=np.int64) if q_camids is None else _vector(q_camids, num_q, "q_camids")
        g_camids = np.zeros(num_g, dtype=np.int64) if g_camids is None else _vector(g_camids, num_g, "g_camids")
    else:
        if q_camids is None or g_camids is None:
            raise ValueError(f"protocol {protocol!r} needs query and gallery camera ids")
        q_camids = _vector(q_camids, num_q, "q_camids")
        g_camids = _vector(g_camids, num_g, "g_camids")

    # Gallery identities as codes 0..P-1 for the de-duplication; P marks a removed entry.
    uniq, g_codes = np.unique(g_pids, return_inverse=True)
    g_codes = g_codes.reshape(-1)
    sentinel = len(uniq)

    indices = np.argsort(distmat, axis=1)
    hits = np.zeros(max_rank, dtype=np.int64)  # valid queries whose (CMC) rank is <= k
    ap_terms: list[np.ndarray] = []
    inp_terms: list[np.ndarray] = []
    num_valid = 0
    step = max(1, _CHUNK_ELEMENTS // num_g)
    for start in range(0, num_q, step):
        order = indices[start : start + step]
        rows = np.arange(order.shape[0])
        matches = g_pids[order] == q_pids[start : start + step, None]
        removed = removed_by_camera_rule(
            protocol,
            q_pids[start : start + step, None],
            q_camids[start : start + step, None],
            g_pids[order],
            g_camids[order],
        )
        keep = ~removed
        good = matches & keep
        num_rel = good.sum(axis=1)
        valid = num_rel > 0
        if not valid.any():
            continue
        kept_rank = np.cumsum(keep, axis=1)  # 1-based rank of a kept entry in the remaining list
        cum_good = np.cumsum(good, axis=1)
        precision = np.where(good, cum_good / np.maximum(kept_rank, 1), 0.0)
        ap_terms.append(precision.sum(axis=1)[valid] / num_rel[valid])
        last = num_g - 1 - np.argmax(good[:, ::-1], axis=1)
        inp_terms.append((num_rel / kept_rank[rows, last])[valid])
        first = np.argmax(good, axis=1)
        if protocol == "regdb":
            rank0 = kept_rank[rows, first] - 1
        else:
            # De-duplicated rank: distinct identities whose first kept entry comes before the first match.
            codes = np.where(keep, g_codes[order], sentinel)
            by_code = np.argsort(codes, axis=1, kind="stable")
            sorted_codes = np.take_along_axis(codes, by_code, axis=1)
            first_sorted = np.ones_like(sorted_codes, dtype=bool)
            first_sorted[:, 1:] = sorted_codes[:, 1:] != sorted_codes[:, :-1]
            first_sorted &= sorted_codes != sentinel
            first_seen = np.zeros_like(first_sorted)
            np.put_along_axis(first_seen, by_code, first_sorted, axis=1)
            rank0 = np.cumsum(first_seen, axis=1)[rows, first] - 1
        rank0 = rank0[valid]
        hits += (rank0[:, None] <= np.arange(max_rank)[None, :]).sum(axis=0)
        num_valid += int(valid.sum())
    if num_valid == 0:
        raise ValueError("no valid query: no query identity has a true match left in the gallery after the camera rule")
    m_ap = float(np.mean(np.concatenate(ap_terms)))
    m_inp = float(np.mean(np.concatenate(inp_terms)))
    cmc = hits.astype(np.float32) / np.float32(num_valid)
    return cmc, m_ap, m_inp


def removed_by_camera_rule(
    protocol: str, q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray
) -> np.ndarray:
    """Which gallery entries a query's camera rule drops (broadcasting arrays; True = dropped).

    sysu: a cam3 query drops every cam2 entry; llcm: entries of the query's identity AND camera;
    regdb: nothing. The one definition of the rules, used by the metrics and by the ranked-list pictures.
    """
    if protocol == "sysu":
        return (q_camids == 3) & (g_camids == 2)
    if protocol == "llcm":
        return (g_pids == q_pids) & (g_camids == q_camids)
    if protocol == "regdb":
        return np.zeros(np.broadcast_shapes(np.shape(q_pids), np.shape(g_pids)), dtype=bool)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def _vector(values: object, length: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"{name} must be a vector of length {length}, got shape {arr.shape}")
    return arr
