"""MIP as a registered architecture, on `mip-tiny` (the same code with small widths): the camera and
the modality as inputs, prompts chosen by modality, paper vs released-code behaviour, the pretrained
ViT loading (position embedding resized), what trains at which learning rate, checkpoints with the
camera map, ONNX parity with image + modality + camera, and the service's camera path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipmc.model.registry import build_model

NUM_CLASSES = 6
CAMERAS = ("1", "2", "4", "5")
SIZE = (76, 40)


def tiny(**overrides):
    torch.manual_seed(0)
    model = build_model("mip-tiny", num_classes=NUM_CLASSES, cameras=CAMERAS, **overrides)
    with torch.no_grad():  # give the BN necks real statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def mip():
    return tiny()


@pytest.fixture(scope="module")
def mip_checkpoint(tmp_path_factory, mip):
    from clipmc.model import save_checkpoint

    path = tmp_path_factory.mktemp("mip") / "ckpt"
    save_checkpoint(mip, path, note="mip test fixture")
    return path


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


# -- configuration ----------------------------------------------------------------------------------------
def test_registry_and_the_published_geometry():
    from clipmc.model.registry import all_config_names, resolve_config

    names = all_config_names()
    assert names["mip-vit-b-16"] == names["mip-tiny"] == "mip"
    arch, cfg = resolve_config("mip-vit-b-16")
    assert arch.inputs == ("image", "modality", "camera")
    assert cfg.image_size == (256, 128) and cfg.grid == (21, 10) and cfg.embedding_dim == 3840
    assert (cfg.sie_coef, cfg.shift, cfg.groups, cfg.locals) == (3.0, 5, 2, 4)
    assert (cfg.modality_tokens, cfg.instance_tokens, cfg.prompt_layers) == (16, 16, 11)
    assert cfg.preprocessing().normalization == "half"
    with pytest.raises(ValueError, match="mode"):
        resolve_config("mip-tiny", mode="neither")


@pytest.mark.slow
def test_vit_b16_gives_a_3840_d_vector_from_a_21_by_10_grid():
    model = build_model("mip-vit-b-16")
    assert model.pos_embed.shape == (1, 1 + 21 * 10, 768)
    with torch.no_grad():
        e = model.embed(torch.randn(1, 3, 256, 128), torch.tensor([1]), torch.tensor([0]))
    assert e.shape == (1, 3840) and torch.allclose(e.norm(dim=1), torch.ones(1))


# -- the inputs ---------------------------------------------------------------------------------------------
def test_camera_and_modality_both_change_the_vector(mip):
    x = images(4)
    vis, ir = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    cam0, cam1 = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    with torch.no_grad():
        base = mip.embed(x, vis, cam0)
        assert base.shape == (4, (1 + 4) * 32) and torch.allclose(base.norm(dim=1), torch.ones(4))
        assert not torch.allclose(mip.embed(x, ir, cam0), base, atol=1e-4)
        assert not torch.allclose(mip.embed(x, vis, cam1), base, atol=1e-4)
        unknown = torch.full((4,), len(CAMERAS), dtype=torch.long)
        assert torch.equal(mip.embed(x, vis), mip.embed(x, vis, unknown))  # no camera: the unknown index
        mixed = mip.embed(x, torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 2, 4]))
        for i, (m, c) in enumerate([(0, 0), (1, 1), (0, 2), (1, 4)]):
            one = mip.embed(x[i : i + 1], torch.tensor([m]), torch.tensor([c]))
            assert torch.allclose(mixed[i], one[0], atol=1e-5)


def test_prompts_are_chosen_by_modality(mip):
    x = images(3, seed=1)
    vis, ir = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    with torch.no_grad():
        e_vis, e_ir = mip.embed(x, vis), mip.embed(x, ir)
        saved = mip.prompt_embeddings.clone()
        try:
            mip.prompt_embeddings[1].add_(0.5 * torch.randn_like(mip.prompt_embeddings[1]))
            assert torch.equal(mip.embed(x, vis), e_vis)  # visible crops never read the infrared prompts
            assert not torch.allclose(mip.embed(x, ir), e_ir, atol=1e-4)
        finally:
            mip.prompt_embeddings.copy_(saved)


def test_paper_runs_every_block_and_learned_seeds_code_skips_one_with_zero_seeds():
    paper, code = tiny(), tiny(mode="code")
    assert paper.seed_tokens is not None and code.seed_tokens is None
    assert paper.prompted_blocks == len(paper.blocks) and code.prompted_blocks == len(code.blocks) - 1
    x, m = images(2, seed=2), torch.tensor([0, 1])
    with torch.no_grad():
        for model, runs_last in ((paper, True), (code, False)):
            before = model.embed(x, m)
            for p in model.blocks[-1].parameters():
                p.add_(0.3)
            assert torch.allclose(model.embed(x, m), before) != runs_last
    # Paper seeds are parameters and receive gradients; the generator learns in both modes.
    paper.train()
    out = paper(x, m, torch.tensor([0, 1]))
    sum(f.sum() for f in out.features).backward()
    assert paper.seed_tokens.grad is not None and paper.seed_tokens.grad.abs().sum() > 0
    assert all(p.grad is not None for p in paper.instance_prompt_generator.parameters())


def test_pretrained_vit_loads_from_a_local_file_with_the_position_embedding_resized(tmp_path):
    from safetensors.torch import save_file
    from timm.layers import resample_abs_pos_embed

    from clipmc.model.factory import PretrainedWeightsError
    from clipmc.model.mip.config import NAMED_CONFIGS
    from clipmc.model.mip.network import new_vit

    torch.manual_seed(3)
    vit = new_vit(NAMED_CONFIGS["mip-tiny"])  # a randomly initialised timm ViT of mip-tiny's widths
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    state["head.weight"] = torch.zeros(10, 32)  # a classification head is dropped at load
    save_file(state, str(tmp_path / "vit.safetensors"))
    torch.save(state, tmp_path / "vit.pth")
    for path in (tmp_path / "vit.safetensors", tmp_path / "vit.pth"):
        model = build_model("mip-tiny", pretrained=str(path))
        assert torch.equal(model.patch_embed.weight, vit.patch_embed.proj.weight)
        assert model.patch_embed.stride == (12, 12)
        want = resample_abs_pos_embed(vit.pos_embed.detach(), new_size=[6, 3], old_size=[14, 14], num_prefix_tokens=1)
        assert model.pos_embed.shape == (1, 1 + 6 * 3, 32) and torch.allclose(model.pos_embed, want)
        assert torch.equal(model.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
        assert torch.equal(model.instance_prompt_generator.mlp.fc1.weight, vit.blocks[0].mlp.fc1.weight)
        assert torch.equal(model.global_branch[0].attn.qkv.weight, vit.blocks[-1].attn.qkv.weight)
    with pytest.raises(PretrainedWeightsError, match="not timm ViT"):
        build_model("mip-tiny", pretrained=str(tmp_path / "vit.pth"), width=48, heads=2)
    with pytest.raises(PretrainedWeightsError, match="local timm ViT weights file"):
        build_model("mip-tiny", pretrained="timm")


def test_an_open_clip_image_tower_loads_exactly_through_timms_converter(tmp_path):
    """MIP on the synthetic CLIP (`mip-synth-small`, as mip-vit-b-16 on ImageNet weights): the open_clip
    file's ViT image tower, converted by timm's own checkpoint filter into a pre-norm timm ViT, computes
    what open_clip's tower computes; MIP takes its patch kernels, ln_pre and blocks."""
    from safetensors.torch import save_file

    from clipmc.model.config import get_config
    from clipmc.model.mip.config import NAMED_CONFIGS, config_for_clip_tower
    from clipmc.model.mip.network import load_vit_weights, new_vit
    from clipmc.model.pretrain_clip import build_pretrain_model

    config = NAMED_CONFIGS["mip-synth-small"]
    assert config == config_for_clip_tower("mip-synth-small", get_config("synth-small").clip["vision_cfg"])
    with pytest.raises(ValueError, match="QuickGELU"):  # timm's GELU ViT would load such a tower but differ
        config_for_clip_tower("mip-tiny-clip", get_config("tiny").clip["vision_cfg"], quick_gelu=True)
    torch.manual_seed(5)
    clip, _, _ = build_pretrain_model("synth-small")
    with torch.no_grad():  # open_clip zero-initialises nothing that matters here; perturb the norms too
        clip.visual.ln_pre.weight.uniform_(0.5, 1.5)
        clip.visual.ln_pre.bias.uniform_(-0.2, 0.2)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    vit = new_vit(config)
    load_vit_weights(vit, str(path))
    x = torch.randn(2, 3, 128, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = vit.eval().forward_features(x)[:, 0] @ clip.visual.proj
        theirs = clip.eval().visual(x)
    assert torch.allclose(ours, theirs, atol=1e-5)
    model = build_model("mip-synth-small", pretrained=str(path))
    assert torch.equal(model.patch_embed.weight, clip.visual.conv1.weight)
    assert torch.equal(model.patch_embed.bias, torch.zeros(128))  # a CLIP tower has no patch bias
    assert torch.equal(model.norm_pre.weight, clip.visual.ln_pre.weight)
    assert model.pos_embed.shape == (1, 1 + 10 * 5, 128)  # 8 x 4 at stride 16 -> 10 x 5 at stride 12
    assert model.embed(x, torch.tensor([0, 1])).shape == (2, 640)


# -- training groups ---------------------------------------------------------------------------------------
def test_frozen_and_learned_groups_and_their_learning_rates():
    from clipmc.model.mip import recipe

    model = tiny().train()
    cfg = recipe.MIPTrainConfig(model="mip-tiny", pretrained=None)
    groups = recipe.parameter_groups(model)
    names = {g: {n for n, _ in members} for g, members in groups.items()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.endswith("bias") and "neck" in n for n in frozen)  # BNNeck shifts only
    assert "seed_tokens" in names["generator"] and all(
        n.startswith(("instance_prompt_generator.", "seed_tokens")) for n in names["generator"]
    )
    assert names["prompts"] == {"prompt_embeddings"}
    assert "prompt_proj.weight" in names["base"] and "prompt_proj.bias" in names["bias"]
    assert "sie_embed" in names["base"] and "pos_embed" in names["base"]
    assert sum(len(v) for v in names.values()) + len(frozen) == len(list(model.parameters()))
    optimizer, scheduler = recipe.make_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    # timm's warm-up starts every group at the same 0.01 x lr (as the released code); from the end of
    # the warm-up the groups keep the multipliers.
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4] * len(optimizer.param_groups))
    scheduler.step(cfg.warmup_epochs)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert 0.009 < lrs["base"] < 0.01  # timm counts the warm-up inside the first 30-epoch cosine cycle
    assert lrs["generator"] / lrs["base"] == pytest.approx(15) and lrs["prompts"] / lrs["base"] == pytest.approx(5)
    assert lrs["bias"] / lrs["base"] == pytest.approx(2)
    # One step changes every group's parameters and never the frozen ones.
    scheduler.step(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = images(8, seed=4), torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    m, c = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    terms = recipe.losses(model, x, y, m, c, use_msel=True, use_iael=True)
    assert set(terms) == {"id", "triplet", "msel", "iael"}
    optimizer.zero_grad()
    sum(terms.values()).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not changed & frozen
    for group in ("generator", "prompts", "base", "bias"):
        assert changed & names[group], group


def test_cosine_refine_schedule_and_camera_dropout():
    from clipmc.model.mip import recipe

    model = tiny()
    cfg = recipe.MIPTrainConfig(model="mip-tiny", pretrained=None)
    _, scheduler = recipe.make_optimizer(model, cfg)
    lr = {e: scheduler._get_lr(e)[0] for e in (0, 5, 29, 30, 60)}
    assert lr[0] == pytest.approx(1e-4) and lr[5] < 0.01 and lr[29] < 1e-4
    assert lr[30] == pytest.approx(1e-3) and lr[60] == pytest.approx(1e-4)
    gen = torch.Generator().manual_seed(0)
    dropped = recipe.drop_cameras(torch.zeros(10000, dtype=torch.long), 4, 0.1, gen)
    assert 0.08 < (dropped == 4).float().mean() < 0.12 and set(dropped.tolist()) == {0, 4}


def test_soft_margin_triplet():
    from clipmc.model.mip.losses import soft_margin_triplet

    labels = torch.tensor([0, 0, 1, 1])
    apart = torch.tensor([[0.0, 0], [0, 0.1], [5, 5], [5, 5.1]])
    mixed = torch.tensor([[0.0, 0], [5, 5], [0, 0.1], [5, 5.1]])
    assert soft_margin_triplet(apart, labels) < 0.01 < 1 < soft_margin_triplet(mixed, labels)


# -- checkpoint, cameras, export -----------------------------------------------------------------------------
def test_checkpoint_records_the_camera_map_and_inputs(mip, mip_checkpoint):
    from clipmc.model.checkpoint import load_checkpoint, read_checkpoint_config

    cfg = read_checkpoint_config(mip_checkpoint)
    assert cfg["family"] == "mip" and cfg["inputs"] == ["image", "modality", "camera"]
    assert cfg["architecture"]["cameras"] == list(CAMERAS) and cfg["architecture"]["unknown_camera"] is True
    assert cfg["embedding_version"].startswith("mip-tiny.r1.w") and cfg["embedding_version"].endswith("halfnorm")
    loaded = load_checkpoint(mip_checkpoint)
    assert loaded.config == mip.config and loaded.sie_embed.shape[0] == len(CAMERAS) + 1
    x = images(2)
    with torch.no_grad():
        assert torch.equal(loaded.embed(x, torch.tensor([0, 1]), torch.tensor([1, 4])),
                           mip.embed(x, torch.tensor([0, 1]), torch.tensor([1, 4])))  # fmt: skip


def test_camera_names_map_to_indices():
    from clipmc.model.cameras import CameraError, CameraMap

    cams = CameraMap(CAMERAS, unknown=True)
    assert cams.index("4") == 2 and cams.index(4) == 2 and cams.index(None) == 4 and cams.index("9") == 4
    assert cams.indices(["1", None, 5], 3).tolist() == [0, 4, 3]
    strict = CameraMap(CAMERAS, unknown=False)
    with pytest.raises(CameraError, match="unknown camera '9'"):
        strict.index("9")
    with pytest.raises(CameraError, match="needs the crop's camera"):
        strict.index(None)


def test_onnx_parity_with_image_modality_and_camera(mip, mip_checkpoint, tmp_path):
    from clipmc.export import EmbedderError, create_embedder
    from clipmc.export.graph import read_onnx_metadata
    from clipmc.export.onnx_export import export_onnx

    version = json.loads((mip_checkpoint / "config.json").read_text())["embedding_version"]
    path = export_onnx(mip, tmp_path / "mip.onnx", embedding_version=version)
    meta = read_onnx_metadata(path)
    assert meta["family"] == "mip" and meta["input_names"] == ("image", "modality", "camera")
    assert meta["architecture_config"]["cameras"] == list(CAMERAS)
    ort_emb = create_embedder("onnxruntime", path, batch_sizes=(1, 8))
    torch_emb = create_embedder("torch", mip_checkpoint, batch_sizes=(1, 8))
    assert ort_emb.embedding_version == torch_emb.embedding_version == version
    assert ort_emb.inputs == torch_emb.inputs == ("image", "modality", "camera")
    crops = np.random.default_rng(0).integers(0, 256, size=(10, *SIZE, 3), dtype=np.uint8)
    modality = np.arange(10) % 2
    cameras = ["1", "2", "4", "5", None, "1", "unseen", "5", 4, "2"]
    ref, got = torch_emb.embed(crops, modality, cameras), ort_emb.embed(crops, modality, cameras)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() >= 0.99999, cos
    assert not np.allclose(torch_emb.embed(crops, 0, "1"), torch_emb.embed(crops, 0, "2"))
    np.testing.assert_allclose(ort_emb.embed(crops, 1), ort_emb.embed(crops, 1, "unseen"), atol=1e-6)
    with pytest.raises(EmbedderError, match="one per crop"):
        ort_emb.embed(crops, 0, ["1", "2"])


def test_a_model_without_an_unknown_index_refuses_unknown_cameras():
    from clipmc.export import EmbedderError
    from clipmc.export.runtime_torch import TorchEmbedder

    model = build_model("mip-tiny", cameras=CAMERAS, unknown_camera=False)
    assert model.sie_embed.shape[0] == len(CAMERAS)
    emb = TorchEmbedder(model, batch_sizes=(2,))
    crops = np.zeros((2, *SIZE, 3), np.uint8)
    assert emb.embed(crops, 0, "5").shape == (2, model.embedding_dim)
    with pytest.raises(EmbedderError, match="unknown camera '7'"):
        emb.embed(crops, 0, "7")
    with pytest.raises(EmbedderError, match="needs the crop's camera"):
        emb.embed(crops, 0)


def test_serve_query_with_a_camera_and_without(mip_checkpoint, tmp_path):
    from clipmc.service.app import create_app
    from tests.service_fixtures import KEYS, crop_bytes, ingest_multipart, live_server, query_multipart, settings_for

    settings = settings_for(tmp_path, weights=str(mip_checkpoint), api_keys=f"{KEYS['admin']}:admin")
    with live_server(create_app(settings)) as srv, srv.client(KEYS["admin"]) as c:
        ready = c.get("/readyz").json()
        assert ready["embedder"]["inputs"] == ["image", "modality", "camera"]
        items = [(crop_bytes(pid, 1), {"external_id": f"v{pid}", "modality": "visible", "camera": "1"})
                 for pid in (1, 2, 3)]  # fmt: skip
        items.append((crop_bytes(4, 2), {"external_id": "v4", "modality": "visible"}))  # no camera: unknown index
        assert ingest_multipart(c, items).status_code == 200
        query = crop_bytes(2, 3)
        with_camera = query_multipart(c, query, modality="infrared", camera="4", target_modality="any", top_k=4)
        without = query_multipart(c, query, modality="infrared", target_modality="any", top_k=4)
        unseen = query_multipart(c, query, modality="infrared", camera="99", target_modality="any", top_k=4)
        assert with_camera.status_code == without.status_code == unseen.status_code == 200, with_camera.text
        score = {name: {h["external_id"]: h["score"] for h in r.json()["results"]}
                 for name, r in (("cam", with_camera), ("none", without), ("unseen", unseen))}  # fmt: skip
        assert len(score["cam"]) == 4
        assert score["cam"] != score["none"]  # the camera enters the query vector
        assert score["unseen"] == pytest.approx(score["none"], abs=1e-5)  # unknown name -> the unknown index


def test_serve_refuses_an_unknown_camera_without_an_unknown_index(tmp_path):
    from clipmc.model import save_checkpoint
    from clipmc.service.app import create_app
    from tests.service_fixtures import KEYS, crop_bytes, ingest_multipart, live_server, query_multipart, settings_for

    ckpt = save_checkpoint(build_model("mip-tiny", cameras=CAMERAS, unknown_camera=False), tmp_path / "strict")
    # The torch back-end (no ONNX export at start-up): the 422 comes before any runtime is called.
    settings = settings_for(tmp_path, weights=str(ckpt), api_keys=f"{KEYS['admin']}:admin", backend="torch")
    with live_server(create_app(settings)) as srv, srv.client(KEYS["admin"]) as c:
        r = query_multipart(c, crop_bytes(2, 3), modality="infrared", camera="99")
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_camera", r.text
        assert "unknown camera '99'" in r.json()["error"]["message"]
        r = query_multipart(c, crop_bytes(2, 3), modality="infrared")
        assert r.status_code == 422 and "needs the crop's camera" in r.json()["error"]["message"]
        r = ingest_multipart(c, [(crop_bytes(1, 1), {"external_id": "a", "modality": "visible", "camera": "99"})])
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_camera"
        r = query_multipart(c, crop_bytes(2, 3), modality="infrared", camera="4")
        assert r.status_code == 200, r.text
