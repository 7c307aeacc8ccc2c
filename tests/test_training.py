"""Training pieces: sampler, schedule, losses, augmentation, resume, and the train/evaluate CLIs."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
import torch

from clipmc.model.data import Record
from clipmc.model.losses import batch_hard_triplet, compensation_loss, cross_modality_center_loss, identity_contrastive
from clipmc.model.sampler import IdentityModalitySampler
from clipmc.model.trainer import TrainConfig, append_csv_row, lr_factor
from clipmc.model.transforms import TrainTransform


def _records(n_ids: int = 6, n_vis: int = 5, n_ir: int = 3) -> list[Record]:
    out = []
    for pid in range(n_ids):
        out += [Record(f"v{pid}_{i}.jpg", pid, 1, 0) for i in range(n_vis)]
        out += [Record(f"i{pid}_{i}.jpg", pid, 3, 1) for i in range(n_ir)]
    return out


def test_sampler_batches_hold_p_identities_with_k_per_modality():
    records = _records()
    sampler = IdentityModalitySampler(records, num_ids=3, num_per_modality=4, seed=1)
    # Epoch length follows the larger modality: 30 visible images / (3 * 4) -> 3 batches.
    assert len(sampler) == 3
    for batch in sampler:
        assert len(batch) == 3 * 2 * 4
        counts = Counter((records[i].pid, records[i].modality) for i in batch)
        assert len({pid for pid, _ in counts}) == 3
        assert all(c == 4 for c in counts.values()) and len(counts) == 6


def test_sampler_is_a_function_of_seed_and_epoch():
    records = _records()
    a = IdentityModalitySampler(records, 3, 2, seed=7)
    b = IdentityModalitySampler(records, 3, 2, seed=7)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)


def test_sampler_refuses_single_modality_data():
    records = [Record(f"{i}.jpg", i % 3, 1, 0) for i in range(9)]
    with pytest.raises(ValueError, match="both visible and infrared"):
        IdentityModalitySampler(records)


def test_lr_schedule_warmup_and_steps():
    assert lr_factor(0, 10, (30, 50), 0.1) == pytest.approx(0.1)
    assert lr_factor(5, 10, (30, 50), 0.1) == pytest.approx(0.55)
    assert lr_factor(10, 10, (30, 50), 0.1) == 1.0
    assert lr_factor(30, 10, (30, 50), 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, (30, 50), 0.1) == pytest.approx(0.01)


def test_losses_prefer_the_right_answers():
    labels = torch.tensor([0, 0, 1, 1])
    modality = torch.tensor([0, 1, 0, 1])
    good = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    bad = torch.tensor([[1.0, 0], [0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert batch_hard_triplet(good, labels) < batch_hard_triplet(bad, labels)
    assert batch_hard_triplet(good * 10, labels, margin=0.3) == 0
    assert cross_modality_center_loss(good, labels, modality) < cross_modality_center_loss(bad, labels, modality)
    assert identity_contrastive(good, good, labels) < identity_contrastive(good, bad, labels)
    # t_comp of each sample should resemble the same identity's image in the other modality.
    swapped = good[[1, 0, 3, 2]]
    assert compensation_loss(swapped, good, labels, modality) < 1e-6
    assert compensation_loss(bad, good, labels, modality) > 0.05


def test_train_transform_shapes_and_modalities(tmp_path):
    from PIL import Image

    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 40, 3), dtype=np.uint8)).save(path)
    t = TrainTransform((64, 32), seed=0, erase_p=0.0, channel_p=0.0, gray_p=0.0)
    ir = t(str(path), 1)
    assert ir.shape == (3, 64, 32)
    # infrared crops are grey: after un-normalising, the three channels are equal
    from clipmc.model.preprocess import CLIP_MEAN, CLIP_STD

    rgb = ir * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]
    torch.testing.assert_close(rgb[0], rgb[1], atol=1e-5, rtol=0)
    assert t(str(path), 0).shape == (3, 64, 32)


def test_train_config_file_and_unknown_keys(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"epochs": 3, "loss_weights": {"itc": 0.0}}))
    cfg = TrainConfig.from_file(p, seed=4)
    assert cfg.epochs == 3 and cfg.seed == 4 and cfg.loss_weights["itc"] == 0.0 and cfg.loss_weights["id_cls"] == 0.25
    p.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_file(p)


def test_train_log_widens_its_header_when_eval_columns_appear(tmp_path):
    """Epochs before the first evaluation have no eval_* columns; later rows must still line up."""
    path = tmp_path / "train_log.csv"
    append_csv_row(path, {"epoch": 1, "total": 2.5})
    append_csv_row(path, {"epoch": 2, "total": 2.0, "eval_R1": 40.0, "eval_mAP": 30.0})
    append_csv_row(path, {"epoch": 3, "total": 1.5})
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == ["epoch", "total", "eval_R1", "eval_mAP"]
    assert all(len(line) == 4 for line in lines)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert [r["eval_mAP"] for r in rows] == ["", "30.0", ""]
    assert None not in rows[1]  # no value fell outside the header


@pytest.fixture(scope="module")
def synth_sysu(tmp_path_factory):
    from clipmc.model.synth import generate

    root = tmp_path_factory.mktemp("sysu") / "SYSU-MM01"
    generate("sysu", root, 9, test_ids=3, seed=3, images_per_camera=3, size=(64, 32), progress=False)
    return root


def _train_args(tmp_path, root, out, epochs, extra=()):
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({
        "model": "tiny", "pretrained": None, "image_size": [64, 32], "epochs": epochs, "warmup_epochs": 1,
        "milestones": [], "lr_encoder": 1e-4, "lr_heads": 1e-3, "workers": 0, "num_ids": 3,
        "num_per_modality": 2, "max_steps_per_epoch": 2, "eval_every": 1,
    }))  # fmt: skip
    return ["train", "--dataset", "sysu", "--data-root", str(root), "--config", str(cfg), "--out", str(out),
            "--device", "cpu", *extra]  # fmt: skip


def test_train_cli_writes_checkpoints_logs_and_resumes(tmp_path, synth_sysu):
    from clipmc.cli import main
    from clipmc.model import load_checkpoint, read_checkpoint_config

    out = tmp_path / "run"
    assert main(_train_args(tmp_path, synth_sysu, out, epochs=1)) == 0
    for name in ("last/config.json", "last/model.safetensors", "best/config.json", "trainer_state.pt"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    meta = read_checkpoint_config(out / "last")["metadata"]
    assert meta["epoch"] == 1 and meta["training_args"]["model"] == "tiny" and "mAP" in meta["metrics"]

    # Resume to epoch 2: the optimiser state and epoch come back; the log grows by one row.
    state_before = torch.load(out / "trainer_state.pt", weights_only=False)
    assert main([*_train_args(tmp_path, synth_sysu, out, epochs=2), "--resume"]) == 0
    state_after = torch.load(out / "trainer_state.pt", weights_only=False)
    assert state_before["epoch"] == 1 and state_after["epoch"] == 2
    assert state_after["scheduler"]["last_epoch"] == 2
    with open(out / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert load_checkpoint(out / "last").embedding_version == read_checkpoint_config(out / "last")["embedding_version"]


def test_resume_without_state_is_a_clear_error(tmp_path, synth_sysu, capsys):
    from clipmc.cli import main

    assert main([*_train_args(tmp_path, synth_sysu, tmp_path / "fresh", epochs=1), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_evaluate_cli_writes_json_and_cmc_png(tmp_path, synth_sysu, tiny_checkpoint):
    from clipmc.cli import main

    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "sysu", "--data-root", str(synth_sysu),
            "--mode", "all", "--trials", "0,1", "--workers", "0", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["protocol_rules"].endswith("PROTOCOLS.md")
    mean = result["settings"]["all"]["mean"]
    assert set(mean) == {"R1", "R5", "R10", "R20", "mAP", "mINP"} and 0 <= mean["mAP"] <= 100
    assert result["settings"]["all"]["trials"] == [0, 1]
    assert (out / "cmc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_cli_bad_dataset_is_one_line(tmp_path, capsys):
    from clipmc.cli import main

    assert main(_train_args(tmp_path, tmp_path / "no-such", tmp_path / "o", epochs=1)) == 2
    err = capsys.readouterr().err
    assert "no-such" in err and "Traceback" not in err


@pytest.mark.parametrize("layout", ["regdb", "llcm"])
def test_train_and_evaluate_cli_on_regdb_and_llcm_layouts(tmp_path, layout):
    """Training-time selection holds out a seeded share of the training identities (never test ones)."""
    from clipmc.cli import main
    from clipmc.model.synth import generate

    root = tmp_path / layout
    generate(layout, root, 8, seed=5, images_per_camera=2, size=(64, 32), progress=False)
    split = ["--split", "2"] if layout == "regdb" else []
    out = tmp_path / "run"
    args = _train_args(tmp_path, root, out, epochs=1)
    args[args.index("sysu")] = layout
    assert main([*args, *split]) == 0
    selection = json.loads((out / "best" / "config.json").read_text())["metadata"]["selection"]
    assert "held out" in selection["split"] and selection["metric"] == "mAP" and selection["epoch"] == 1
    ev = ["evaluate", "--checkpoint", str(out / "best"), "--dataset", layout, "--data-root", str(root),
          "--workers", "0", "--out", str(tmp_path / "eval"), *split]  # fmt: skip
    if layout == "llcm":
        ev += ["--trials", "0"]
    assert main(ev) == 0
    settings = json.loads((tmp_path / "eval" / "results.json").read_text())["settings"]
    expected = {"regdb": {"visible_to_thermal", "thermal_to_visible"}, "llcm": {"ir_to_visible", "visible_to_ir"}}
    assert set(settings) == expected[layout]


def test_evaluate_cli_regdb_all_splits_loads_a_shared_checkpoint_once(
    tmp_path, synth_trees, tiny_checkpoint, monkeypatch
):
    """--split all with one checkpoint (no {split} in it): loaded once, all 10 splits merged, its version recorded."""
    import clipmc.model.checkpoint
    from clipmc.cli import main
    from clipmc.model import read_checkpoint_config

    loads = []
    real_load = clipmc.model.checkpoint.load_checkpoint
    monkeypatch.setattr(
        clipmc.model.checkpoint, "load_checkpoint", lambda p, *a, **k: loads.append(p) or real_load(p, *a, **k)
    )
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "regdb", "--data-root",
            str(synth_trees["regdb"]), "--split", "all", "--mode", "visible_to_thermal", "--workers", "0",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert loads == [str(tiny_checkpoint)]
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["visible_to_thermal"]["trials"] == list(range(1, 11))
    assert result["run"]["embedding_version"] == read_checkpoint_config(tiny_checkpoint)["embedding_version"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--trials", "0,x", "comma-separated trial numbers"), ("--trials", "-1", "non-negative"),
     ("--split", "two", "RegDB split 1..10 or 'all'")],
)  # fmt: skip
def test_evaluate_cli_bad_trials_or_split_is_a_usage_error(tmp_path, flag, value, message, capsys):
    from clipmc.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--checkpoint", "x", "--dataset", "regdb", "--data-root", str(tmp_path), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
