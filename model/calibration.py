"""A calibrated same-person score: similarity -> probability that two crops show one person.

Operators ask "is this the same person?", not "what is the cosine?". The answer is a monotone map
fitted on *validation* identities (never test: PROTOCOLS.md, "Selection"), from the similarity of a
query-modality crop and a gallery-modality crop to the probability that they share an identity, plus
a decision threshold at a chosen false-match rate (FMR, default 1%) with its true-match rate (TMR).

Fitting uses scikit-learn's isotonic regression (the standard non-parametric calibrator: monotone by
construction, no shape assumed). What is stored is its breakpoints, so applying it needs NumPy only
(``np.interp`` over the breakpoints is exactly ``IsotonicRegression.predict`` with clipping): the
service reads ``calibration.json`` without scikit-learn.

The file lives in the checkpoint directory and names the ``embedding_version`` it was fitted for: a
calibration of another model's similarities is refused.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipmc.contract import atomic_write

CALIBRATION_FILE = "calibration.json"
FORMAT = "clipmc-calibration/1"


class CalibrationError(ValueError):
    """A calibration file is missing, malformed, or belongs to another model."""


@dataclass(frozen=True)
class Calibration:
    """A fitted similarity -> same-person probability map and its decision threshold.

    Attributes:
        embedding_version: the model whose similarities it maps.
        scores, probabilities: the isotonic breakpoints (scores increasing, probabilities non-decreasing).
        threshold: similarity at or above which a pair is called a match (at ``target_fmr``).
        target_fmr: the false-match rate the threshold was chosen for, on the validation pairs.
        fmr_at_threshold, tmr_at_threshold: the rates measured there on the validation pairs.
        fitted_on: what it was fitted on (dataset, identities, modalities, pair counts).
    """

    embedding_version: str
    scores: tuple[float, ...]
    probabilities: tuple[float, ...]
    threshold: float
    target_fmr: float
    fmr_at_threshold: float
    tmr_at_threshold: float
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def probability(self, similarity: np.ndarray | float) -> np.ndarray:
        """Same-person probability for each similarity (clipped to the fitted range at the ends)."""
        return np.interp(np.asarray(similarity, np.float64), self.scores, self.probabilities).astype(np.float32)

    def is_match(self, similarity: np.ndarray | float) -> np.ndarray:
        """True where the similarity reaches the stored threshold."""
        return np.asarray(similarity) >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scores"], d["probabilities"] = list(self.scores), list(self.probabilities)
        return {"format": FORMAT, **d}

    def summary(self) -> dict[str, Any]:
        """What a response or /readyz shows: the decision rule, without the breakpoints."""
        return {
            "threshold": self.threshold,
            "target_fmr": self.target_fmr,
            "fmr_at_threshold": self.fmr_at_threshold,
            "tmr_at_threshold": self.tmr_at_threshold,
            "embedding_version": self.embedding_version,
        }


def fit_calibration(
    similarity: np.ndarray,
    same: np.ndarray,
    *,
    embedding_version: str,
    target_fmr: float = 0.01,
    fitted_on: dict[str, Any] | None = None,
) -> Calibration:
    """Fit the monotone map and the threshold on labelled pairs.

    Args:
        similarity: [P] similarities of cross-modality pairs (validation identities only).
        same: [P] bool, whether each pair shows one person.
        embedding_version: the model that produced the similarities.
        target_fmr: the false-match rate the threshold is chosen for (0 < fmr < 1).
        fitted_on: provenance recorded in the file.

    Returns:
        The calibration; its threshold is the smallest similarity whose false-match rate on these pairs
        is at most ``target_fmr``.
    """
    from sklearn.isotonic import IsotonicRegression

    sim = np.asarray(similarity, np.float64).reshape(-1)
    lab = np.asarray(same, bool).reshape(-1)
    if sim.shape != lab.shape or sim.size == 0:
        raise CalibrationError(f"need one label per similarity, got {sim.shape} and {lab.shape}")
    if not np.isfinite(sim).all():
        raise CalibrationError("similarities must be finite")
    if lab.all() or not lab.any():
        raise CalibrationError("need both same-person and different-person pairs to calibrate")
    if not 0.0 < target_fmr < 1.0:
        raise CalibrationError(f"target false-match rate must be in (0, 1), got {target_fmr}")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(sim, lab.astype(float))
    threshold, fmr, tmr = threshold_at_fmr(sim, lab, target_fmr)
    return Calibration(
        embedding_version=embedding_version,
        scores=tuple(float(x) for x in iso.X_thresholds_),
        probabilities=tuple(float(y) for y in iso.y_thresholds_),
        threshold=threshold,
        target_fmr=float(target_fmr),
        fmr_at_threshold=fmr,
        tmr_at_threshold=tmr,
        fitted_on={**(fitted_on or {}), "pairs": int(sim.size), "same_pairs": int(lab.sum())},
    )


def threshold_at_fmr(similarity: np.ndarray, same: np.ndarray, target_fmr: float) -> tuple[float, float, float]:
    """(threshold, FMR, TMR): the lowest threshold t with FMR(t) = P(sim >= t | different) <= target."""
    sim = np.asarray(similarity, np.float64)
    lab = np.asarray(same, bool)
    neg = np.sort(sim[~lab])[::-1]
    allowed = math.floor(target_fmr * neg.size)  # false matches we may accept
    # Above the (allowed+1)-th highest impostor score: at most `allowed` impostors pass.
    threshold = float(np.nextafter(neg[allowed], np.inf)) if allowed < neg.size else float(neg[-1])
    fmr = float((sim[~lab] >= threshold).mean())
    tmr = float((sim[lab] >= threshold).mean())
    return threshold, fmr, tmr


def save_calibration(calibration: Calibration, path: str | os.PathLike) -> Path:
    """Write ``calibration.json`` (a directory gets the file inside it), atomically."""
    p = Path(path)
    if p.is_dir():
        p = p / CALIBRATION_FILE
    return atomic_write(p, json.dumps(calibration.to_dict(), indent=2) + "\n")


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration file (or the one inside a checkpoint directory); every failure is a CalibrationError."""
    p = Path(path)
    if p.is_dir():
        p = p / CALIBRATION_FILE
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"{p}: no calibration file (run clipmc calibrate)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{p}: not a readable calibration ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CalibrationError(f"{p}: not a clipmc calibration (format != {FORMAT!r})")
    try:
        cal = Calibration(
            embedding_version=str(raw["embedding_version"]),
            scores=tuple(float(x) for x in raw["scores"]),
            probabilities=tuple(float(y) for y in raw["probabilities"]),
            threshold=float(raw["threshold"]),
            target_fmr=float(raw["target_fmr"]),
            fmr_at_threshold=float(raw["fmr_at_threshold"]),
            tmr_at_threshold=float(raw["tmr_at_threshold"]),
            fitted_on=dict(raw.get("fitted_on") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"{p}: malformed calibration ({exc!r})") from None
    s, y = np.asarray(cal.scores), np.asarray(cal.probabilities)
    if s.size == 0 or s.shape != y.shape or np.any(np.diff(s) < 0) or np.any(np.diff(y) < 0):
        raise CalibrationError(f"{p}: breakpoints must be non-empty, equally long and non-decreasing")
    if np.any((y < 0) | (y > 1)) or not np.isfinite(s).all():
        raise CalibrationError(f"{p}: probabilities must lie in [0, 1] and scores be finite")
    return cal


def find_calibration(weights: str | os.PathLike) -> Calibration | None:
    """The calibration stored with a checkpoint directory, or None where there is none (or no directory)."""
    p = Path(weights)
    if p.is_file() and p.name in ("config.json", "model.safetensors"):
        p = p.parent
    if not (p.is_dir() and (p / CALIBRATION_FILE).is_file()):
        return None
    return load_calibration(p)
