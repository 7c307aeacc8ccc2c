"""The same-person probability: monotone, fitted on validation identities only, stored and reloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipmc.model.calibration import (
    CALIBRATION_FILE,
    CalibrationError,
    find_calibration,
    fit_calibration,
    load_calibration,
    save_calibration,
    threshold_at_fmr,
)


def _pairs(seed: int = 0, n_same: int = 400, n_diff: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sim = np.concatenate([rng.normal(0.6, 0.12, n_same), rng.normal(0.2, 0.12, n_diff)])
    same = np.concatenate([np.ones(n_same, bool), np.zeros(n_diff, bool)])
    return sim, same


def test_fit_is_monotone_and_threshold_meets_the_false_match_rate(tmp_path) -> None:
    sim, same = _pairs()
    cal = fit_calibration(sim, same, embedding_version="v1", target_fmr=0.01)
    grid = np.linspace(-1, 1, 401)
    p = cal.probability(grid)
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() <= 1
    assert p[0] < 0.05 and p[-1] > 0.95
    assert cal.fmr_at_threshold <= 0.01
    assert ((sim[~same] >= cal.threshold).mean()) == pytest.approx(cal.fmr_at_threshold)
    assert cal.tmr_at_threshold == pytest.approx((sim[same] >= cal.threshold).mean())
    assert cal.is_match(cal.threshold) and not cal.is_match(np.nextafter(cal.threshold, -np.inf))
    # it is the lowest such threshold: one impostor more would pass just below it
    below = np.sort(sim[~same])[::-1][int(0.01 * (~same).sum())]
    assert cal.threshold > below and cal.threshold == pytest.approx(below, abs=1e-12)


def test_saved_and_reloaded_equal(tmp_path) -> None:
    cal = fit_calibration(*_pairs(1), embedding_version="v2", target_fmr=0.05, fitted_on={"dataset": "x"})
    path = save_calibration(cal, tmp_path)
    assert path == tmp_path / CALIBRATION_FILE
    again = load_calibration(tmp_path)
    assert again == cal
    assert find_calibration(tmp_path) == cal and find_calibration(tmp_path / "nothing") is None
    np.testing.assert_array_equal(again.probability([0.1, 0.4, 0.9]), cal.probability([0.1, 0.4, 0.9]))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(probabilities=d["probabilities"][::-1]), "non-decreasing"),
        (lambda d: d.pop("threshold"), "malformed"),
        (lambda d: d.update(probabilities=[2.0] * len(d["probabilities"])), r"\[0, 1\]"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, edit, message) -> None:
    cal = fit_calibration(*_pairs(2), embedding_version="v3")
    raw = cal.to_dict()
    edit(raw)
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(raw))
    with pytest.raises(CalibrationError, match=message):
        load_calibration(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(CalibrationError, match="not a readable"):
        load_calibration(tmp_path)


def test_fit_refuses_one_sided_or_bad_input() -> None:
    with pytest.raises(CalibrationError, match="both"):
        fit_calibration(np.array([0.1, 0.2]), np.array([True, True]), embedding_version="v")
    with pytest.raises(CalibrationError, match="finite"):
        fit_calibration(np.array([np.nan, 0.2]), np.array([True, False]), embedding_version="v")
    with pytest.raises(CalibrationError, match="false-match"):
        fit_calibration(*_pairs(), embedding_version="v", target_fmr=1.5)


def test_threshold_at_zero_allowed_false_matches_is_above_every_impostor() -> None:
    sim = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    same = np.array([True, True, False, False, False])
    t, fmr, tmr = threshold_at_fmr(sim, same, 0.01)  # 1% of 3 impostors: none may pass
    assert t > 0.3 and fmr == 0.0 and tmr == 1.0


def test_calibrate_cli_uses_validation_identities_only(tmp_path, synth_trees, tiny_checkpoint, monkeypatch, capsys):
    """The command reads only the held-out identities' crops, writes calibration.json into the checkpoint
    (for its embedding_version) and reports the threshold with its true-match rate."""
    import shutil

    from clipmc.cli import main
    from clipmc.model import features, read_checkpoint_config
    from clipmc.model.data import load_dataset
    from clipmc.model.data.selection import holdout_split

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    root = synth_trees["sysu"]
    held = set(holdout_split(load_dataset("sysu", root), 0.1, 0).validation.ids)
    seen: list[int] = []
    real = features.extract_features

    def spy(model, records, **kw):
        seen.extend(r.pid for r in records)
        return real(model, records, **kw)

    monkeypatch.setattr(features, "extract_features", spy)
    args = ["calibrate", "--checkpoint", str(ckpt), "--dataset", "sysu", "--data-root", str(root), "--device", "cpu",
            "--fmr", "0.05"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "true-match rate" in out
    assert seen and set(seen) <= held  # never a test (or trained-on) identity
    cal = load_calibration(ckpt)
    assert cal.embedding_version == read_checkpoint_config(ckpt)["embedding_version"]
    assert cal.target_fmr == 0.05 and cal.fitted_on["query_modality"] == "infrared"


def test_calibrate_cli_refuses_a_checkpoint_trained_on_every_identity(tmp_path, synth_trees, tiny_checkpoint, capsys):
    import shutil

    from clipmc.cli import main

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["metadata"] = {"training_args": {"selection": "last"}}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    args = ["calibrate", "--checkpoint", str(ckpt), "--dataset", "sysu", "--data-root", str(synth_trees["sysu"])]
    assert main(args) == 2
    assert "every identity" in capsys.readouterr().err
