"""The CSDN network, its builder and its inference graph (DESIGN.md section 10).

    visible stem ─┐                                   ┌─ GeM ─ BN ─ classifier         (training)
                  ├─ layer1-4 (shared, layer4 stride 1) ┤      └─ l2 ─┐
    infrared stem ┘                                   └─ attnpool ─ BN ─ classifier  (training)
                                                               └─ l2 ─┴─ cat -> 3072-d (RN50)

    prompts (visible / infrared): "A photo of a X X X X person." with identity-specific X tokens
      -> frozen CLIP text encoder -> t_vis, t_ir -> SII fusion -> one text feature per identity

The stems are two copies of the CLIP stem (conv1-3 with their BNs and the average pool); every image
goes through its own modality's stem. Inference needs only the image path; the text tower, prompts
and fusion are used by the training recipe (model/csdn/recipe.py) and kept in the checkpoint so that
a checkpoint is the whole trained network.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ..factory import load_open_clip_weights, resolve_pretrained
from .config import CSDNConfig

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "A photo of a X X X X person."
PROMPT_LEN = 12  # SOT a photo of a X X X X person . EOT
EOT_INDEX = 11
ID_SLOT = slice(5, 9)  # the four "X": identity-specific tokens

VISIBLE, INFRARED = 0, 1


@dataclass
class CSDNOutput:
    """What stage 3's losses need for one batch."""

    features: torch.Tensor  # [B, C] GeM-pooled map (before BN)
    proj: torch.Tensor  # [B, D] attention-pool projection (before BN)
    logits: torch.Tensor | None  # [B, num_classes] classifier(BN(GeM)); None without classifiers
    logits_proj: torch.Tensor | None  # [B, num_classes] classifier_proj(BN(proj))


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent (p = 3 at start)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor([float(p)]))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))
        return pooled.pow(1.0 / self.p)


class IdentityPrompts(nn.Module):
    """One modality's identity-specific learnable tokens: [num_classes, n_tokens, token width]."""

    def __init__(self, num_classes: int, n_tokens: int, width: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(num_classes, n_tokens, width) * 0.02)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.tokens[labels]


class TextTower(nn.Module):
    """The frozen CLIP text transformer on the 12-token prompt; the end-of-text output is the feature.

    The fixed words of the template are a constant buffer (no token table kept); the causal mask makes
    the 12-token pass exactly the 77-token pass truncated to these positions.
    """

    def __init__(self, clip: nn.Module, prompt_ids: torch.Tensor) -> None:
        super().__init__()
        self.transformer = clip.transformer
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        with torch.no_grad():
            prompt = clip.token_embedding.weight[prompt_ids.long()].clone()
        self.register_buffer("prompt_embeddings", prompt)
        self.register_buffer("causal_mask", torch.full((PROMPT_LEN, PROMPT_LEN), float("-inf")).triu_(1), False)

    def forward(self, id_tokens: torch.Tensor) -> torch.Tensor:
        b = id_tokens.shape[0]
        base = self.prompt_embeddings.to(id_tokens.dtype).unsqueeze(0).expand(b, -1, -1)
        x = torch.cat([base[:, : ID_SLOT.start], id_tokens, base[:, ID_SLOT.stop :]], dim=1)
        x = x + self.positional_embedding[:PROMPT_LEN].to(x.dtype)
        x = self.transformer(x, attn_mask=self.causal_mask.to(x.dtype))
        x = self.ln_final(x[:, EOT_INDEX])
        proj = self.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj


class SIIFusion(nn.Module):
    """Semantic information integration: the visible text feature queries the infrared one.

    Q, K, V are Linear + Tanh + Dropout of the text features, the attended value goes through a linear
    layer and is added to the visible feature. mode "code" (the published code) attends over the one
    infrared key, so its softmax weight is always 1; mode "paper" attends over the infrared and the
    visible keys of the same identity, so the softmax decides how much of each description enters.
    """

    def __init__(self, dim: int, mode: str = "paper", dropout: float = 0.1) -> None:
        super().__init__()
        self.mode, self.dim = mode, dim

        def branch() -> nn.Sequential:
            return nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Dropout(dropout))

        self.q, self.k, self.v = branch(), branch(), branch()
        self.out = nn.Linear(dim, dim)

    def attention(self, t_vis: torch.Tensor, t_ir: torch.Tensor) -> torch.Tensor:
        """Attention weights [B, 1, keys] (keys: infrared, then visible in "paper" mode)."""
        keys = t_ir.unsqueeze(1) if self.mode == "code" else torch.stack([t_ir, t_vis], dim=1)
        scores = self.q(t_vis).unsqueeze(1) @ self.k(keys).transpose(1, 2) / math.sqrt(self.dim)
        return scores.softmax(dim=-1)

    def forward(self, t_vis: torch.Tensor, t_ir: torch.Tensor) -> torch.Tensor:
        keys = t_ir.unsqueeze(1) if self.mode == "code" else torch.stack([t_ir, t_vis], dim=1)
        attended = (self.attention(t_vis, t_ir) @ self.v(keys)).squeeze(1)
        return self.out(attended) + t_vis


class CSDN(nn.Module):
    """CLIP-Driven Semantic Discovery Network for visible-infrared ReID."""

    def __init__(self, clip: nn.Module, config: CSDNConfig, prompt_ids: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        visual = clip.visual
        if not hasattr(visual, "attnpool") or not hasattr(visual, "layer4"):
            raise ValueError("CSDN needs open_clip's ModifiedResNet image tower")
        stem = nn.Sequential(
            visual.conv1, visual.bn1, visual.act1, visual.conv2, visual.bn2, visual.act2,
            visual.conv3, visual.bn3, visual.act3, visual.avgpool,
        )  # fmt: skip
        self.stems = nn.ModuleList([stem, copy.deepcopy(stem)])  # [visible, infrared]
        self.layers = nn.Sequential(visual.layer1, visual.layer2, visual.layer3, visual.layer4)
        self.attnpool = visual.attnpool
        c, d = config.feature_dim, config.embed_dim
        self.gem = GeM(config.gem_p)
        self.bn = nn.BatchNorm1d(c)
        self.bn_proj = nn.BatchNorm1d(d)
        self.text = TextTower(clip, prompt_ids)
        self.fusion = SIIFusion(d, config.sii, config.sii_dropout)
        self.classifier: nn.Linear | None = None
        self.classifier_proj: nn.Linear | None = None
        self.prompts: nn.ModuleList | None = None
        if config.num_classes:
            self.classifier = nn.Linear(c, config.num_classes, bias=False)
            self.classifier_proj = nn.Linear(d, config.num_classes, bias=False)
            for layer in (self.classifier, self.classifier_proj):
                nn.init.normal_(layer.weight, std=0.001)
            w = config.token_width
            self.prompts = nn.ModuleList(IdentityPrompts(config.num_classes, config.n_id_tokens, w) for _ in range(2))
        for p in self.text.parameters():
            p.requires_grad_(False)

    # -- parameter groups (the recipe's stages) ----------------------------------------------------
    def image_encoder_parameters(self) -> list[nn.Parameter]:
        """Stems, shared layers, attention pool, GeM and the two BNs: what stage 3 trains at the base lr."""
        mods = (self.stems, self.layers, self.attnpool, self.gem, self.bn, self.bn_proj)
        return [p for m in mods for p in m.parameters()]

    def classifier_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.classifier, self.classifier_proj) if m is not None for p in m.parameters()]

    def prompt_parameters(self) -> list[nn.Parameter]:
        return list(self.prompts.parameters()) if self.prompts is not None else []

    def fusion_parameters(self) -> list[nn.Parameter]:
        return list(self.fusion.parameters())

    def text_parameters(self) -> list[nn.Parameter]:
        return list(self.text.parameters())

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    @property
    def embedding_version(self) -> str:
        """Architecture + hash of the current weights + preprocessing (computed on each access)."""
        from ..version import compute_embedding_version

        return compute_embedding_version(self)

    # -- image path -------------------------------------------------------------------------------
    def stem(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Each image through its own modality's stem.

        In training each stem runs on its own images only, so each stem's BatchNorm sees one modality;
        in eval both run on the batch and `where` picks per image (one static graph for export).
        """
        modality = modality.long()
        if not self.training:
            pick = (modality == INFRARED).view(-1, 1, 1, 1)
            return torch.where(pick, self.stems[INFRARED](images), self.stems[VISIBLE](images))
        out: torch.Tensor | None = None
        for m, stem in enumerate(self.stems):
            idx = (modality == m).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            y = stem(images.index_select(0, idx))
            if out is None:
                out = y.new_zeros((images.shape[0], *y.shape[1:]))
            out = out.index_copy(0, idx, y)
        if out is None:
            raise ValueError("empty batch")
        return out

    def feature_map(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """[B, C, H/16, W/16] (18 x 9 at 288 x 144)."""
        return self.layers(self.stem(images, modality))

    def image_proj(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """The attention-pool projection [B, D]: the image feature stages 1 and 2 align text with."""
        return self.attnpool(self.feature_map(images, modality))

    def forward(self, images: torch.Tensor, modality: torch.Tensor) -> CSDNOutput:
        """Training forward (stage 3): pooled features and both classifiers' logits."""
        fmap = self.feature_map(images, modality)
        proj = self.attnpool(fmap)
        features = self.gem(fmap)
        logits = self.classifier(self.bn(features)) if self.classifier is not None else None
        logits_proj = self.classifier_proj(self.bn_proj(proj)) if self.classifier_proj is not None else None
        return CSDNOutput(features, proj, logits, logits_proj)

    def _embed_once(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        fmap = self.feature_map(images, modality)
        global_feature = F.normalize(self.bn(self.gem(fmap)), dim=-1)
        proj = F.normalize(self.attnpool(fmap), dim=-1)
        return F.normalize(torch.cat([global_feature, proj], dim=-1), dim=-1)

    def embed(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Inference: image + modality -> cat[l2(BN(GeM)), l2(attnpool)], L2-normalised (3072-d for RN50).

        The concatenation of two unit vectors is divided by sqrt(2) (the contract's unit length), which
        changes no inner-product ranking. With config.flip the flipped crop's vector is averaged in.
        """
        e = self._embed_once(images, modality)
        if self.config.flip:
            e = F.normalize(e + self._embed_once(images.flip(-1), modality), dim=-1)
        return e

    # -- text path --------------------------------------------------------------------------------
    def text_features(self, labels: torch.Tensor, modality: int) -> torch.Tensor:
        """[B, D] text features of identities `labels` with the prompt learner of `modality`."""
        if self.prompts is None:
            raise ValueError("this CSDN model has no prompt learners (num_classes = 0)")
        return self.text(self.prompts[modality](labels))

    def fused_text_features(self, labels: torch.Tensor) -> torch.Tensor:
        """[B, D] SII fusion of the visible and infrared text features of identities `labels`."""
        return self.fusion(self.text_features(labels, VISIBLE), self.text_features(labels, INFRARED))


class EmbeddingGraph(nn.Module):
    """`embed` as `forward`, the module export traces: inputs image, modality; output embedding."""

    def __init__(self, model: CSDN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return self.model.embed(image, modality)


# -- builder --------------------------------------------------------------------------------------------
def prompt_token_ids() -> torch.Tensor:
    """Token ids of the 12-token template (open_clip ships the BPE vocabulary: no download)."""
    return open_clip.tokenize([PROMPT_TEMPLATE])[0, :PROMPT_LEN]


def set_last_stage_stride_1(visual: nn.Module) -> None:
    """layer4 without its 2x down-sampling (the first block's average pools become identities): the map
    keeps stride 16, 18 x 9 at 288 x 144. No parameter changes, so pretrained weights still apply."""
    block = visual.layer4[0]
    block.avgpool = nn.Identity()
    block.stride = 1
    if block.downsample is not None:
        block.downsample._modules["-1"] = nn.Identity()


def resize_attnpool_position(attnpool: nn.Module, grid: tuple[int, int]) -> None:
    """Resize the attention pool's position embedding [1 + s*s, C] to [1 + gh*gw, C] (bicubic on the
    spatial part, the pooled-token row kept); done once, after the pretrained weights are loaded."""
    pos = attnpool.positional_embedding.detach()
    side = math.isqrt(pos.shape[0] - 1)
    if side * side + 1 != pos.shape[0]:
        raise ValueError(f"attention-pool position embedding of {pos.shape[0]} rows is not 1 + a square grid")
    spatial = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    resized = F.interpolate(spatial, size=grid, mode="bicubic", align_corners=False)
    resized = resized.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    attnpool.positional_embedding = nn.Parameter(torch.cat([pos[:1], resized]))


def build(config: CSDNConfig, pretrained: str | None = None, *, cache_dir: str | None = None) -> CSDN:
    """CSDN's builder (its model.registry entry).

    pretrained: None (random init), an open_clip tag ("openai", for csdn-rn50) or a local open_clip
    checkpoint file of the config's CLIP. The CLIP model is built at its pretrained 224 grid, the
    weights loaded strictly, then layer4 is set to stride 1 and the pool's position embedding resized.
    """
    path = resolve_pretrained(config, pretrained, cache_dir) if pretrained else None  # type: ignore[arg-type]
    clip = open_clip.CLIP(**config.open_clip_cfg())
    if path:
        load_open_clip_weights(clip, path, config.name)
    set_last_stage_stride_1(clip.visual)
    resize_attnpool_position(clip.visual.attnpool, config.grid)
    model = CSDN(clip, config, prompt_token_ids())
    model.eval()
    return model
