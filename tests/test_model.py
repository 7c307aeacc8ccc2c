"""CLIP-MC network behaviour (DESIGN.md section 3) on the tiny configuration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipmc.model import build_model
from clipmc.model.clipmc import EOT_INDEX, PROMPT_LEN

from .conftest import random_images


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("modality", [0, 1])
def test_embed_shape_and_unit_norm(tiny_model, batch, modality):
    x = random_images(batch)
    with torch.no_grad():
        e = tiny_model.embed(x, torch.full((batch,), modality))
    assert e.shape == (batch, tiny_model.config.vision_width + tiny_model.config.embed_dim)
    assert e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(batch), atol=1e-5, rtol=0)


def test_vit_b_16_contract_dimension():
    from clipmc.model.config import get_config

    cfg = get_config("vit-b-16")
    assert cfg.embedding_dim == 1280 and cfg.image_size == (288, 144)


def test_untrained_embed_is_plain_clip_features(tiny_model):
    """With alpha = 0 the model is the zero-shot baseline: L2norm(concat[f_cls, f_img])."""
    assert tiny_model.mc.alpha.item() == 0.0
    x = random_images(3, seed=3)
    with torch.no_grad():
        f_cls, f_img, _ = tiny_model.encode_image(x)
        expected = F.normalize(torch.cat([f_cls, f_img], dim=1), dim=1)
        for m in (0, 1):
            got = tiny_model.embed(x, torch.full((3,), m))
            assert torch.equal(got, expected)


def test_modality_changes_vector_once_alpha_nonzero():
    torch.manual_seed(5)
    model = build_model("tiny").eval()
    x = random_images(2, seed=4)
    with torch.no_grad():
        model.mc.alpha.fill_(1.0)
        vis = model.embed(x, torch.zeros(2, dtype=torch.long))
        ir = model.embed(x, torch.ones(2, dtype=torch.long))
    assert (vis - ir).abs().max() > 1e-4


def test_embed_matches_forward_embedding(tiny_model):
    """The inference path equals the training forward's retrieval vector (same compensation)."""
    x = random_images(4, seed=6)
    m = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        tiny_model.mc.alpha.fill_(0.5)
        try:
            out = tiny_model(x, m)
            e = tiny_model.embed(x, m)
        finally:
            tiny_model.mc.alpha.fill_(0.0)
    torch.testing.assert_close(out.embedding, e, atol=1e-6, rtol=0)


def test_16_token_text_pass_equals_77_token_pass(tiny_model):
    clip = tiny_model.clip
    torch.manual_seed(7)
    ctx = torch.randn(3, 4, tiny_model.config.text_width) * 0.02
    inst = torch.randn(3, 4, tiny_model.config.text_width)
    with torch.no_grad():
        prompts = tiny_model.build_prompts(ctx, inst)
        short = tiny_model.encode_prompts(prompts)
        # The same prompt padded with the pad token to CLIP's full context, full causal mask.
        pad = clip.token_embedding(torch.zeros(3, 77 - PROMPT_LEN, dtype=torch.long))
        x = torch.cat([prompts, pad], dim=1) + clip.positional_embedding
        x = clip.transformer(x, attn_mask=clip.attn_mask)
        full = clip.ln_final(x)[:, EOT_INDEX] @ clip.text_projection
    assert (short - full).abs().max().item() < 1e-6


def test_gradients_reach_itpg_and_mcl_but_not_text_encoder():
    torch.manual_seed(8)
    model = build_model("tiny").train()
    out = model(random_images(4, seed=9), torch.tensor([0, 0, 1, 1]))
    loss = out.t_orig.pow(2).sum() + out.t_comp.pow(2).sum() + out.f_full.sum()
    loss.backward()
    for name, p in [*model.itpg.named_parameters(), *model.mcl.named_parameters()]:
        assert p.grad is not None, f"no gradient for {name}"
    # The MCL MLP's last layer starts near zero, not at zero, so even its first layer learns at step 0.
    nonzero = [*model.itpg.parameters(), *model.mcl.parameters()]
    assert all(p.grad.abs().sum() > 0 for p in nonzero)
    for p in model.text_parameters():
        assert not p.requires_grad and p.grad is None
    assert model.clip.visual.conv1.weight.grad is not None


def test_mcl_running_mean_updates_only_in_training():
    torch.manual_seed(10)
    model = build_model("tiny")
    before = model.mcl.running_mean.clone()
    with torch.no_grad():
        model.eval()(random_images(2), torch.tensor([0, 1]))
    assert torch.equal(model.mcl.running_mean, before)
    with torch.no_grad():
        model.train()(random_images(2), torch.tensor([0, 1]))
    assert not torch.equal(model.mcl.running_mean, before)
    assert model.mcl.seen.all()
