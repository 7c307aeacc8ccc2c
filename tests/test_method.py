"""CLIP-MC trains what it claims (issue 11): seeded and reproducible, compensation that learns from step 0,
ablations that really remove a module, a context loss on the contexts, a sampler without repeated
identities, and `best/` chosen on validation identities without reading the test set."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipmc.model import build_model, load_checkpoint, read_checkpoint_config, save_checkpoint
from clipmc.model.data import Record
from clipmc.model.sampler import IdentityModalitySampler
from clipmc.model.seeding import deterministic_mode, seed_everything
from clipmc.model.trainer import TrainConfig, Trainer

from .conftest import random_images

SIZE = (64, 32)


def _fake_records(n_ids: int = 4, per_modality: int = 2) -> list[Record]:
    return [
        Record(f"{pid}_{m}_{i}.jpg", pid, 1 + 2 * m, m)
        for pid in range(n_ids)
        for m in (0, 1)
        for i in range(per_modality)
    ]


def _trainer(model, tmp_path, **cfg) -> Trainer:
    config = TrainConfig.from_dict({"model": "tiny", "pretrained": None, "workers": 0, "num_ids": 4,
                                    "num_per_modality": 2, **cfg})  # fmt: skip
    return Trainer(model, _fake_records(), 4, config, tmp_path / "run")


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    modality = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    return random_images(8, *SIZE, seed=seed), labels, modality


# -- seeding ----------------------------------------------------------------------------------------


def test_one_seed_gives_an_identical_initial_state_dict():
    def initial(seed: int) -> dict[str, torch.Tensor]:
        seed_everything(seed)
        return build_model("tiny").state_dict()

    a, b, c = initial(3), initial(3), initial(4)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_deterministic_mode_restores_the_global_settings():
    threads, algorithms = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with deterministic_mode(True):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == algorithms


@pytest.fixture(scope="module")
def sysu_tree(tmp_path_factory):
    """12 identities: 3 test, 2 validation (exp/val_id.txt), 7 train."""
    from clipmc.model.synth import generate

    root = tmp_path_factory.mktemp("method") / "SYSU-MM01"
    generate("sysu", root, 12, test_ids=3, seed=3, images_per_camera=3, size=SIZE, progress=False)
    return root


def _ids(root: Path, name: str) -> list[int]:
    return [int(v) for v in (root / "exp" / f"{name}_id.txt").read_text().split(",")]


def _train(tmp_path: Path, root: Path, out: Path, *extra: str, epochs: int = 2, steps: int = 2, **cfg) -> Path:
    from clipmc.cli import main

    config = tmp_path / f"{out.name}.json"
    config.write_text(json.dumps({
        "model": "tiny", "pretrained": None, "image_size": list(SIZE), "epochs": epochs, "warmup_epochs": 0,
        "milestones": [], "lr_encoder": 1e-4, "lr_heads": 1e-3, "workers": 0, "num_ids": 3,
        "num_per_modality": 2, "max_steps_per_epoch": steps, "eval_every": 1, **cfg,
    }))  # fmt: skip
    args = ["train", "--dataset", "sysu", "--data-root", str(root), "--config", str(config), "--out", str(out),
            "--device", "cpu", *extra]  # fmt: skip
    assert main(args) == 0
    return out


def test_two_deterministic_runs_write_identical_weights(tmp_path, sysu_tree):
    shas = []
    for name in ("a", "b"):
        out = _train(tmp_path, sysu_tree, tmp_path / name, "--deterministic", "--seed", "5")
        shas.append(hashlib.sha256((out / "last" / "model.safetensors").read_bytes()).hexdigest())
    assert shas[0] == shas[1]
    args = read_checkpoint_config(tmp_path / "a" / "last")["metadata"]["training_args"]
    assert args["seed"] == 5 and args["deterministic"] is True


# -- compensation from step 0 -------------------------------------------------------------------------


def _f_full_gradients(model, tmp_path) -> dict[str, torch.Tensor | None]:
    trainer = _trainer(model, tmp_path)
    model.train()
    terms = trainer.losses(*_batch())
    (terms["id_full"] + terms["tri_full"]).backward()
    return {
        f"{prefix}.{name}": p.grad
        for prefix, module in (("itpg", model.itpg), ("mcl", model.mcl), ("mc", model.mc))
        for name, p in module.named_parameters()
    }


def test_at_step_0_the_f_full_losses_reach_every_itpg_mcl_and_mc_parameter(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny", image_size=SIZE)
    grads = _f_full_gradients(model, tmp_path)
    assert model.mc.alpha.item() == pytest.approx(TrainConfig().alpha_init)
    missing = [name for name, g in grads.items() if g is None or not bool(g.abs().sum() > 0)]
    assert not missing, f"no gradient from the f_full losses at step 0: {missing}"


def test_the_zero_shot_init_alone_would_leave_mc_inert(tmp_path):
    """The finding the training init fixes: with alpha = 0, W_c, W_g and the text side get nothing."""
    torch.manual_seed(0)
    model = build_model("tiny", image_size=SIZE)
    trainer = _trainer(model, tmp_path, alpha_init=0.0)
    assert model.mc.alpha.item() == 0.0
    model.train()
    terms = trainer.losses(*_batch())
    (terms["id_full"] + terms["tri_full"]).backward()
    assert model.mc.proj.weight.grad.abs().sum() == 0 and model.itpg.queries.grad.abs().sum() == 0


def test_a_trained_alpha_is_not_reset_by_training():
    torch.manual_seed(0)
    model = build_model("tiny", image_size=SIZE)
    with torch.no_grad():
        model.mc.alpha.fill_(0.6)
    assert model.start_training(0.25) is False and model.mc.alpha.item() == pytest.approx(0.6)


def test_after_a_short_run_alpha_matters_and_its_curve_is_logged(tmp_path, sysu_tree):
    from clipmc.model.preprocess import PreprocessConfig, preprocess

    out = _train(tmp_path, sysu_tree, tmp_path / "run", epochs=2, steps=3)
    with open(out / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    alphas = [float(r["alpha"]) for r in rows]
    shares = [float(r["comp_share"]) for r in rows]
    assert all(a > 0 for a in alphas) and all(0 < s < 1 for s in shares)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [round(e.value, 5) for e in events.Scalars("mc/alpha")] == [round(a, 5) for a in alphas]
    assert len(events.Scalars("mc/comp_share")) == 2

    model = load_checkpoint(out / "last").eval()
    assert model.mc.alpha.item() == pytest.approx(alphas[-1], abs=1e-6)
    paths = sorted(str(p) for p in sysu_tree.glob("cam*/*/*.jpg"))[:32]
    cfg = PreprocessConfig(height=SIZE[0], width=SIZE[1])
    x = torch.from_numpy(np.stack([preprocess(p, cfg) for p in paths]))
    modality = torch.tensor([int("/cam3/" in p or "/cam6/" in p) for p in paths])
    with torch.no_grad():
        full = model.embed(x, modality)
        model.mc.alpha.fill_(0.0)
        plain = model.embed(x, modality)
    assert len(paths) == 32
    assert (full * plain).sum(dim=1).mean().item() < 0.999


# -- ablations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ablation", ["mc", "itpg", "mcl", "text"])
def test_each_ablation_builds_its_graph_trains_a_step_and_exports_with_parity(tmp_path, ablation):
    import onnxruntime as ort

    from clipmc.export.onnx_export import export_onnx
    from clipmc.model.clipmc import ITPG, ModalityContextLearner, SharedContext, SharedInstanceTokens

    torch.manual_seed(0)
    model = build_model("tiny", image_size=SIZE, ablate=[ablation])
    assert model.config.ablate == (ablation,)
    x, labels, modality = _batch(1)
    model.eval()
    with torch.no_grad():
        out = model(x, modality)
    if ablation == "mc":
        assert model.mc is None and torch.equal(out.f_full, out.f_img)
        assert isinstance(model.itpg, ITPG) and isinstance(model.mcl, ModalityContextLearner)
    elif ablation == "itpg":
        assert isinstance(model.itpg, SharedInstanceTokens)
        assert torch.equal(out.instance_tokens[0], out.instance_tokens[1])  # the same words for every image
    elif ablation == "mcl":
        assert isinstance(model.mcl, SharedContext)
        torch.testing.assert_close(out.t_orig, out.t_comp, atol=1e-6, rtol=0)  # one context for both
    else:
        assert model.itpg is None and model.mcl is None and model.mc is None and out.t_orig is None
        names = set(model.state_dict())
        assert not any(n.startswith(("clip.transformer", "clip.token_embedding", "clip.ln_final")) for n in names)
        assert "clip.positional_embedding" not in names and "clip.text_projection" not in names
    if model.mc is None:  # no compensation: the vector is the image encoder's, whatever the modality
        with torch.no_grad():
            f_cls, f_img, _ = model.encode_image(x)
            torch.testing.assert_close(model.embed(x, modality), F.normalize(torch.cat([f_cls, f_img], 1), dim=1))

    # One training step: the terms of the removed module are absent, the rest trains.
    trainer = _trainer(model, tmp_path)
    model.train()
    terms = trainer.losses(x, labels, modality)
    assert ("itc" in terms) == (ablation != "text") and ("modality" in terms) == (ablation not in ("mcl", "text"))
    before = model.clip.visual.conv1.weight.detach().clone()
    trainer.optimizer.zero_grad()
    terms["total"].backward()
    trainer.optimizer.step()
    assert not torch.equal(before, model.clip.visual.conv1.weight)

    # The ablation travels in the checkpoint and the export honours it.
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert read_checkpoint_config(tmp_path / "ckpt")["architecture"]["ablate"] == [ablation]
    assert loaded.config.ablate == (ablation,) and f"-no-{ablation}." in loaded.embedding_version
    onnx_path = export_onnx(loaded, tmp_path / "m.onnx")  # runs its own parity check too
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "modality"]
    got = session.run(None, {"image": x[:3].numpy(), "modality": modality[:3].numpy()})[0]
    with torch.no_grad():
        want = loaded.embed(x[:3], modality[:3]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_ablate_is_repeatable_on_the_command_line_and_stored(tmp_path, sysu_tree):
    out = _train(tmp_path, sysu_tree, tmp_path / "abl", "--ablate", "mc", "--ablate", "itpg", epochs=1, steps=1)
    cfg = read_checkpoint_config(out / "last")
    assert cfg["architecture"]["ablate"] == ["itpg", "mc"]
    assert cfg["metadata"]["training_args"]["ablate"] == ["itpg", "mc"]
    assert load_checkpoint(out / "last").mc is None


def test_unknown_ablation_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown ablation"):
        build_model("tiny", ablate=["itgp"])


# -- the context loss and the sampler -------------------------------------------------------------------


def test_the_context_loss_can_only_be_met_by_contexts_that_differ():
    from clipmc.model.losses import context_modality_loss

    def best_loss(contexts: torch.Tensor) -> float:
        torch.manual_seed(0)
        classifier = torch.nn.Linear(contexts.shape[-1], 2)
        opt = torch.optim.Adam(classifier.parameters(), lr=0.1)
        for _ in range(200):
            opt.zero_grad()
            loss = context_modality_loss(contexts, classifier)
            loss.backward()
            opt.step()
        return loss.item()

    g = torch.Generator().manual_seed(0)
    same = torch.randn(1, 4, 8, generator=g).expand(2, -1, -1)
    distinct = torch.randn(2, 4, 8, generator=g)
    assert best_loss(same) >= np.log(2) - 1e-4  # identical contexts: no classifier beats chance
    assert best_loss(distinct) < 0.05


def test_the_modality_loss_reads_the_contexts_not_the_instance_tokens(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny", image_size=SIZE)
    trainer = _trainer(model, tmp_path)
    model.train()
    trainer.losses(*_batch())["modality"].backward()
    assert model.mcl.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.itpg.parameters())  # the instance tokens play no part


@pytest.mark.parametrize(("n_ids", "p", "seed"), [(5, 3, 0), (4, 4, 1), (7, 6, 2), (3, 2, 3)])
def test_the_sampler_never_repeats_an_identity_in_a_batch(n_ids, p, seed):
    records = _fake_records(n_ids, per_modality=3)
    sampler = IdentityModalitySampler(records, num_ids=p, num_per_modality=2, seed=seed)
    seen: Counter[int] = Counter()
    for epoch in range(25):
        sampler.set_epoch(epoch)
        for batch in sampler:
            pids = [records[i].pid for i in batch]
            assert len(set(pids)) == p, f"epoch {epoch}: identity repeated in {pids}"
            seen.update(set(pids))
    assert set(seen) == set(range(n_ids))  # and every identity is still visited


# -- selection without the test set ---------------------------------------------------------------------


def test_synth_sysu_writes_validation_identities_as_the_real_set_has_them(sysu_tree):
    """exp/val_id.txt: a quarter of the non-test identities (99 of 395 on SYSU-MM01), disjoint from
    train and test, each seen by an infrared and a visible camera (so it can serve as a query)."""
    train, val, test = _ids(sysu_tree, "train"), _ids(sysu_tree, "val"), _ids(sysu_tree, "test")
    assert len(val) == (len(train) + len(val)) // 4 and not set(val) & (set(train) | set(test))
    for pid in val:
        cams = {p.parent.parent.name for p in sysu_tree.glob(f"cam*/{pid:04d}/*.jpg")}
        assert cams & {"cam3", "cam6"} and cams & {"cam1", "cam2", "cam4", "cam5"}


def test_train_selects_best_on_validation_identities_and_reads_no_test_image(tmp_path, sysu_tree, monkeypatch):
    from PIL import Image

    opened: list[str] = []
    real_open = Image.open

    def recording_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", recording_open)
    out = _train(tmp_path, sysu_tree, tmp_path / "sel", epochs=2, steps=2)
    monkeypatch.undo()

    test_ids, val_ids, train_ids = _ids(sysu_tree, "test"), _ids(sysu_tree, "val"), _ids(sysu_tree, "train")

    def pid_of(path: str) -> int:
        return int(Path(path).parent.name)

    read = {pid_of(p) for p in opened}
    assert not read & set(test_ids), "a test-identity image was read during training or selection"
    val_ir = {p for p in opened if pid_of(p) in val_ids and Path(p).parts[-3] in ("cam3", "cam6")}
    assert val_ir, "the validation queries (infrared crops of val_id.txt) were not embedded"

    best = read_checkpoint_config(out / "best")["metadata"]
    selection = best["selection"]
    assert set(selection) == {"split", "metric", "value", "epoch"}
    assert "val_id.txt" in selection["split"] and selection["metric"] == "mAP"
    assert best["metrics_split"] == selection["split"]
    with open(out / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    best_row = max(rows, key=lambda r: float(r["eval_mAP"]))
    assert selection["epoch"] == int(best_row["epoch"]) and selection["value"] == pytest.approx(
        float(best_row["eval_mAP"])
    )
    # The validation identities are held out of training: the classifier has the train ids only.
    assert best["dataset"]["num_classes"] == len(train_ids)


def test_evaluate_names_the_checkpoint_and_its_selection(tmp_path, sysu_tree):
    from clipmc.cli import main

    out = _train(tmp_path, sysu_tree, tmp_path / "ev", epochs=1, steps=1)
    args = ["evaluate", "--checkpoint", str(out / "best"), "--dataset", "sysu", "--data-root", str(sysu_tree),
            "--mode", "all", "--trials", "0", "--workers", "0", "--out", str(tmp_path / "eval")]  # fmt: skip
    assert main(args) == 0
    run = json.loads((tmp_path / "eval" / "results.json").read_text())["run"]
    info = run["checkpoint_info"]
    assert info["path"] == str((out / "best").resolve()) and info["epoch"] == 1
    assert info["selection"] == read_checkpoint_config(out / "best")["metadata"]["selection"]


def test_select_last_trains_on_every_training_identity_and_keeps_last(tmp_path, sysu_tree):
    out = _train(tmp_path, sysu_tree, tmp_path / "last", "--select", "last", epochs=1, steps=1)
    assert not (out / "best").exists()
    meta = read_checkpoint_config(out / "last")["metadata"]
    assert meta["selection"] == {"split": meta["selection"]["split"], "metric": None, "value": None, "epoch": 1}
    assert meta["dataset"]["num_classes"] == len(_ids(sysu_tree, "train")) + len(_ids(sysu_tree, "val"))
    assert meta["metrics"] == {} and meta["metrics_split"] is None


@pytest.mark.parametrize("layout", ["regdb", "llcm"])
def test_regdb_and_llcm_hold_out_a_seeded_share_of_training_identities(synth_trees, layout):
    from clipmc.model.data import load_dataset
    from clipmc.model.data.selection import holdout_split

    dataset = load_dataset(layout, synth_trees[layout])
    a = holdout_split(dataset, 0.3, seed=1)
    b = holdout_split(dataset, 0.3, seed=1)
    c = holdout_split(dataset, 0.3, seed=2)
    assert a.validation.ids == b.validation.ids and len(a.validation.ids) == round(0.3 * dataset.num_classes)
    assert a.validation.ids != c.validation.ids or dataset.num_classes < 4
    trained = {a.label_to_pid[r.pid] for r in a.train}
    assert not trained & set(a.validation.ids)
    assert trained | set(a.validation.ids) == set(dataset.label_to_pid)
    assert sorted({r.pid for r in a.train}) == list(range(a.num_classes))  # relabelled 0..C-1
    query, gallery = a.validation.query_gallery("val", 0)
    assert {r.modality for r in query} == {1} and {r.modality for r in gallery} == {0}
    assert {r.pid for r in query} <= set(a.validation.ids) and {r.pid for r in gallery} <= set(a.validation.ids)
    test_paths = set()
    for setting in dataset.settings:
        q, g = dataset.query_gallery(setting, dataset.setting(setting).trials[0])
        test_paths |= {r.path for r in q + g}
    assert not test_paths & {r.path for r in query + gallery}


# -- LLCM VIS->IR, the transposed way ---------------------------------------------------------------------


def test_llcm_vis2ir_transposed_is_the_ir_to_visible_matrix_transposed(synth_trees, tmp_path):
    from clipmc.cli import main
    from clipmc.model.data import load_dataset

    root = synth_trees["llcm"]
    sampled = load_dataset("llcm", root)
    transposed = load_dataset("llcm", root, vis2ir="transposed")
    ir_q, vis_g = sampled.query_gallery("ir_to_visible", 3)
    t_q, t_g = transposed.query_gallery("visible_to_ir", 3)
    assert t_q == vis_g and t_g == ir_q  # rows of distmat.T: the IR->VIS gallery queries the NIR images
    s_q, s_g = sampled.query_gallery("visible_to_ir", 3)
    assert len(s_q) > len(t_q) and {r.modality for r in s_g} == {1}
    assert transposed.setting("visible_to_ir").description["vis2ir"].startswith("transposed")

    torch.manual_seed(0)
    save_checkpoint(build_model("tiny", image_size=(32, 16)), tmp_path / "ckpt")
    args = ["evaluate", "--checkpoint", str(tmp_path / "ckpt"), "--dataset", "llcm", "--data-root", str(root),
            "--mode", "visible_to_ir", "--trials", "0", "--workers", "0", "--out", str(tmp_path / "e")]  # fmt: skip
    assert main([*args, "--llcm-vis2ir", "transposed"]) == 0
    result = json.loads((tmp_path / "e" / "results.json").read_text())
    assert result["run"]["llcm_vis2ir"] == "transposed"
    assert result["settings"]["visible_to_ir"]["description"]["vis2ir"].startswith("transposed")
    assert result["settings"]["visible_to_ir"]["per_trial"][0]["num_query"] == len(
        transposed.query_gallery("visible_to_ir", 0)[0]
    )
