"""Per-dimension int8 codes of gallery vectors, the integer query, and the bound that makes them exact.

Both int8 paths use this: the one-query scan (``exact_scan.ExactScan``, FAISS
``QT_8bit_direct_signed``) and the batch scan (``batch_int8.Int8BatchScan``, ONNX Runtime's
``MatMulInteger``). Each dimension has a trained centre ``m`` and scale ``s`` (its [min, max] with a margin
mapped onto [-127, 127]); an item is stored as the integers ``c = round((x - m) s)``, and the query is
scaled instead: ``q.x ~ (q / s).c + q.m``, the second term one number per query. The scans multiply
integers, so the query is rounded to integers too: ``u = round(a q / s)`` with ``a = 127 / max|q / s|``, and
``u.c / a + q.m`` is the int8 score (the integer product, then float rounding the bound covers).

Why an int8 score can be made exact: the stored vectors' error has no closed form (a vector may fall
outside the trained ranges and be clipped), so it is measured: the largest ``E = |x - (c / s + m)|`` of
every added vector so far is kept, and the largest code norm ``|c|max``. By Cauchy-Schwarz an int8 score is
within ``|q| E`` (the stored vector) ``+ |q / s - u / a| |c|max`` (the query's rounding, known per query) of
the exact score, plus float32 rounding in the scan's output and the re-rank (bounded by
``4 d 2**-24 |q| (|x|max + E + |m|)``). A scan that keeps each query's top ``K`` int8 scores, re-scores
them exactly and finds the k-th exact score at least the K-th int8 score plus that bound has the exact
top-k (``exact_scan.rerank_and_prove``). The ranges are trained on the gallery's vectors when a scan is
built (a sample of up to 65,536; +-2% margin), or set to +-4/sqrt(d) around 0 while fewer than 1,024
exist; a later vector outside them only raises E (more re-ranking, never a wrong answer). The gallery
builds the copy again, with ranges trained anew, when it reaches 1,024 vectors and each time it doubles
past its sample (``retrain_due``), and whenever it is reopened. For unit vectors in 1280-d, E is about 0.01.
"""

from __future__ import annotations

import numpy as np

#: Fewest vectors to train the per-dimension ranges on, most to sample, and the range margin.
MIN_TRAIN, MAX_TRAIN, RANGE_MARGIN = 1024, 65536, 0.02
#: Rows encoded at a time.
_ENCODE_ROWS = 2048


def int8_error_bound(
    query_norms: np.ndarray, max_norm: float, max_error: float, dim: int, centre_norm: float = 0.0
) -> np.ndarray:
    """The stored vectors' part of the int8 bound: ``|q| E`` plus float32 rounding (see module doc)."""
    relative = max_error + 4.0 * dim * 2.0**-24 * (max_norm + max_error + centre_norm)
    return (np.asarray(query_norms, dtype=np.float64) * relative).astype(np.float64)


class Int8Codes:
    """A trained int8 code book for ``dim``-d vectors and what it has measured about the vectors encoded."""

    def __init__(self, dim: int, training: np.ndarray | None = None) -> None:
        """Args:
        dim: vector dimension.
        training: vectors to train the per-dimension ranges on (fewer than 1,024: +-4/sqrt(d) around 0).
        """
        self.dim = int(dim)
        if training is None or len(training) < MIN_TRAIN:
            r = 4.0 / np.sqrt(self.dim)  # unit vectors: components about N(0, 1/d); measured E covers the rest
            lo, hi = np.full(self.dim, -r), np.full(self.dim, r)
        else:
            sample = np.asarray(training, dtype=np.float64)
            lo, hi = sample.min(axis=0), sample.max(axis=0)
        self.trained_on = 0 if training is None or len(training) < MIN_TRAIN else len(training)
        half = np.maximum((hi - lo) / 2.0 * (1.0 + 2.0 * RANGE_MARGIN), 1e-12)
        self.centre = ((hi + lo) / 2.0).astype(np.float32)
        self.scale = (127.0 / half).astype(np.float32)
        self.centre_norm = float(np.linalg.norm(self.centre.astype(np.float64)))
        self.max_norm = 0.0
        self.max_error = 0.0  # the largest measured |x - decode(encode(x))| of an encoded vector
        self.max_code_norm = 0.0  # the largest |c| of an encoded vector's codes

    def retrain_due(self, n: int) -> bool:
        """Whether a copy of ``n`` vectors should be built again with ranges trained on them: once ``n``
        reaches 1,024 and each time it doubles past the sample the ranges came from, up to a sample of
        65,536 (a gallery that grows from empty would otherwise keep its untrained ranges, and with them a
        large measured error, until it is reopened)."""
        return n >= MIN_TRAIN and self.trained_on < min(MAX_TRAIN, n // 2)

    @staticmethod
    def training_sample(vectors: np.ndarray) -> np.ndarray | None:
        """An evenly spaced sample of up to 65,536 of ``vectors`` to train on (None when empty)."""
        n = len(vectors)
        if not n:
            return None
        return vectors[np.linspace(0, n - 1, min(n, MAX_TRAIN)).astype(np.int64)]

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """The codes of ``vectors`` as int8, and the measured error and norms updated with them (in blocks of
        rows, so the float64 error measurement stays in cache)."""
        x = np.asarray(vectors, dtype=np.float32)
        out = np.empty(x.shape, dtype=np.int8)
        centre64, scale64 = self.centre.astype(np.float64), self.scale.astype(np.float64)
        for start in range(0, len(x), _ENCODE_ROWS):
            block = x[start : start + _ENCODE_ROWS]
            codes = np.clip(np.rint((block - self.centre) * self.scale), -128.0, 127.0)
            out[start : start + _ENCODE_ROWS] = codes
            block64 = block.astype(np.float64)
            error = np.linalg.norm(block64 - (codes / scale64 + centre64), axis=1).max()
            self.max_norm = max(self.max_norm, float(np.linalg.norm(block64, axis=1).max()))
            self.max_error = max(self.max_error, float(error))
            self.max_code_norm = max(self.max_code_norm, float(np.linalg.norm(codes, axis=1).max()))
        return out

    def query_codes(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per query the integer query ``u`` (int8), its factor ``a`` and the rounding norm ``|q / s - u / a|``."""
        scaled = np.asarray(queries, dtype=np.float64) / self.scale
        peak = np.abs(scaled).max(axis=1, keepdims=True)
        factor = np.where(peak > 0, 127.0 / np.where(peak > 0, peak, 1.0), 1.0)
        codes = np.clip(np.rint(scaled * factor), -127.0, 127.0)
        rounding = np.linalg.norm(scaled - codes / factor, axis=1)
        return codes.astype(np.int8), factor[:, 0], rounding

    def offsets(self, queries: np.ndarray) -> np.ndarray:
        """``q.m`` per query: the part of the score the codes leave out (float64)."""
        return np.asarray(queries, dtype=np.float64) @ self.centre.astype(np.float64)

    def error_bound(self, queries: np.ndarray) -> np.ndarray:
        """Per query, the largest difference between its int8 score and its float32 score."""
        norms = np.linalg.norm(np.asarray(queries, dtype=np.float64), axis=1)
        stored = int8_error_bound(norms, self.max_norm, self.max_error, self.dim, self.centre_norm)
        return stored + self.query_codes(queries)[2] * self.max_code_norm
