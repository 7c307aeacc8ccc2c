"""The MIP network, its builder and its inference graph (DESIGN.md section 11).

    image ─ overlapping patch embedding (16 x 16, stride 12) ─┐
                                 CLS ─ + position + 3.0 x SIE[camera] ─ blocks 0 .. depth-2, each on
        [CLS | modality prompts (layer, modality) | instance prompts (generator) | patches]
                   └─ [CLS | patches] ─ global branch (copy of the last block + norm) ─ CLS ─┐
                                      └─ JPM: shift 5, shuffle 2 groups, 4 local branches  ─┴─ cat
                                          (a second copy of the last block + norm) -> 3840-d

Before every prompted block the prompts are *replaced* (VPT-deep): the modality prompts are that
layer's learned tokens of the image's modality through one shared Linear + dropout; the instance
prompts are the first outputs of the instance-aware prompt generator (a copy of block 0) run on
[seed tokens | the block's input patches]. The backbone is timm's VisionTransformer (its blocks, norm,
class token and patch-embedding weights), the position embedding resized with timm's
`resample_abs_pos_embed`.

Written from the paper (arXiv 2406.12316) and the published code (github wurqjackey/MIP), not copied.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..factory import PretrainedWeightsError
from .config import MIPConfig

log = logging.getLogger(__name__)

VISIBLE, INFRARED = 0, 1


@dataclass
class MIPOutput:
    """What the training losses need for one batch."""

    features: list[torch.Tensor]  # [global, local 1..L], each [B, width] (before the BN necks)
    logits: list[torch.Tensor] | None  # classifier(BN(feature)) per branch; None without classifiers
    instance_logits: list[torch.Tensor] | None  # IAEL: one per prompted layer; None without classifiers


def shuffle_patches(patches: torch.Tensor, shift: int, groups: int) -> torch.Tensor:
    """JPM's rearrangement: shift the patch sequence by `shift`, then interleave `groups` groups
    (patch i of group g goes to position i * groups + g)."""
    b, n, d = patches.shape
    x = torch.cat([patches[:, shift - 1 :], patches[:, : shift - 1]], dim=1)
    return x.view(b, groups, n // groups, d).transpose(1, 2).reshape(b, n, d)


def _neck(width: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(width)
    nn.init.constant_(bn.weight, 1.0)
    nn.init.constant_(bn.bias, 0.0)
    bn.bias.requires_grad_(False)  # BNNeck: the shift is not learned
    return bn


def _classifier(width: int, num_classes: int) -> nn.Linear:
    layer = nn.Linear(width, num_classes, bias=False)
    nn.init.normal_(layer.weight, std=0.001)
    return layer


class MIP(nn.Module):
    """Modality- and instance-aware visual prompts on a TransReID ViT."""

    def __init__(self, vit: nn.Module, config: MIPConfig) -> None:
        super().__init__()
        self.config = config
        w, p = config.width, config.patch_size
        self.patch_embed = nn.Conv2d(3, w, kernel_size=p, stride=config.stride)
        with torch.no_grad():  # the pretrained 16 x 16 kernels, applied at stride 12
            self.patch_embed.weight.copy_(vit.patch_embed.proj.weight)
            bias = vit.patch_embed.proj.bias  # None for a CLIP image tower: the bias then starts at zero
            self.patch_embed.bias.copy_(bias if bias is not None else torch.zeros(w))
        from timm.layers import resample_abs_pos_embed

        self.cls_token = nn.Parameter(vit.cls_token.detach().clone())
        grid = vit.patch_embed.grid_size
        pos = resample_abs_pos_embed(vit.pos_embed.detach(), new_size=list(config.grid), old_size=list(grid),
                                     num_prefix_tokens=1)  # fmt: skip
        self.pos_embed = nn.Parameter(pos.clone())
        self.sie_embed = nn.Parameter(torch.empty(config.camera_map.size, 1, w))
        nn.init.trunc_normal_(self.sie_embed, std=0.02)
        self.norm_pre = copy.deepcopy(vit.norm_pre)  # a CLIP tower's ln_pre; Identity for TransReID's ViT
        blocks = list(vit.blocks)
        self.blocks = nn.ModuleList(blocks[:-1])  # the prompted backbone
        self.global_branch = nn.Sequential(copy.deepcopy(blocks[-1]), copy.deepcopy(vit.norm))
        self.local_branch = nn.Sequential(copy.deepcopy(blocks[-1]), copy.deepcopy(vit.norm))
        # Modality-aware prompts: [modality, layer, token, width], uniform init, one shared projection.
        self.prompt_embeddings = nn.Parameter(torch.empty(2, config.prompt_layers, config.modality_tokens, w))
        nn.init.uniform_(self.prompt_embeddings, -0.5, 0.5)
        self.prompt_proj = nn.Linear(w, w)
        nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")
        nn.init.zeros_(self.prompt_proj.bias)
        self.prompt_dropout = nn.Dropout(config.prompt_dropout)
        # Instance-aware prompt generator: a copy of the pretrained block 0, on [seeds | patches].
        self.instance_prompt_generator = copy.deepcopy(blocks[0])
        self.seed_tokens: nn.Parameter | None = None
        if config.mode == "paper":
            self.seed_tokens = nn.Parameter(torch.empty(1, config.instance_tokens, w))
            nn.init.trunc_normal_(self.seed_tokens, std=0.02)
        n_branches = 1 + config.locals
        self.necks = nn.ModuleList(_neck(w) for _ in range(n_branches))
        self.classifiers: nn.ModuleList | None = None
        self.instance_necks: nn.ModuleList | None = None
        self.instance_classifiers: nn.ModuleList | None = None
        if config.num_classes:
            self.classifiers = nn.ModuleList(_classifier(w, config.num_classes) for _ in range(n_branches))
            self.instance_necks = nn.ModuleList(_neck(w) for _ in range(self.prompted_blocks))
            self.instance_classifiers = nn.ModuleList(
                _classifier(w, config.num_classes) for _ in range(self.prompted_blocks)
            )

    # -- parameter groups (the recipe's learning rates) -------------------------------------------
    @property
    def prompted_blocks(self) -> int:
        """Blocks run with prompts: all of `blocks` in mode "paper"; the released code skips the last."""
        return len(self.blocks) - (1 if self.config.mode == "code" else 0)

    def parameter_group(self, name: str) -> str:
        """The learning-rate group of a parameter (by name): "generator" (x15: the prompt generator and,
        in mode "paper", its seed tokens), "prompts" (x5: the modality prompt embeddings), "bias" (x2),
        else "base"."""
        if name.startswith(("instance_prompt_generator.", "seed_tokens")):
            return "generator"
        if name.startswith("prompt_embeddings"):
            return "prompts"
        if name.endswith("bias"):
            return "bias"
        return "base"

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    @property
    def embedding_version(self) -> str:
        from ..version import compute_embedding_version

        return compute_embedding_version(self)

    # -- forward ------------------------------------------------------------------------------------
    def camera_tensor(self, camera: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        """Camera indices int64 [n]; None gives the unknown index (a ValueError where there is none)."""
        if camera is None:
            index = self.config.camera_map.unknown_index
            if index is None:
                raise ValueError("this MIP model has no unknown-camera index: pass each crop's camera")
            return torch.full((n,), index, dtype=torch.long, device=device)
        return camera.long()

    def tokens(self, images: torch.Tensor, modality: torch.Tensor, camera: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:  # fmt: skip
        """The backbone: ([B, 1 + patches, width] after the prompted blocks, instance prompts per block)."""
        b = images.shape[0]
        cam = self.camera_tensor(camera, b, images.device)
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self.pos_embed
        x = self.norm_pre(x + self.config.sie_coef * self.sie_embed[cam])
        cls, patches = x[:, :1], x[:, 1:]
        modality = modality.long()
        k = self.config.instance_tokens
        instance_prompts = []
        for i in range(self.prompted_blocks):
            prompts = self.prompt_dropout(self.prompt_proj(self.prompt_embeddings[modality, i]))
            if self.seed_tokens is not None:
                seeds = self.seed_tokens.expand(b, -1, -1)
            else:  # the released code: zeros made inside forward, so nothing is learned there
                seeds = patches.new_zeros(b, k, patches.shape[-1])
            instance = self.instance_prompt_generator(torch.cat([seeds, patches], dim=1))[:, :k]
            instance_prompts.append(instance)
            h = self.blocks[i](torch.cat([cls, prompts, instance, patches], dim=1))
            cls, patches = h[:, :1], h[:, 1 + prompts.shape[1] + k :]
        return torch.cat([cls, patches], dim=1), instance_prompts

    def branch_features(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """[global CLS, local CLS 1..L] of the JPM branches, each [B, width] (before the necks)."""
        c = self.config
        global_feature = self.global_branch(tokens)[:, 0]
        cls = tokens[:, :1]
        patches = shuffle_patches(tokens[:, 1:], c.shift, c.groups)
        length = patches.shape[1] // c.locals
        locals_ = [self.local_branch(torch.cat([cls, patches[:, j * length : (j + 1) * length]], dim=1))[:, 0]
                   for j in range(c.locals)]  # fmt: skip
        return [global_feature, *locals_]

    def forward(self, images: torch.Tensor, modality: torch.Tensor, camera: torch.Tensor | None = None) -> MIPOutput:
        """Training forward: branch features, their classifiers' logits and the IAEL logits."""
        tokens, instance_prompts = self.tokens(images, modality, camera)
        features = self.branch_features(tokens)
        logits = instance_logits = None
        if self.classifiers is not None:
            logits = [clf(neck(f)) for f, neck, clf in zip(features, self.necks, self.classifiers, strict=True)]
            heads = zip(instance_prompts, self.instance_necks, self.instance_classifiers, strict=True)
            instance_logits = [clf(neck(p.mean(dim=1))) for p, neck, clf in heads]
        return MIPOutput(features, logits, instance_logits)

    def embed(self, images: torch.Tensor, modality: torch.Tensor, camera: torch.Tensor | None = None) -> torch.Tensor:
        """Inference: image + modality + camera index -> L2norm(cat[global, local_1 / L, ..., local_L / L]),
        3840-d for ViT-B (features before the BN necks, as the published test). camera None: the
        unknown-camera index."""
        tokens, _ = self.tokens(images, modality, camera)
        features = self.branch_features(tokens)
        n = self.config.locals
        return F.normalize(torch.cat([features[0], *(f / n for f in features[1:])], dim=-1), dim=-1)


class EmbeddingGraph(nn.Module):
    """`embed` as `forward`, the module export traces: inputs image, modality, camera; output embedding."""

    def __init__(self, model: MIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, modality: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        return self.model.embed(image, modality, camera)


# -- builder --------------------------------------------------------------------------------------------
def new_vit(config: MIPConfig) -> nn.Module:
    """timm's VisionTransformer of the config's widths in its pretrained layout (224 x 224 at stride 16 for
    the ImageNet ViT; a CLIP image tower's size, pre-norm and LayerNorm eps for `pre_norm` configs)."""
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=config.pretrained_size, patch_size=config.patch_size, embed_dim=config.width,
                             depth=config.depth, num_heads=config.heads, mlp_ratio=config.mlp_ratio, qkv_bias=True,
                             num_classes=0, drop_path_rate=config.drop_path, pre_norm=config.pre_norm,
                             norm_layer=partial(nn.LayerNorm, eps=config.norm_eps))  # fmt: skip


def resolve_vit_weights(config: MIPConfig, pretrained: str, cache_dir: str | None = None) -> str:
    """A local weights file: `pretrained` itself, or with "timm" the config's timm weights from the
    Hugging Face or torch hub cache. Never downloads (a clear error says how to get them)."""
    if os.path.isfile(pretrained):
        return pretrained
    if pretrained != "timm" or config.timm_name is None:
        raise PretrainedWeightsError(
            f"pretrained={pretrained!r} must be a local timm ViT weights file"
            + (
                ""
                if config.timm_name is None
                else f" or 'timm' ({config.timm_name}.{config.timm_tag} from timm's cache)"
            )
        )
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(f"{config.timm_name}.{config.timm_tag}")
    candidates: list[str] = []
    if cfg is not None and cfg.hf_hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=cache_dir)
            if isinstance(found, str):
                candidates.append(found)
    if cfg is not None and cfg.url:
        candidates.append(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url)))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise PretrainedWeightsError(
        f"the {config.timm_name}.{config.timm_tag} weights are not in timm's cache (looked in {candidates}); on a "
        f"connected machine run timm.create_model('{config.timm_name}.{config.timm_tag}', pretrained=True) once, "
        "or pass a local weights file"
    )


def load_vit_weights(vit: nn.Module, path: str) -> None:
    """Load a timm ViT state dict, or the image tower of an open_clip CLIP state dict (``visual.*`` keys,
    converted by timm's own `checkpoint_filter_fn`), strictly; any classifier or projection head is dropped.
    Safetensors or torch file."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state))
        if "visual.class_embedding" in state:  # an open_clip / OpenAI CLIP: its ViT image tower
            from timm.models.vision_transformer import checkpoint_filter_fn

            state = checkpoint_filter_fn(state, vit)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        vit.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError, OSError, AttributeError) as exc:
        raise PretrainedWeightsError(
            f"{path}: not timm ViT (or open_clip CLIP ViT) weights of these widths: {str(exc).splitlines()[0]}"
        ) from exc


def build(config: MIPConfig, pretrained: str | None = None, *, cache_dir: str | None = None) -> MIP:
    """MIP's builder (its model.registry entry).

    pretrained: None (random init), "timm" (the config's timm weights from the local cache) or a local
    timm ViT weights file of the config's widths (or an open_clip CLIP file whose image tower has them).
    The ViT is built in its pretrained layout (`pretrained_size`: 224 x 224 for ImageNet) and loaded
    strictly; the stride-12 patch embedding takes its kernels and the position embedding is resized to
    the grid.
    """
    vit = new_vit(config)
    if pretrained:
        path = resolve_vit_weights(config, pretrained, cache_dir)
        log.info("loading ViT weights from %s", path)
        load_vit_weights(vit, path)
    model = MIP(vit, config)
    model.eval()
    return model
