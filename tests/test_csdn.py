"""CSDN as a registered architecture, on `csdn-tiny` (the same code with small widths): the modality
stems, the resized attention pool, what each training stage trains, SII, checkpoints, ONNX parity, the
service, and a short synthetic run that beats the untrained model."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipmc.model.registry import build_model

NUM_CLASSES = 6


@pytest.fixture(scope="module")
def csdn():
    torch.manual_seed(0)
    model = build_model("csdn-tiny", num_classes=NUM_CLASSES)
    # Fresh BatchNorm statistics make every stem the identity-ish; give the BNs real statistics and the
    # two stems different weights so that the modality tests measure something.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        for p in model.stems[1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def csdn_checkpoint(tmp_path_factory, csdn):
    from clipmc.model import save_checkpoint

    path = tmp_path_factory.mktemp("csdn") / "ckpt"
    save_checkpoint(csdn, path, note="csdn test fixture")
    return path


@pytest.fixture()
def restore_logging():
    """`clipmc serve` routes the root logger to the stderr of the moment (the test's capture): put the
    root logger back afterwards, so that later tests do not log into a closed capture."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def images(n: int, seed: int = 0, size: tuple[int, int] = (128, 64)) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


# -- the network ------------------------------------------------------------------------------------------
def test_registry_resolves_both_families_and_keeps_clipmc_versions():
    from clipmc.model.preprocess import IMAGENET_MEAN
    from clipmc.model.registry import all_config_names, resolve_config

    names = all_config_names()
    assert names["vit-b-16"] == names["tiny"] == "clipmc"
    assert names["csdn-rn50"] == names["csdn-tiny"] == "csdn"
    arch, cfg = resolve_config("csdn-rn50")
    assert arch.inputs == ("image", "modality") and cfg.embedding_dim == 3072 and cfg.grid == (18, 9)
    assert cfg.preprocessing().mean == IMAGENET_MEAN and cfg.preprocessing().tag == "288x144-bicubic-imagenetnorm"
    _, clip_cfg = resolve_config("vit-b-16")
    assert clip_cfg.preprocessing().tag == "288x144-bicubic-clipnorm"  # CLIP-MC's version string unchanged
    with pytest.raises(ValueError, match="unknown model configuration"):
        resolve_config("csdn-rn101")


def test_stems_really_differ_by_modality(csdn):
    x = images(4)
    vis, ir = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    with torch.no_grad():
        e_vis, e_ir = csdn.embed(x, vis), csdn.embed(x, ir)
        assert e_vis.shape == (4, csdn.embedding_dim) and torch.allclose(e_vis.norm(dim=1), torch.ones(4))
        assert (F.cosine_similarity(e_vis, e_ir) < 0.9999).all()  # same pixels, different stem
        # The infrared stem alone decides the infrared vectors: perturbing it leaves visible ones unchanged.
        saved = [p.clone() for p in csdn.stems[1].parameters()]
        for p in csdn.stems[1].parameters():
            p.add_(0.1)
        try:
            assert torch.equal(csdn.embed(x, vis), e_vis)
            assert not torch.allclose(csdn.embed(x, ir), e_ir)
        finally:
            for p, s in zip(csdn.stems[1].parameters(), saved, strict=True):
                p.copy_(s)
        mixed = csdn.embed(x, torch.tensor([0, 1, 0, 1]))
        assert torch.allclose(mixed[0::2], e_vis[0::2], atol=1e-6)
        assert torch.allclose(mixed[1::2], e_ir[1::2], atol=1e-6)


def test_training_gradients_reach_only_the_images_own_stem(csdn):
    csdn.train()
    try:
        csdn.zero_grad()
        out = csdn(images(4), torch.zeros(4, dtype=torch.long))  # visible only
        (out.features.sum() + out.proj.sum()).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in csdn.stems[0].parameters())
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in csdn.stems[1].parameters())
    finally:
        csdn.zero_grad()
        csdn.eval()


def test_layer4_stride_1_and_pool_position_resized_from_pretrained_weights(tmp_path):
    import open_clip

    from clipmc.model.csdn.config import NAMED_CONFIGS

    cfg = NAMED_CONFIGS["csdn-tiny"]
    torch.manual_seed(1)
    clip = open_clip.CLIP(**cfg.open_clip_cfg())  # the "pretrained" CLIP, at its own 224 grid (7 x 7)
    weights = tmp_path / "tiny_rn_clip.pt"
    torch.save(clip.state_dict(), weights)
    model = build_model("csdn-tiny", pretrained=str(weights))
    pos = clip.visual.attnpool.positional_embedding.detach()
    got = model.attnpool.positional_embedding.detach()
    gh, gw = cfg.grid
    assert got.shape == (1 + gh * gw, pos.shape[1])
    assert torch.equal(got[0], pos[0])
    expected = F.interpolate(pos[1:].reshape(1, 7, 7, -1).permute(0, 3, 1, 2), size=(gh, gw), mode="bicubic")
    assert torch.allclose(got[1:], expected.permute(0, 2, 3, 1).reshape(gh * gw, -1), atol=1e-6)
    for stem in model.stems:  # both stems start as copies of the pretrained stem
        assert torch.equal(stem[0].weight, clip.visual.conv1.weight)
    assert torch.equal(model.layers[3][0].conv1.weight, clip.visual.layer4[0].conv1.weight)
    with torch.no_grad():
        fmap = model.feature_map(images(2), torch.tensor([0, 1]))
    assert fmap.shape == (2, cfg.feature_dim, gh, gw)  # stride 16: layer4 does not halve the map


@pytest.mark.slow
def test_rn50_gives_an_18_by_9_map_and_3072_d_vectors():
    model = build_model("csdn-rn50")
    x = torch.randn(1, 3, 288, 144)
    with torch.no_grad():
        assert model.feature_map(x, torch.tensor([1])).shape == (1, 2048, 18, 9)
        assert model.embed(x, torch.tensor([0])).shape == (1, 3072)
    assert model.attnpool.positional_embedding.shape == (1 + 18 * 9, 2048)


def test_sii_paper_attends_code_softmax_is_always_one():
    from clipmc.model.csdn.network import SIIFusion

    torch.manual_seed(0)
    t_vis, t_ir = torch.randn(5, 16), torch.randn(5, 16)
    code, paper = SIIFusion(16, "code").eval(), SIIFusion(16, "paper").eval()
    assert torch.equal(code.attention(t_vis, t_ir), torch.ones(5, 1, 1))
    w = paper.attention(t_vis, t_ir)
    assert w.shape == (5, 1, 2) and torch.allclose(w.sum(-1), torch.ones(5, 1))
    assert ((w > 0.01) & (w < 0.99)).all()
    # "code" mode is exactly out(v(t_ir)) + t_vis
    assert torch.allclose(code(t_vis, t_ir), code.out(code.v(t_ir)) + t_vis, atol=1e-6)


# -- what each stage trains ----------------------------------------------------------------------------------
def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(model, before):
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_trains_only_its_parameters(stage):
    from clipmc.model.csdn import recipe

    torch.manual_seed(stage)
    model = build_model("csdn-tiny", num_classes=NUM_CLASSES).train()
    cfg = recipe.CSDNTrainConfig(model="csdn-tiny", pretrained=None)
    labels = torch.arange(NUM_CLASSES).repeat(2)
    modality = torch.tensor([0] * NUM_CLASSES + [1] * NUM_CLASSES)
    before = _snapshot(model)
    if stage in (1, 2):
        optimizer, _ = recipe.stage12_optimizer(model, stage, cfg)
        optimizer.param_groups[0]["lr"] = 1e-2
        feats = torch.randn(len(labels), model.config.embed_dim)
        if stage == 1:
            recipe.stage1_step(model, feats, labels, torch.arange(6), torch.arange(6, 12), optimizer)
        else:
            recipe.stage2_step(model, feats, labels, torch.arange(12), optimizer)
    else:
        optimizer, _ = recipe.stage3_optimizer(model, cfg)
        text = recipe.identity_text_features(model)
        x = images(len(labels), seed=3)
        batch = recipe.stage3_batch(x, x.flip(-1), labels, modality)
        terms = recipe.stage3_losses(model, text, *batch)
        assert set(terms) == set(cfg.loss_weights)
        total = sum(cfg.loss_weights[k] * v for k, v in terms.items())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    changed = _changed(model, before)
    image_side = {"stems", "layers", "attnpool", "gem", "bn", "bn_proj", "classifier", "classifier_proj"}
    expected = {
        1: lambda n: n.startswith("prompts."),
        2: lambda n: n.startswith("fusion."),
        3: lambda n: n.split(".")[0] in image_side,
    }[stage]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if expected(n)}
    assert changed and all(expected(n) for n in changed), sorted(changed - {n for n in changed if expected(n)})
    assert not any(n.startswith("text.") for n in changed)
    if stage == 1:
        assert {"prompts.0.tokens", "prompts.1.tokens"} <= changed
    if stage == 3:
        assert {"stems.0.0.weight", "stems.1.0.weight", "classifier.weight"} <= changed


def test_losses_behave():
    from clipmc.model.csdn.losses import msel, supcon, weighted_triplet

    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    modality = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    centres = torch.randn(2, 8) * 5
    tight = centres[labels] + 0.01 * torch.randn(8, 8)
    loose = torch.randn(8, 8)
    assert weighted_triplet(tight, labels) < weighted_triplet(loose, labels)
    assert supcon(tight, centres, labels, torch.tensor([0, 1])) < supcon(loose, centres, labels, torch.tensor([0, 1]))
    shifted = tight + torch.where(modality[:, None] == 1, 3.0, 0.0)  # a modality gap: cross >> intra distances
    assert msel(tight, labels, modality) < 1e-3 < msel(shifted, labels, modality)


# -- checkpoints, export, service ----------------------------------------------------------------------------
def test_checkpoint_round_trip_records_the_contract(csdn, csdn_checkpoint):
    from clipmc.model import load_checkpoint, read_checkpoint_config

    cfg = read_checkpoint_config(csdn_checkpoint)
    assert cfg["family"] == "csdn" and cfg["inputs"] == ["image", "modality"]
    assert cfg["embedding_dim"] == csdn.embedding_dim == 256 + 32
    assert cfg["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and cfg["image_size"] == [128, 64]
    assert cfg["embedding_version"].startswith("csdn-tiny.r1.w") and cfg["embedding_version"].endswith("imagenetnorm")
    loaded = load_checkpoint(csdn_checkpoint)
    assert type(loaded) is type(csdn) and loaded.config == csdn.config
    assert loaded.embedding_version == cfg["embedding_version"]
    x, m = images(3, seed=5), torch.tensor([0, 1, 1])
    with torch.no_grad():
        assert torch.equal(loaded.embed(x, m), csdn.embed(x, m))


def test_onnx_parity_on_both_modalities(csdn, csdn_checkpoint, tmp_path):
    from clipmc.export import create_embedder
    from clipmc.export.graph import read_onnx_metadata
    from clipmc.export.onnx_export import export_onnx

    version = json.loads((csdn_checkpoint / "config.json").read_text())["embedding_version"]
    path = export_onnx(csdn, tmp_path / "csdn.onnx", embedding_version=version)
    meta = read_onnx_metadata(path)
    assert meta["family"] == "csdn" and meta["input_names"] == ("image", "modality")
    assert meta["embedding_dim"] == csdn.embedding_dim and meta["preprocessing"]["std"] == [0.229, 0.224, 0.225]
    ort_emb = create_embedder("onnxruntime", path, batch_sizes=(1, 8))
    torch_emb = create_embedder("torch", csdn_checkpoint, batch_sizes=(1, 8))
    assert ort_emb.embedding_version == torch_emb.embedding_version == version
    assert ort_emb.preprocessing.normalization == torch_emb.preprocessing.normalization == "imagenet"
    crops = np.random.default_rng(0).integers(0, 256, size=(6, 128, 64, 3), dtype=np.uint8)
    for modality in (0, 1):
        ref, got = torch_emb.embed(crops, modality), ort_emb.embed(crops, modality)
        cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
        assert cos.min() >= 0.99999, (modality, cos)
    assert not np.allclose(torch_emb.embed(crops, 0), torch_emb.embed(crops, 1))


def test_serve_answers_query_and_refuses_another_models_gallery(csdn_checkpoint, tmp_path, capsys, restore_logging):
    from clipmc.cli import main
    from clipmc.gallery import open_gallery
    from clipmc.service.app import create_app
    from tests.service_fixtures import (
        INFRARED_CAMERA,
        KEYS,
        crop_bytes,
        ingest_multipart,
        live_server,
        query_multipart,
        settings_for,
    )

    settings = settings_for(tmp_path, weights=str(csdn_checkpoint), api_keys=f"{KEYS['admin']}:admin")
    with live_server(create_app(settings)) as srv, srv.client(KEYS["admin"]) as c:
        ready = c.get("/readyz").json()
        assert ready["embedder"]["embedding_version"].startswith("csdn-tiny.")
        assert ready["embedder"]["normalization"] == "imagenet"
        items = [(crop_bytes(pid, 1), {"external_id": f"v{pid}", "modality": "visible", "camera": 1})
                 for pid in (1, 2, 3)]  # fmt: skip
        assert ingest_multipart(c, items).status_code == 200
        r = query_multipart(c, crop_bytes(2, INFRARED_CAMERA), modality="infrared", top_k=3)
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert len(hits) == 3 and all(h["modality"] == "visible" for h in hits)
    # A gallery of CLIP-MC vectors is refused by embedding_version, in one line.
    open_gallery(tmp_path / "clipmc-gallery", 288, "clipmc-tiny.wffffffffffff.128x64-bicubic-clipnorm").close()
    code = main(["serve", "--weights", str(csdn_checkpoint), "--gallery", str(tmp_path / "clipmc-gallery")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "embedding_version" in err


# -- the commands --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_info_evaluate_export_verify_commands_dispatch_through_the_registry(
    synth_trees, tmp_path, capsys, restore_logging
):
    """`clipmc train --model csdn-tiny` runs CSDN's recipe (one short step per stage), then the generic
    commands work on its checkpoint; options of another recipe are refused in one line."""
    from clipmc.cli import main

    options = {"pretrained": None, "image_size": [32, 16], "stage1_epochs": 1, "stage2_epochs": 1, "epochs": 1,
               "max_steps_per_epoch": 1, "num_ids": 2, "num_per_modality": 1, "workers": 0,
               "stage1_batch_size": 4, "stage2_batch_size": 4, "selection": "last"}  # fmt: skip
    config = tmp_path / "csdn.json"
    config.write_text(json.dumps(options))
    run = tmp_path / "run"
    args = ["train", "--dataset", "sysu", "--data-root", str(synth_trees["sysu"]), "--model", "csdn-tiny",
            "--config", str(config), "--out", str(run), "--device", "cpu", "--seed", "3"]  # fmt: skip
    assert main(args) == 0
    best = json.loads((run / "best" / "config.json").read_text())
    assert best["family"] == "csdn" and best["architecture"]["name"] == "csdn-tiny"
    assert best["metadata"]["training_args"]["seed"] == 3 and best["metadata"]["selection"]["metric"] is None
    log = (run / "train_log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["1", "2", "3"]  # one row per stage
    capsys.readouterr()

    assert main(["info", str(run / "best"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "csdn" and info["normalization"] == "imagenet" and info["mc_alpha"] is None

    out = tmp_path / "eval"
    evaluate = ["evaluate", "--checkpoint", str(run / "best"), "--dataset", "sysu", "--data-root",
                str(synth_trees["sysu"]), "--mode", "all", "--trials", "0", "--workers", "0",
                "--out", str(out)]  # fmt: skip
    assert main(evaluate) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["embedding_version"] == best["embedding_version"]

    onnx_path = tmp_path / "csdn.onnx"
    assert main(["export", "onnx", "--checkpoint", str(run / "best"), "--out", str(onnx_path)]) == 0
    assert main(["verify", "--checkpoint", str(run / "best"), "--onnx", str(onnx_path), "--n", "4"]) == 0

    capsys.readouterr()
    bad = ["train", "--dataset", "sysu", "--data-root", str(synth_trees["sysu"]), "--model", "csdn-tiny",
           "--ablate", "mc", "--out", str(tmp_path / "bad")]  # fmt: skip
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ablate" in err
