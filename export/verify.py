"""Parity of exported runtimes against the torch reference (DESIGN.md section 6), as a report.

The gate: per-vector cosine to torch fp32 >= 0.99999 for fp32 runtimes and >= 0.999 for fp16 ones,
and identical top-k gallery ids when queries and gallery are both embedded by the runtime. It runs on
fresh random crops every time and, when given a folder, on the user's own crops embedded as both
modalities, because parity on noise says little about parity on the images that matter.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipmc.contract import IMAGE_SUFFIXES
from clipmc.model.preprocess import PreprocessConfig

from .base import Embedder

log = logging.getLogger(__name__)

COSINE_THRESHOLD = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99}
# Reference-score gaps below which two gallery items count as tied: reordering them is numerical noise of
# the precision, not a ranking change (fp16 scores carry ~1e-3 error; fp32 ~1e-7). INT8 (dynamic
# quantisation, CPU) is an opt-in approximation with its own, looser gate.
TIE_TOLERANCE = {"fp32": 1e-6, "fp16": 2e-3, "int8": 2e-2}


@dataclass
class ParityRow:
    """One runtime on one input set."""

    runtime: str
    inputs: str
    n: int
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float
    threshold: float
    topk: int
    topk_identical: bool
    topk_mismatched_queries: int
    topk_agree: bool
    topk_mismatched_beyond_ties: int
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.threshold and self.topk_agree and not self.notes


@dataclass
class ParityReport:
    reference: dict[str, Any]
    rows: list[ParityRow]
    checks: list[str]  # failed consistency checks (embedding_version mismatch, ...)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows) and not self.checks

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reference": self.reference,
            "checks_failed": self.checks,
            "rows": [{**asdict(r), "passed": r.passed} for r in self.rows],
        }

    def table(self) -> str:
        head = ("runtime", "inputs", "n", "min cos", "mean cos", "max |diff|", "gate", "top-k", "result")
        lines = [head]
        for r in self.rows:
            lines.append(
                (
                    r.runtime,
                    r.inputs,
                    str(r.n),
                    f"{r.min_cosine:.7f}",
                    f"{r.mean_cosine:.7f}",
                    f"{r.max_abs_diff:.2e}",
                    f">= {r.threshold}",
                    f"top-{r.topk} " + _ranking_cell(r),
                    "PASS" if r.passed else "FAIL",
                )
            )
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        out = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
        out.insert(1, "-+-".join("-" * w for w in widths))
        for r in self.rows:
            out.extend(f"  {r.runtime} / {r.inputs}: {note}" for note in r.notes)
        out.extend(f"FAIL: {c}" for c in self.checks)
        out.append("parity: " + ("PASS" if self.passed else "FAIL"))
        return "\n".join(out)


def _ranking_cell(r: ParityRow) -> str:
    if r.topk_identical:
        return "identical"
    if r.topk_agree:
        return f"same up to ties ({r.topk_mismatched_queries} reordered)"
    return f"{r.topk_mismatched_beyond_ties} queries differ"


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity of two [N, D] arrays."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(1) / np.maximum(denom, 1e-30)


def topk_agreement(
    ref_queries: np.ndarray,
    ref_gallery: np.ndarray,
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int = 5,
    tie_tolerance: float = 0.0,
) -> dict[str, Any]:
    """Do the runtime's top-k gallery ids equal the reference's, query by query, in order?

    `identical`: the same ids in the same order. `agree`: the same up to reordering of reference
    near-ties (at each rank the reference scores of the two ids differ by at most `tie_tolerance`).
    """
    k = min(k, ref_gallery.shape[0])
    ref_scores = ref_queries @ ref_gallery.T
    ref_ids = np.argsort(-ref_scores, axis=1, kind="stable")[:, :k]
    got_ids = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :k]
    differ = (ref_ids != got_ids).any(axis=1)
    rows = np.arange(len(ref_ids))[:, None]
    gap = np.abs(ref_scores[rows, ref_ids] - ref_scores[rows, got_ids])
    beyond_ties = (gap > tie_tolerance).any(axis=1)
    return {
        "k": k,
        "queries": len(ref_ids),
        "identical": not differ.any(),
        "mismatched_queries": int(differ.sum()),
        "agree": not beyond_ties.any(),
        "mismatched_beyond_ties": int(beyond_ties.sum()),
    }


def compare(
    runtime: str,
    inputs: str,
    reference: Embedder,
    candidate: Embedder,
    images: np.ndarray,
    modality: np.ndarray,
    *,
    query_mask: np.ndarray,
    k: int = 5,
) -> ParityRow:
    """Embed the same batch with both, compare vectors; rank gallery (~query_mask) by query_mask rows."""
    ref = reference.embed(images, modality)
    got = candidate.embed(images, modality)
    cos = cosine_rows(ref, got)
    notes = []
    if not np.isfinite(got).all():
        notes.append("non-finite values in the runtime's output")
    ranking = topk_agreement(
        ref[query_mask], ref[~query_mask], got[query_mask], got[~query_mask], k, TIE_TOLERANCE[candidate.precision]
    )
    return ParityRow(
        runtime=runtime,
        inputs=inputs,
        n=len(images),
        min_cosine=float(np.nan_to_num(cos.min(), nan=-1.0)),
        mean_cosine=float(np.nan_to_num(cos.mean(), nan=-1.0)),
        max_abs_diff=float(np.abs(ref - got).max()),
        threshold=COSINE_THRESHOLD[candidate.precision],
        topk=ranking["k"],
        topk_identical=ranking["identical"],
        topk_mismatched_queries=ranking["mismatched_queries"],
        topk_agree=ranking["agree"],
        topk_mismatched_beyond_ties=ranking["mismatched_beyond_ties"],
        notes=notes,
    )


def random_crops(n: int, image_size: tuple[int, int], rng: np.random.Generator | None = None) -> np.ndarray:
    """Fresh random uint8 crops [n, H, W, 3]: coarse random colour blocks plus pixel noise.

    Pure per-pixel noise makes every crop look alike to the network (gallery scores within ~1e-7 of
    each other, below fp32 noise), so a ranking check on it would test ties, not the runtime.
    """
    rng = rng or np.random.default_rng()
    h, w = image_size
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        gh, gw = int(rng.integers(2, 7)), int(rng.integers(1, 4))
        blocks = rng.integers(0, 256, (gh, gw, 3)).astype(np.float32)
        up = blocks.repeat(-(-h // gh), 0)[:h].repeat(-(-w // gw), 1)[:, :w]
        out[i] = np.clip(up + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    return out


def random_inputs(n: int, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fresh random crops (no fixed seed), modality alternating; the infrared half are the queries."""
    images = random_crops(n, image_size)
    modality = np.arange(n, dtype=np.int64) % 2
    return images, modality, modality == 1


def folder_inputs(
    directory: str | Path, image_size: tuple[int, int], limit: int = 64, preprocessing: PreprocessConfig | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The user's crops through the contract's preprocessing, each embedded as both modalities:
    the infrared copies are the queries and the visible copies the gallery."""
    from clipmc.model.preprocess import preprocess

    files = sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if len(files) < 2:
        raise ValueError(f"{directory}: needs at least 2 images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    cfg = preprocessing or PreprocessConfig(height=image_size[0], width=image_size[1])
    tensors = np.stack([preprocess(f, cfg) for f in files])
    n = len(files)
    images = np.concatenate([tensors, tensors])
    modality = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
    return images, modality, modality == 1


def parity_report(
    reference: Embedder,
    candidates: dict[str, Embedder],
    *,
    n_random: int = 32,
    images_dir: str | Path | None = None,
    k: int = 5,
) -> ParityReport:
    """Compare every candidate runtime with the torch reference on random crops (and a folder)."""
    checks = []
    for name, cand in candidates.items():
        if cand.embedding_version != reference.embedding_version:
            checks.append(
                f"{name} embedding_version {cand.embedding_version} != checkpoint {reference.embedding_version}"
            )
        if cand.embedding_dim != reference.embedding_dim:
            checks.append(f"{name} embedding_dim {cand.embedding_dim} != checkpoint {reference.embedding_dim}")
    rows = []
    if not any("embedding_dim" in c for c in checks):
        inputs = [("random", random_inputs(n_random, reference.image_size))]
        if images_dir is not None:
            folder = folder_inputs(images_dir, reference.image_size, preprocessing=reference.preprocessing)
            inputs.append((f"images ({Path(images_dir).name})", folder))
        for label, (images, modality, queries) in inputs:
            for name, cand in candidates.items():
                log.info("comparing %s with torch on %s inputs (%d)", name, label, len(images))
                rows.append(compare(name, label, reference, cand, images, modality, query_mask=queries, k=k))
    return ParityReport(reference=reference.describe(), rows=rows, checks=checks)
