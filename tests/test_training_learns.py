"""The whole pipeline learns: a few minutes of CPU training of the tiny model on a synthetic
SYSU-MM01-layout dataset (30 training, 10 validation, 20 test identities) lifts all-search R1 and mAP
well above chance and above the untrained model, measured with the real protocol driver (PROTOCOLS.md
rules) over the 10 gallery trials, for `best/` chosen on the validation identities only.

The tiny ViT starts from random weights (no CLIP pre-training to lean on), so `configs/tiny-synth.json`
trains it with the identity, image-text, compensation and modality losses and leaves the batch-hard
triplet off: from a random start it collapses the features (see README, "synthetic demonstration").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-synth.json"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_training_lifts_r1_and_map_above_chance_and_untrained(tmp_path):
    from clipmc.cli import main
    from clipmc.model import build_model, save_checkpoint
    from clipmc.model.synth import generate

    root = tmp_path / "SYSU-MM01"
    generate("sysu", root, 60, test_ids=20, seed=0, progress=False)
    cfg = json.loads(CONFIG.read_text())

    import torch

    torch.manual_seed(0)
    untrained = build_model("tiny", image_size=tuple(cfg["image_size"]))
    save_checkpoint(untrained, tmp_path / "untrained")

    def evaluate(ckpt: Path, out: Path) -> dict[str, float]:
        args = ["evaluate", "--checkpoint", str(ckpt), "--dataset", "sysu", "--data-root", str(root),
                "--mode", "all", "--workers", "0", "--out", str(out)]  # fmt: skip
        assert main(args) == 0
        return json.loads((out / "results.json").read_text())["settings"]["all"]["mean"]

    before = evaluate(tmp_path / "untrained", tmp_path / "eval-before")
    run = tmp_path / "run"
    train = ["train", "--dataset", "sysu", "--data-root", str(root), "--config", str(CONFIG), "--out", str(run),
             "--device", "cpu", "--seed", "0"]  # fmt: skip
    assert main(train) == 0
    after = evaluate(run / "best", tmp_path / "eval-after")
    print(f"synthetic SYSU all-search, 10 trials: untrained {before} -> trained (val-selected best/) {after}")
    selection = json.loads((run / "best" / "config.json").read_text())["metadata"]["selection"]
    assert "val_id.txt" in selection["split"] and selection["metric"] == "mAP"

    # Measured on the 2-core machine (--deterministic, so bit-reproducible there): untrained R1 4.8 /
    # mAP 10.2 -> best/ R1 17.7 / mAP 22.5. The margins below leave room for another CPU's float sums.
    chance_r1 = 100 / 20  # one true identity among 20 in the de-duplicated ranking
    assert after["R1"] >= 3 * chance_r1
    assert after["R1"] >= before["R1"] + 8
    assert after["mAP"] >= before["mAP"] + 8
