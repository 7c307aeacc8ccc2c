"""Synthetic captions, the infrared coupling and the small CLIP pretrained on them (DESIGN.md section 13)."""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from clipmc.model import cli_data
from clipmc.model.synth import (
    COLOUR_NAMES,
    SynthError,
    colour_name,
    coupled_ir,
    generate,
    make_identity,
    render_image,
)
from clipmc.model.synth_captions import caption, class_prompts, crop_attributes, partial_caption, read_captions

COLOUR_WORD = re.compile(r"\b(" + "|".join(COLOUR_NAMES) + r")\b")


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """`clipmc.cli.main` (and methods.py's main) call logging.basicConfig, which binds a root handler to
    this test's captured stderr; later tests would log into the closed stream. Put the handlers back."""
    handlers = list(logging.root.handlers)
    yield
    logging.root.handlers[:] = handlers


# A seconds-sized CLIP: one layer per tower at 64 x 32 crops.
TINY_ARCH = {
    "name": "pretrain-test",
    "image_size": [64, 32],
    "itpg_heads": 2,
    "clip": {
        "embed_dim": 32,
        "quick_gelu": False,
        "vision_cfg": {"image_size": [64, 32], "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 48, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
}


def test_captions_deterministic_and_infrared_names_no_colour(tmp_path: Path) -> None:
    generate("sysu", tmp_path / "a", 8, seed=4, images_per_camera=2, size=(64, 32), progress=False)
    generate("sysu", tmp_path / "b", 8, seed=4, images_per_camera=2, size=(64, 32), workers=1, progress=False)
    generate("sysu", tmp_path / "c", 8, seed=5, images_per_camera=2, size=(64, 32), progress=False)
    text = (tmp_path / "a" / "captions.jsonl").read_bytes()
    assert text == (tmp_path / "b" / "captions.jsonl").read_bytes()
    assert text != (tmp_path / "c" / "captions.jsonl").read_bytes()
    rows = read_captions(tmp_path / "a" / "captions.jsonl")
    # One row per crop, in the layout's own paths; the layout itself is as before.
    assert sorted(r["path"] for r in rows) == sorted(str(p.relative_to(tmp_path / "a")) for p in
                                                     (tmp_path / "a").glob("cam*/*/*.jpg"))  # fmt: skip
    infrared = [r for r in rows if r["modality"] == "infrared"]
    visible = [r for r in rows if r["modality"] == "visible"]
    assert infrared and visible
    for r in infrared:
        assert r["caption"].startswith("an infrared photo of")
        assert not COLOUR_WORD.search(r["caption"]), r["caption"]
        assert r["attributes"]["upper_colour"] in COLOUR_NAMES  # the truth is still recorded, as a label
    for r in visible:
        a = r["attributes"]
        assert r["caption"].startswith("a photo of")
        assert a["upper_colour"] in r["caption"] and a["lower_colour"] in r["caption"]
        assert a["view"] in ("front", "back", "side") and f"seen from the {a['view']}" in r["caption"]
    # Both modalities of one identity share the person's attributes.
    by_pid: dict[int, set[str]] = {}
    for r in rows:
        by_pid.setdefault(r["pid"], set()).add(r["attributes"]["upper_pattern"])
    assert all(len(v) == 1 for v in by_pid.values())


def test_zero_shot_prompts_follow_the_caption_words() -> None:
    ir = class_prompts("pattern", infrared=True)
    assert set(ir) == {"plain", "hstripes", "vstripes", "diagonal", "checks", "dots"}
    assert all(not COLOUR_WORD.search(p) for ps in ir.values() for p in ps)
    vis = class_prompts("top_colour", infrared=False)
    assert all("red" in p for p in vis["red"]) and len(vis["red"]) == 2 * 6  # garments x patterns
    assert class_prompts("carried", infrared=False)["backpack"] == ["a photo of a person, carrying a backpack."]


def test_partial_captions_name_part_of_the_truth_and_no_infrared_colour() -> None:
    attrs = [crop_attributes(3, "captions", pid, 1, m, 1) for pid in range(1, 30) for m in (0, 1)]
    rng = np.random.default_rng(0)
    drawn = [(a, m, partial_caption(a, m, rng)) for a in attrs for m in (0, 1) for _ in range(5)]
    again = np.random.default_rng(0)
    assert [t for _, _, t in drawn] == [partial_caption(a, m, again) for a, m, _ in drawn]  # a function of the rng
    words = re.compile(r"[a-z-]+")
    for a, m, text in drawn:
        assert text.startswith("an infrared photo of" if m else "a photo of")
        if m:
            assert not COLOUR_WORD.search(text), text
        # Every word is one of the full caption's (across its templates): a part of the truth, nothing else.
        full = set().union(*(words.findall(caption(a, m, t)) for t in range(3)))
        assert set(words.findall(text)) <= full, (text, full)
    texts = [t for _, _, t in drawn]
    assert len(set(texts)) > len(texts) // 2  # varied, not one fixed shortening
    # Some captions name the carried object without any garment: the bag alone is evidence to match.
    alone = [t for a, _, t in drawn if a["carried"] != "none" and "carrying" in t and " in " not in t
             and "wearing" not in t and "dressed" not in t]  # fmt: skip
    assert alone


def test_captions_layout_has_every_identity_in_both_modalities(tmp_path: Path) -> None:
    s = generate("captions", tmp_path / "p", 5, seed=1, size=(64, 32), progress=False)
    assert s.num_images == 5 * 6 * 2 and s.test_ids == []
    rows = read_captions(tmp_path / "p" / "captions.jsonl")
    assert len(rows) == s.num_images and all((tmp_path / "p" / r["path"]).is_file() for r in rows)
    assert {(r["pid"], r["modality"]) for r in rows} == {(p, m) for p in range(1, 6) for m in ("visible", "infrared")}
    with pytest.raises(SynthError, match="no ReID split"):
        generate("captions", tmp_path / "q", 5, test_ids=2, progress=False)


def test_ir_coupling() -> None:
    # 0 is the generator as before (the identity, and so the crops, are unchanged).
    assert make_identity(3, 7, 0.0) == make_identity(3, 7)
    assert np.array_equal(render_image(3, "sysu", 7, 3, 1, 1, (64, 32), 0.0), render_image(3, "sysu", 7, 3, 1, 1,
                                                                                           (64, 32)))  # fmt: skip
    # 1: infrared brightness is the fixed function of the colour; a pattern stays visible in infrared.
    for pid in range(1, 40):
        ident = make_identity(3, pid, 1.0)
        assert ident.upper.ir == pytest.approx(coupled_ir(ident.upper.rgb))
        assert ident.bag_ir == pytest.approx(coupled_ir(ident.bag_rgb))
        assert abs(ident.upper.accent_ir - ident.upper.ir) >= 0.15 - 1e-9

    # In between, brightness correlates with the coupled value more as the coupling grows.
    def corr(c: float) -> float:
        ids = [make_identity(9, p, c) for p in range(1, 300)]
        return float(np.corrcoef([i.upper.ir for i in ids], [coupled_ir(i.upper.rgb) for i in ids])[0, 1])

    assert corr(0.0) < 0.3 < corr(0.5) < corr(0.9) <= 1.0
    # Attributes (and so captions) do not depend on the coupling.
    assert crop_attributes(3, "sysu", 7, 3, 1, 1) == crop_attributes(3, "sysu", 7, 3, 1, 1)
    with pytest.raises(SynthError, match="ir-coupling"):
        make_identity(3, 7, 1.5)


def test_colour_names() -> None:
    assert colour_name((0.9, 0.1, 0.1)) == "red"
    assert colour_name((0.1, 0.2, 0.9)) == "blue"
    assert colour_name((0.5, 0.5, 0.5)) == "grey"
    assert colour_name((0.05, 0.05, 0.05)) == "black"
    assert colour_name((0.95, 0.95, 0.95)) == "white"


def test_synth_cli_captions_and_coupling(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="clipmc")
    cli_data.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", "--layout", "captions", "--out", str(tmp_path / "c"), "--ids", "3",
                              "--size", "64x32", "--ir-coupling", "0.5", "--quiet"])  # fmt: skip
    assert args.func(args) == 0
    rows = read_captions(tmp_path / "c" / "captions.jsonl")
    assert rows and all(r["ir_coupling"] == 0.5 for r in rows)
    args = parser.parse_args(["synth", "--layout", "sysu", "--out", str(tmp_path / "d"), "--ids", "3",
                              "--ir-coupling", "2", "--quiet"])  # fmt: skip
    assert args.func(args) == 2


def test_pretrain_saves_and_loads_through_build_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    from clipmc.cli import main
    from clipmc.model import build_model

    generate("captions", tmp_path / "data", 12, seed=2, size=(64, 32), progress=False)
    generate("captions", tmp_path / "fresh", 3, seed=3, size=(64, 32), progress=False)
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(TINY_ARCH))
    out = tmp_path / "clip.safetensors"
    argv = ["pretrain-clip", "--data", str(tmp_path / "data"), "--arch", str(arch), "--out", str(out),
            "--batch-size", "16", "--max-steps", "4", "--warmup-steps", "1", "--holdout", "0.25", "--threads", "1",
            "--eval-data", str(tmp_path / "fresh"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "top_colour" in printed and "text->image" in printed and "--eval-data" in printed
    metrics = json.loads((tmp_path / "clip-zeroshot.json").read_text())
    assert metrics["steps"] == 4 and metrics["heldout_identities"] == 3
    assert metrics["options"]["partial_captions"] == 0.5
    # The second draw is evaluated in full: all its identities, both modalities.
    assert metrics["eval_data"]["identities"] == 3
    assert metrics["eval_data"]["zero_shot"]["infrared"]["carried"]["n"] == 3 * 4  # 4 infrared crops per identity
    for modality in ("visible", "infrared"):
        for attribute in ("top_colour", "bottom_colour", "pattern", "carried"):
            m = metrics["zero_shot"][modality][attribute]
            assert 0.0 <= m["accuracy"] <= 1.0 and m["chance_uniform"] > 0 and m["n"] > 0
        assert 0.0 <= metrics["text_to_image"][modality]["R1"] <= metrics["text_to_image"][modality]["R5"] <= 1.0
    # The weights load through the same open_clip loader as the openai weights, and are the saved ones.
    saved = load_file(str(out))
    model = build_model(str(arch), pretrained=str(out))
    loaded = model.clip.state_dict()
    assert set(saved) == set(loaded)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert (tmp_path / "clip-run" / "train_log.csv").is_file() and (tmp_path / "clip-run" / "tensorboard").is_dir()
    # The model trained: its weights are not the seeded initial ones.
    from clipmc.model.pretrain_clip import build_pretrain_model

    torch.manual_seed(0)
    initial = build_pretrain_model(str(arch))[0].state_dict()
    assert not torch.equal(initial["visual.proj"], saved["visual.proj"])
    # An existing output is refused unless resumed; resuming a finished run changes nothing.
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert torch.equal(load_file(str(out))["visual.proj"], saved["visual.proj"])
    # --evaluate-only trains nothing and gives the same evaluation again, keeping the run's record.
    (tmp_path / "clip-zeroshot.json").write_text(json.dumps({**metrics, "zero_shot": {}}))
    # Another --seed would hold out other identities (some trained on): the run's recorded draw is used.
    assert main([*argv, "--evaluate-only", "--seed", "7"]) == 0
    again = json.loads((tmp_path / "clip-zeroshot.json").read_text())
    assert again["zero_shot"] == metrics["zero_shot"] and again["steps"] == 4
    assert again["eval_data"]["zero_shot"] == metrics["eval_data"]["zero_shot"]
    carried = again["zero_shot"]["visible"]["carried"]
    assert set(carried["per_class_recall"]) <= {"none", "backpack", "shoulder", "hand"}
    assert carried["balanced_accuracy"] == pytest.approx(np.mean(list(carried["per_class_recall"].values())))
    assert torch.equal(load_file(str(out))["visual.proj"], saved["visual.proj"])
    missing = ["pretrain-clip", "--data", str(tmp_path / "data"), "--arch", str(arch), "--evaluate-only",
               "--out", str(tmp_path / "none.safetensors")]  # fmt: skip
    assert main(missing) == 2
    assert "does not exist" in capsys.readouterr().err


def test_pretrain_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clipmc.cli import main

    assert main(["pretrain-clip", "--data", str(tmp_path), "--out", str(tmp_path / "w.safetensors")]) == 2
    assert "captions.jsonl" in capsys.readouterr().err
    assert main(["pretrain-clip", "--data", str(tmp_path), "--out", str(tmp_path / "w.safetensors"),
                 "--holdout", "1.5"]) == 2  # fmt: skip
    assert "--holdout" in capsys.readouterr().err
    assert main(["pretrain-clip", "--data", str(tmp_path), "--out", str(tmp_path / "w.safetensors"),
                 "--partial-captions", "2"]) == 2  # fmt: skip
    assert "--partial-captions" in capsys.readouterr().err
    assert main(["pretrain-clip", "--data", str(tmp_path), "--out", str(tmp_path / "w.safetensors"),
                 "--eval-data", str(tmp_path / "nowhere")]) == 2  # fmt: skip
    assert "--eval-data" in capsys.readouterr().err


def test_pretrain_resume_continues_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped after its first epoch and resumed ends with the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    from clipmc.model import pretrain_clip
    from clipmc.model.pretrain_clip import PretrainConfig, pretrain

    generate("captions", tmp_path / "data", 12, seed=2, size=(64, 32), progress=False)
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(TINY_ARCH))

    def cfg() -> PretrainConfig:
        return PretrainConfig(arch=str(arch), epochs=2, batch_size=16, warmup_steps=2, holdout=0.25, threads=1)

    whole = pretrain(tmp_path / "data", tmp_path / "whole.safetensors", cfg(), progress=False)
    saves = []
    real_save = pretrain_clip._save_state

    def stop_after_first_epoch(*args, **kwargs) -> None:
        real_save(*args, **kwargs)
        saves.append(args[3])
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_clip, "_save_state", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "data", tmp_path / "cut.safetensors", cfg(), progress=False)
    assert saves == [whole["steps"] // 2] and not (tmp_path / "cut.safetensors").exists()
    monkeypatch.setattr(pretrain_clip, "_save_state", real_save)
    resumed = pretrain(tmp_path / "data", tmp_path / "cut.safetensors", cfg(), resume=True, progress=False)
    assert resumed["steps"] == whole["steps"]
    a, b = load_file(str(tmp_path / "whole.safetensors")), load_file(str(tmp_path / "cut.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Other options than the run's are refused.
    with pytest.raises(pretrain_clip.PretrainError, match="options differ"):
        pretrain(tmp_path / "data", tmp_path / "cut.safetensors", replace(cfg(), lr=5e-4), resume=True, progress=False)
