"""Protocol drivers on tiny synthetic trees: perfect features give 100%, the cache embeds each image once,
results JSON states the PROTOCOLS.md rules, the CMC plot is a PNG, RegDB splits merge."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipmc.model.data import Record, load_dataset
from clipmc.model.protocols import evaluate, merge_results, plot_cmc, write_results_json
from tests.conftest import SYNTH_SIZE as SIZE


def one_hot(records: Sequence[Record]) -> np.ndarray:
    """Perfect features: the identity as a one-hot vector (L2-normalised by construction)."""
    return np.eye(10000, 64, dtype=np.float32)[[r.pid % 64 for r in records]]


class PixelProjection:
    """A fixed random projection of the pixels, L2-normalised; counts what it is asked to embed."""

    def __init__(self) -> None:
        self.proj = np.random.default_rng(0).normal(size=(SIZE[0] * SIZE[1] * 3, 32)).astype(np.float32)
        self.seen: Counter[str] = Counter()

    def __call__(self, records: Sequence[Record]) -> np.ndarray:
        self.seen.update(r.path for r in records)
        pix = np.stack([np.asarray(Image.open(r.path).convert("RGB"), np.float32).ravel() / 255 for r in records])
        f = (pix - pix.mean(axis=1, keepdims=True)) @ self.proj
        return f / np.linalg.norm(f, axis=1, keepdims=True)


@pytest.mark.parametrize(("layout", "kw"), [("sysu", {}), ("regdb", {"split": 2}), ("llcm", {})])
def test_perfect_features_give_100(synth_trees: dict[str, Path], layout: str, kw: dict) -> None:
    ds = load_dataset(layout, synth_trees[layout], **kw)
    res = evaluate(ds, one_hot, progress=False)
    assert set(res.settings) == set(ds.settings)
    for s in res.settings.values():
        assert len(s.trials) == len(ds.settings[s.setting].trials)
        for t in s.trials:
            assert t.metrics["R1"] == pytest.approx(100.0) and t.metrics["mAP"] == pytest.approx(100.0)
            assert t.metrics["mINP"] == pytest.approx(100.0)
            assert t.cmc == pytest.approx([100.0] * 20)


def test_sysu_driver_cache_json_and_plot(synth_trees: dict[str, Path], tmp_path: Path) -> None:
    ds = load_dataset("sysu", synth_trees["sysu"])
    extract = PixelProjection()
    res = evaluate(ds, extract, progress=False)
    # Each image embedded exactly once across the 2 modes x 10 trials.
    assert max(extract.seen.values()) == 1
    used = {r.path for m in ("all", "indoor") for t in range(10) for part in ds.query_gallery(m, t) for r in part}
    assert set(extract.seen) == used
    for name in ("all", "indoor"):
        s = res.settings[name]
        assert [t.trial for t in s.trials] == list(range(10))
        assert s.mean["R1"] == pytest.approx(np.mean([t.metrics["R1"] for t in s.trials]))
        assert all(0.0 <= v <= 100.0 for t in s.trials for v in t.metrics.values())
        assert np.all(np.diff(s.mean_cmc) >= 0)
        assert s.trials[0].num_query == len(ds.query_gallery(name, 0)[0])
    path = write_results_json(res, tmp_path / "out" / "sysu.json", extra={"checkpoint": "x.safetensors"})
    doc = json.loads(path.read_text())
    assert doc["protocol_rules"] == "../shared/PROTOCOLS.md" and "PROTOCOLS.md" in doc["statement"]
    assert doc["run"] == {"checkpoint": "x.safetensors"}
    all_search = doc["settings"]["all"]
    assert all_search["trials"] == list(range(10)) and all_search["rule"] == "sysu"
    assert "random.seed(trial)" in all_search["description"]["gallery"]
    assert "[1, 2, 4, 5]" in all_search["description"]["gallery"]
    assert "[1, 2]" in doc["settings"]["indoor"]["description"]["gallery"]
    assert all_search["mean"]["R1"] == pytest.approx(res.settings["all"].mean["R1"])
    assert len(all_search["per_trial"]) == 10 and len(all_search["mean_cmc"]) == 20
    png = plot_cmc(res, tmp_path / "out" / "cmc.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert "| sysu | all |" in res.table()


def test_regdb_splits_merge(synth_trees: dict[str, Path]) -> None:
    extract = PixelProjection()
    runs = [evaluate(load_dataset("regdb", synth_trees["regdb"], split=k), extract, progress=False) for k in (1, 2)]
    merged = merge_results(runs)
    for name in ("visible_to_thermal", "thermal_to_visible"):
        s = merged.settings[name]
        assert [t.trial for t in s.trials] == [1, 2]
        expected = np.mean([r.settings[name].trials[0].metrics["mAP"] for r in runs])
        assert s.mean["mAP"] == pytest.approx(expected)
        assert "splits [1, 2]" in s.description["trials"]
    with pytest.raises(ValueError, match="trial 1 appears in two runs"):
        merge_results([runs[0], runs[0]])


def test_llcm_one_setting_some_trials(synth_trees: dict[str, Path]) -> None:
    ds = load_dataset("llcm", synth_trees["llcm"])
    res = evaluate(ds, PixelProjection(), settings=["visible_to_ir"], trials=[0, 4], max_rank=10, progress=False)
    s = res.settings["visible_to_ir"]
    assert list(res.settings) == ["visible_to_ir"] and [t.trial for t in s.trials] == [0, 4]
    assert set(s.mean) == {"R1", "R5", "R10", "mAP", "mINP"} and len(s.mean_cmc) == 10


def test_bad_extract_output(synth_trees: dict[str, Path]) -> None:
    ds = load_dataset("regdb", synth_trees["regdb"], split=1)
    with pytest.raises(ValueError, match="shape"):
        evaluate(ds, lambda recs: np.zeros((len(recs) + 1, 4)), progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate(ds, lambda recs: np.full((len(recs), 4), np.nan), progress=False)
