"""`clipmc evaluate --rerank` and `--visualize`: re-ranked numbers in their own labelled files, pictures of
ranked lists drawn from the matrix that was scored."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def synth_sysu(synth_trees):
    return synth_trees["sysu"]


def _evaluate(tmp_path, synth_sysu, tiny_checkpoint, *extra: str) -> int:
    from clipmc.cli import main

    return main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "sysu", "--data-root",
                 str(synth_sysu), "--mode", "all", "--trials", "0,1", "--workers", "0", "--out",
                 str(tmp_path / "eval"), *extra])  # fmt: skip


def test_rerank_writes_labelled_results_apart_from_plain_ones(tmp_path, synth_sysu, tiny_checkpoint, capsys):
    out = tmp_path / "eval"
    assert _evaluate(tmp_path, synth_sysu, tiny_checkpoint) == 0
    assert _evaluate(tmp_path, synth_sysu, tiny_checkpoint, "--rerank", "k-reciprocal") == 0
    assert "RE-RANKED (K-RECIPROCAL" in capsys.readouterr().out
    plain = json.loads((out / "results.json").read_text())
    rr = json.loads((out / "results-reranked.json").read_text())
    assert plain["reranking"] is None and "not re-ranked" in plain["distance"]
    assert rr["reranking"]["kind"] == "k-reciprocal" and rr["reranking"]["k1"] == 20
    assert "re-ranked" in rr["distance"]
    assert (out / "cmc-reranked.png").is_file() and (out / "cmc.png").is_file()
    assert rr["settings"]["all"]["mean"] != plain["settings"]["all"]["mean"]  # re-ranking changed the numbers


def test_merge_refuses_to_mix_plain_and_reranked() -> None:
    from clipmc.model.protocols import EvaluationResults, merge_results

    plain = EvaluationResults("regdb", "/x", 20)
    rr = EvaluationResults("regdb", "/x", 20, reranking={"kind": "aqe", "label": "re-ranked"})
    with pytest.raises(ValueError, match="re-ranked"):
        merge_results([plain, rr])


def test_visualize_writes_ranked_list_pngs(tmp_path, synth_sysu, tiny_checkpoint):
    assert _evaluate(tmp_path, synth_sysu, tiny_checkpoint, "--visualize", "3") == 0
    pngs = sorted((tmp_path / "eval" / "ranked" / "all").glob("*.png"))
    assert len(pngs) == 3
    img = np.asarray(Image.open(pngs[0]).convert("RGB"))
    assert img.shape[1] >= 6 + 3 * (64 + 6) + 6  # the query and its ranked crops (up to ten)
    green = ((img[..., 0] == 40) & (img[..., 1] == 170) & (img[..., 2] == 60)).any()
    red = ((img[..., 0] == 210) & (img[..., 1] == 40) & (img[..., 2] == 40)).any()
    assert green or red  # every ranked crop is framed as a true or a false match


def test_visualize_frames_follow_identity_and_camera_rule(tmp_path):
    """A cam3 query: cam2 gallery entries are dropped before drawing, as the SYSU rule drops them."""
    from clipmc.model.data.records import Record
    from clipmc.model.visualize import RankedListWriter

    crop = tmp_path / "c.png"
    Image.new("RGB", (32, 64), (128, 128, 128)).save(crop)
    q = Record(str(crop), pid=1, camid=3, modality=1)
    gallery = [Record(str(crop), pid=p, camid=c, modality=0) for p, c in [(1, 2), (2, 1), (1, 1), (3, 4)]]
    dist = np.array([[0.0, 0.1, 0.2, 0.3]])
    writer = RankedListWriter(tmp_path / "pics", 1, {"all": "sysu"}, top=10)
    writer("all", 0, [q], gallery, dist)
    img = np.asarray(Image.open(writer.written[0]).convert("RGB"))
    assert img.shape[1] == 6 + 4 * (64 + 6) + 6  # query + 3 kept (the cam2 entry dropped)
    writer("all", 1, [q], gallery, dist)  # later trials of a drawn setting are not drawn again
    assert len(writer.written) == 1
