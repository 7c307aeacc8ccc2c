"""Protocol drivers: run a dataset's evaluation settings over their trials with any feature extractor.

``evaluate(dataset, extract)`` follows ../shared/PROTOCOLS.md: SYSU-MM01 all/indoor over 10 gallery
draws, RegDB both directions on the loaded split (``merge_results`` averages the per-split runs), LLCM
both directions over 10 gallery draws. Distance = negated dot product of the (L2-normalised) features,
as the reference code passes it. Each image is embedded once per run: the feature cache is keyed by
path, so the fixed SYSU query set and the gallery images drawn again in later trials are not recomputed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipmc.model.data.base import ReIDDataset
from clipmc.model.data.records import Record
from clipmc.model.evaluation import rank_metrics
from clipmc.model.rerank import RerankConfig

log = logging.getLogger(__name__)

ExtractFn = Callable[[Sequence[Record]], np.ndarray]
#: Called once per setting and trial with (setting, trial, query records, gallery records, distances):
#: what `--visualize` uses to draw ranked lists from exactly the matrix that was scored.
RankedHook = Callable[[str, int, Sequence[Record], Sequence[Record], np.ndarray], None]
RANKS = (1, 5, 10, 20)
PROTOCOLS_DOC = "../shared/PROTOCOLS.md"


@dataclass
class TrialResult:
    """Metrics of one trial (gallery draw or RegDB split), in percent."""

    trial: int
    num_query: int
    num_gallery: int
    metrics: dict[str, float]  # R1, R5, R10, R20, mAP, mINP
    cmc: list[float]

    def to_dict(self) -> dict:
        return {"trial": self.trial, "num_query": self.num_query, "num_gallery": self.num_gallery,
                **self.metrics, "cmc": self.cmc}  # fmt: skip


@dataclass
class SettingResult:
    """All trials of one setting (e.g. SYSU all-search) and their plain mean."""

    setting: str
    rule: str
    description: dict[str, str]
    trials: list[TrialResult] = field(default_factory=list)

    @property
    def mean(self) -> dict[str, float]:
        keys = self.trials[0].metrics.keys()
        return {k: float(np.mean([t.metrics[k] for t in self.trials])) for k in keys}

    @property
    def mean_cmc(self) -> np.ndarray:
        return np.mean([t.cmc for t in self.trials], axis=0)

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "description": self.description,
            "trials": [t.trial for t in self.trials],
            "num_trials": len(self.trials),
            "mean": self.mean,
            "mean_cmc": [float(x) for x in self.mean_cmc],
            "per_trial": [t.to_dict() for t in self.trials],
        }


@dataclass
class EvaluationResults:
    """Results of one dataset's settings; metrics in percent."""

    dataset: str
    root: str
    max_rank: int
    settings: dict[str, SettingResult] = field(default_factory=dict)
    #: None for plain distances; else the re-ranking's parameters and label. Re-ranked numbers are
    #: labelled everywhere they appear and never merged with plain ones.
    reranking: dict | None = None

    def to_dict(self, extra: dict | None = None) -> dict:
        return {
            "protocol_rules": PROTOCOLS_DOC,
            "statement": (
                f"Evaluated with the rules of {PROTOCOLS_DOC} (the reference AGW/CAJ evaluation): camera "
                "rule, CMC kind, trials and gallery sampling as described per setting; the reported numbers "
                "are plain means over the trials. Numbers are comparable with published ones only under "
                "these rules."
            ),
            "dataset": self.dataset,
            "root": self.root,
            "distance": "negated dot product of L2-normalised features"
            + (f"; {self.reranking['label']}" if self.reranking else " (not re-ranked)"),
            "reranking": self.reranking,
            "metrics_unit": "percent",
            "max_rank": self.max_rank,
            "settings": {name: s.to_dict() for name, s in self.settings.items()},
            **({"run": extra} if extra else {}),
        }

    def table(self) -> str:
        """A Markdown table of the mean metrics per setting."""
        keys = list(next(iter(self.settings.values())).mean) if self.settings else []
        lines = [
            "| dataset | setting | trials | " + " | ".join(keys) + " |",
            "|---|---|---|" + "---|" * len(keys),
        ]
        for name, s in self.settings.items():
            mean = s.mean
            trials = ",".join(str(t.trial) for t in s.trials)
            lines.append(f"| {self.dataset} | {name} | {trials} | " + " | ".join(f"{mean[k]:.2f}" for k in keys) + " |")
        lines.append(f"\nRules: {PROTOCOLS_DOC} (camera rule, CMC, trials and gallery sampling per setting).")
        lines.append(f"**{self.reranking['label'].upper()}**" if self.reranking else "Not re-ranked.")
        for name, s in self.settings.items():
            if "vis2ir" in s.description:  # LLCM VIS->IR: say which way it was computed
                lines.append(f"{self.dataset} {name}: {s.description['vis2ir']}.")
        return "\n".join(lines)


class FeatureCache:
    """Features by image path, filled by ``extract`` on demand so each image is embedded once."""

    def __init__(self, extract: ExtractFn) -> None:
        self.extract = extract
        self.features: dict[str, np.ndarray] = {}
        self.calls = 0

    def get(self, records: Sequence[Record]) -> np.ndarray:
        missing: dict[str, Record] = {}
        for r in records:
            if r.path not in self.features and r.path not in missing:
                missing[r.path] = r
        if missing:
            todo = list(missing.values())
            feats = np.asarray(self.extract(todo))
            if feats.ndim != 2 or feats.shape[0] != len(todo):
                raise ValueError(f"extract returned an array of shape {feats.shape} for {len(todo)} images")
            if not np.isfinite(feats).all():
                raise ValueError("extract returned non-finite features")
            if self.features:
                dim = next(iter(self.features.values())).shape[0]
                if feats.shape[1] != dim:
                    raise ValueError(f"extract returned {feats.shape[1]}-d features after {dim}-d ones")
            self.calls += 1
            for r, f in zip(todo, feats, strict=True):
                self.features[r.path] = f
        return np.stack([self.features[r.path] for r in records])


def evaluate(
    dataset: ReIDDataset,
    extract: ExtractFn,
    settings: Iterable[str] | None = None,
    trials: Iterable[int] | None = None,
    max_rank: int = 20,
    progress: bool = True,
    cache: FeatureCache | None = None,
    rerank: RerankConfig | None = None,
    on_ranked: RankedHook | None = None,
) -> EvaluationResults:
    """Run ``settings`` (default: all of the dataset's) over ``trials`` (default: each setting's own).

    ``extract(records)`` returns one L2-normalised feature row per record, in order; it receives the
    records of a setting/trial that have no cached feature yet (possibly thousands: batch inside).
    ``rerank`` replaces the plain distances by re-ranked ones (the results say so); ``on_ranked`` sees
    every scored distance matrix.
    """
    from tqdm import tqdm

    names = list(dataset.settings) if settings is None else list(settings)
    specs = [dataset.setting(n) for n in names]
    wanted = None if trials is None else list(trials)
    cache = cache or FeatureCache(extract)
    jobs = [(spec, t) for spec in specs for t in (spec.trials if wanted is None else wanted)]
    results = EvaluationResults(
        dataset.name, str(dataset.root), max_rank, reranking=rerank.to_dict() if rerank else None
    )
    for spec, trial in tqdm(jobs, desc=f"evaluate {dataset.name}", unit="trial", disable=not progress):
        query, gallery = dataset.query_gallery(spec.name, trial)
        if not query or not gallery:
            raise ValueError(
                f"{dataset.name} {spec.name} trial {trial}: empty query ({len(query)}) or gallery ({len(gallery)})"
            )
        qf = cache.get(query)
        gf = cache.get(gallery)
        distmat = rerank.distances(qf, gf) if rerank else -(qf @ gf.T)
        if on_ranked is not None:
            on_ranked(spec.name, trial, query, gallery, distmat)
        cmc, m_ap, m_inp = rank_metrics(
            distmat,
            np.array([r.pid for r in query]),
            np.array([r.pid for r in gallery]),
            np.array([r.camid for r in query]),
            np.array([r.camid for r in gallery]),
            spec.rule,
            max_rank=max_rank,
        )
        metrics = {f"R{k}": float(cmc[k - 1]) * 100 for k in RANKS if k <= max_rank}
        metrics["mAP"] = m_ap * 100
        metrics["mINP"] = m_inp * 100
        setting = results.settings.setdefault(spec.name, SettingResult(spec.name, spec.rule, dict(spec.description)))
        setting.trials.append(TrialResult(trial, len(query), len(gallery), metrics, [float(x) * 100 for x in cmc]))
        log.info(
            "%s %s trial %d: R1 %.2f mAP %.2f mINP %.2f (%d queries, %d gallery)",
            dataset.name, spec.name, trial, metrics["R1"], metrics["mAP"], metrics["mINP"], len(query), len(gallery),
        )  # fmt: skip
    return results


def merge_results(runs: Sequence[EvaluationResults]) -> EvaluationResults:
    """Pool the trials of several runs of one dataset (e.g. the 10 RegDB splits, one model each)."""
    if not runs:
        raise ValueError("no results to merge")
    first = runs[0]
    merged = EvaluationResults(first.dataset, first.root, first.max_rank, reranking=first.reranking)
    for run in runs:
        if run.dataset != first.dataset or run.max_rank != first.max_rank:
            raise ValueError(f"cannot merge {run.dataset} (max_rank {run.max_rank}) into {first.dataset}")
        if run.reranking != first.reranking:
            raise ValueError("cannot merge re-ranked and plain results (or two re-rankings) into one table")
        for name, s in run.settings.items():
            target = merged.settings.setdefault(name, SettingResult(name, s.rule, dict(s.description)))
            seen = {t.trial for t in target.trials}
            for t in s.trials:
                if t.trial in seen:
                    raise ValueError(f"{first.dataset} {name}: trial {t.trial} appears in two runs")
                target.trials.append(t)
    for s in merged.settings.values():
        s.trials.sort(key=lambda t: t.trial)
        if s.rule == "regdb":
            s.description["trials"] = (
                f"splits {[t.trial for t in s.trials]}, one model per split, plain mean over splits"
            )
    return merged


def write_results_json(results: EvaluationResults, path: str | Path, extra: dict | None = None) -> Path:
    """Write the results (with the PROTOCOLS.md statement and per-trial numbers) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results.to_dict(extra), indent=2) + "\n", encoding="utf-8")
    return path


def plot_cmc(results: EvaluationResults, path: str | Path) -> Path:
    """Mean CMC curve of every setting as a PNG (matplotlib Agg, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ranks = np.arange(1, results.max_rank + 1)
    for name, s in results.settings.items():
        mean = s.mean
        ax.plot(ranks, s.mean_cmc, marker="o", markersize=3,
                label=f"{name}: R1 {mean['R1']:.1f}, mAP {mean['mAP']:.1f} ({len(s.trials)} trials)")  # fmt: skip
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_xlim(1, results.max_rank)
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"CMC, {results.dataset} (rules of PROTOCOLS.md)" + (", RE-RANKED" if results.reranking else ""))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
