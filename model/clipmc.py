"""The CLIP-MC network (DESIGN.md section 3): CLIP image encoder, ITPG, MCL, frozen text encoder, MC.

Each head is a small named `nn.Module` so that an ablation (`ModelConfig.ablate`) replaces or removes it.
The open_clip CLIP model is held whole (`self.clip`); only its image tower trains, the text tower is
frozen and run on the 16-token prompt "A X X X X photo of a X X X X person." whose fixed token
embeddings are a constant buffer, so no tokenizer and no token table are needed at inference. With
the "text" ablation the text tower is deleted: the checkpoint then holds the image encoder only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

PROMPT_TEMPLATE = "A X X X X photo of a X X X X person."
PROMPT_LEN = 16  # SOT + 14 words/slots + EOT
EOT_INDEX = 15
CONTEXT_SLOT = slice(2, 6)  # first "X X X X": the modality context
INSTANCE_SLOT = slice(9, 13)  # second "X X X X": the instance tokens

VISIBLE, INFRARED = 0, 1


@dataclass
class CLIPMCOutput:
    """Every feature the losses need for one batch; the text-side fields are None without a text encoder."""

    f_cls: torch.Tensor  # [B, Wv] CLS token after ln_post
    f_img: torch.Tensor  # [B, D] projected CLS
    patches: torch.Tensor  # [B, L, D] projected patch tokens
    instance_tokens: torch.Tensor | None  # [B, M, Wt] ITPG output S (or the shared tokens)
    t_orig: torch.Tensor | None  # [B, D] text feature with the image's own modality context
    t_comp: torch.Tensor | None  # [B, D] text feature with the other modality's context
    f_full: torch.Tensor  # [B, D] compensated image feature (f_img when MC is ablated)
    embedding: torch.Tensor  # [B, Wv + D] L2-normalised retrieval vector
    contexts: torch.Tensor | None = None  # [2, n_ctx, Wt] the modality contexts (visible, infrared)
    compensation: torch.Tensor | None = None  # [B, D] f_full - f_img, the MC term (None when ablated)


class CrossAttentionBlock(nn.Module):
    """Pre-LN cross-attention: queries attend to image patches, then an MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kv = self.ln_kv(kv)
        q = q + self.attn(self.ln_q(q), kv, kv, need_weights=False)[0]
        return q + self.mlp(self.ln_mlp(q))


class ITPG(nn.Module):
    """Instance text prompt generation: M image-conditioned queries -> pseudo-word token embeddings."""

    def __init__(self, dim: int, token_dim: int, n_queries: int, layers: int, heads: int, token_norm: float) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, dim) * dim**-0.5)
        self.condition = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, heads) for _ in range(layers))
        self.ln_out = nn.LayerNorm(dim)
        self.to_token = nn.Linear(dim, token_dim)
        # Pseudo-words are rescaled to the typical norm of CLIP's word embeddings, so the frozen text
        # encoder sees inputs of the scale it was trained on.
        self.register_buffer("token_norm", torch.tensor(float(token_norm)))

    def forward(self, f_img: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        q = self.queries.unsqueeze(0) + self.condition(f_img).unsqueeze(1)
        for block in self.blocks:
            q = block(q, patches)
        s = self.to_token(self.ln_out(q))
        return F.normalize(s, dim=-1) * self.token_norm


class SharedInstanceTokens(nn.Module):
    """`--ablate itpg`: the instance slot holds M learnable tokens shared by every image (CoOp-style),
    rescaled to the same norm as ITPG's pseudo-words; no image conditioning."""

    def __init__(self, n_tokens: int, token_dim: int, token_norm: float) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(n_tokens, token_dim) * 0.02)
        self.register_buffer("token_norm", torch.tensor(float(token_norm)))

    def forward(self, f_img: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        s = F.normalize(self.tokens, dim=-1) * self.token_norm
        return s.unsqueeze(0).expand(f_img.shape[0], -1, -1).to(f_img.dtype)


class SharedContext(nn.Module):
    """`--ablate mcl`: one learnable context for both modalities, so t_orig and t_comp coincide."""

    def __init__(self, n_ctx: int, token_dim: int) -> None:
        super().__init__()
        self.ctx = nn.Parameter(torch.randn(1, n_ctx, token_dim) * 0.02)

    def forward(self) -> torch.Tensor:
        return self.ctx.expand(2, -1, -1)


class ModalityContextLearner(nn.Module):
    """MCL: learnable context tokens per modality plus a zero-initialised MLP of the modality's
    running mean image feature; at inference the contexts are a constant [2, n_ctx, Wt]."""

    def __init__(self, n_ctx: int, token_dim: int, feat_dim: int, momentum: float = 0.99) -> None:
        super().__init__()
        self.n_ctx, self.token_dim, self.momentum = n_ctx, token_dim, momentum
        self.ctx = nn.Parameter(torch.randn(2, n_ctx, token_dim) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(feat_dim, feat_dim), nn.GELU(), nn.Linear(feat_dim, n_ctx * token_dim))
        # Near zero, not zero: the running-mean shift starts negligible, yet the first layer receives a
        # gradient at step 0 (behind an all-zero last layer it would receive none until the second step).
        nn.init.normal_(self.mlp[-1].weight, std=1e-3)
        nn.init.zeros_(self.mlp[-1].bias)
        self.register_buffer("running_mean", torch.zeros(2, feat_dim))
        self.register_buffer("seen", torch.zeros(2, dtype=torch.bool))

    @torch.no_grad()
    def update(self, f_img: torch.Tensor, modality: torch.Tensor) -> None:
        """EMA of each modality's f_img (detached), called in training."""
        for m in (VISIBLE, INFRARED):
            mask = modality == m
            if bool(mask.any()):
                mean = f_img[mask].float().mean(0)
                if bool(self.seen[m]):
                    self.running_mean[m].mul_(self.momentum).add_(mean, alpha=1 - self.momentum)
                else:
                    self.running_mean[m].copy_(mean)
                    self.seen[m] = True

    def forward(self) -> torch.Tensor:
        shift = self.mlp(self.running_mean).view(2, self.n_ctx, self.token_dim)
        return self.ctx + shift


class ModalityCompensation(nn.Module):
    """MC: f_full = f_img + alpha * g * (W_c t_comp), g = sigmoid(W_g [f_img; t_comp]).

    W_c starts as the identity and alpha at 0, so an untrained model serves plain CLIP features
    (zero-shot). That init gives W_c, W_g and t_comp no gradient from any f_full loss, so training
    starts from `start_training(alpha)` with alpha small and non-zero (DESIGN.md section 3).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=False)
        nn.init.eye_(self.proj.weight)
        self.gate = nn.Linear(2 * dim, dim)
        self.alpha = nn.Parameter(torch.zeros(()))

    @torch.no_grad()
    def start_training(self, alpha: float) -> bool:
        """Open the compensation for training: set alpha when it is still at its zero-shot 0.

        Returns whether alpha was set (a trained or resumed alpha is left alone)."""
        if float(self.alpha) != 0.0 or alpha == 0.0:
            return False
        self.alpha.fill_(alpha)
        return True

    def compensation(self, f_img: torch.Tensor, t_comp: torch.Tensor) -> torch.Tensor:
        """The term MC adds to f_img: alpha * g * W_c t_comp."""
        g = torch.sigmoid(self.gate(torch.cat([f_img, t_comp], dim=-1)))
        return self.alpha * g * self.proj(t_comp)

    def forward(self, f_img: torch.Tensor, t_comp: torch.Tensor) -> torch.Tensor:
        return f_img + self.compensation(f_img, t_comp)


class CLIPMC(nn.Module):
    """CLIP-based Modality Compensation for visible-infrared ReID."""

    def __init__(self, clip: nn.Module, config: ModelConfig, prompt_token_ids: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        self.clip = clip
        visual = clip.visual
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
            raise ValueError("CLIP-MC needs a plain ViT image tower (class token, ln_post, projection)")
        d, wt = config.embed_dim, config.text_width
        self.itpg: nn.Module | None = None
        self.mcl: nn.Module | None = None
        self.mc: ModalityCompensation | None = None
        if config.ablated("text"):
            _drop_text_tower(clip)
        else:
            with torch.no_grad():
                token_table = clip.token_embedding.weight
                token_norm = token_table.norm(dim=-1).mean().item()
                prompt = token_table[prompt_token_ids.long()].clone()
            # The fixed prompt words (SOT, "a", "photo", ...): constants, so inference needs no token table.
            self.register_buffer("prompt_embeddings", prompt)
            causal = torch.full((PROMPT_LEN, PROMPT_LEN), float("-inf")).triu_(1)
            self.register_buffer("causal_mask", causal, persistent=False)
            if config.ablated("itpg"):
                self.itpg = SharedInstanceTokens(config.n_queries, wt, token_norm)
            else:
                self.itpg = ITPG(d, wt, config.n_queries, config.itpg_layers, config.itpg_heads, token_norm)
            if config.ablated("mcl"):
                self.mcl = SharedContext(config.n_ctx, wt)
            else:
                self.mcl = ModalityContextLearner(config.n_ctx, wt, d)
            if not config.ablated("mc"):
                self.mc = ModalityCompensation(d)
        for p in self.text_parameters():
            p.requires_grad_(False)

    def start_training(self, alpha: float) -> bool:
        """Give MC a gradient from step 0 (see `ModalityCompensation.start_training`); False without MC."""
        return self.mc.start_training(alpha) if self.mc is not None else False

    # -- parameter groups -------------------------------------------------------------------------
    def text_parameters(self) -> list[nn.Parameter]:
        """Frozen text tower (and logit scale/bias, unused here)."""
        visual = {id(p) for p in self.clip.visual.parameters()}
        return [p for p in self.clip.parameters() if id(p) not in visual]

    def image_encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.clip.visual.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """ITPG, MCL and MC parameters that exist in this (possibly ablated) graph."""
        return [p for m in (self.itpg, self.mcl, self.mc) if m is not None for p in m.parameters()]

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    @property
    def embedding_version(self) -> str:
        """Architecture + hash of the current weights + preprocessing; computed on each access
        (weights change in training), so callers that need it repeatedly keep the string."""
        from .version import compute_embedding_version

        return compute_embedding_version(self)

    # -- towers -----------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(f_cls [B, Wv], f_img [B, D], projected patches [B, L, D])."""
        visual = self.clip.visual
        x = visual.transformer(visual._embeds(images))
        x = visual.ln_post(x)
        f_cls = x[:, 0]
        return f_cls, f_cls @ visual.proj, x[:, 1:] @ visual.proj

    def build_prompts(self, context: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, 16, Wt] of the template with both X-slots filled."""
        b = instance.shape[0]
        base = self.prompt_embeddings.to(instance.dtype).unsqueeze(0).expand(b, -1, -1)
        return torch.cat(
            [
                base[:, : CONTEXT_SLOT.start],
                context,
                base[:, CONTEXT_SLOT.stop : INSTANCE_SLOT.start],
                instance,
                base[:, INSTANCE_SLOT.stop :],
            ],
            dim=1,
        )

    def encode_prompts(self, prompts: torch.Tensor) -> torch.Tensor:
        """Frozen causal text transformer on 16 tokens; the end-of-text output is the text feature.

        Causal attention makes this exactly the 77-token pass truncated to 16 positions.
        """
        clip = self.clip
        x = prompts + clip.positional_embedding[:PROMPT_LEN].to(prompts.dtype)
        x = clip.transformer(x, attn_mask=self.causal_mask.to(x.dtype))
        x = clip.ln_final(x[:, EOT_INDEX])
        proj = clip.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    # -- the model --------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, modality: torch.Tensor) -> CLIPMCOutput:
        """Training forward: both text features (own and other modality's context)."""
        modality = modality.long()
        f_cls, f_img, patches = self.encode_image(images)
        if self.itpg is None or self.mcl is None:  # no text encoder: the image-only baseline
            embedding = F.normalize(torch.cat([f_cls, f_img], dim=-1), dim=-1)
            return CLIPMCOutput(f_cls, f_img, patches, None, None, None, f_img, embedding)
        if self.training and isinstance(self.mcl, ModalityContextLearner):
            self.mcl.update(f_img.detach(), modality)
        instance = self.itpg(f_img, patches)
        contexts = self.mcl()
        prompts = torch.cat(
            [
                self.build_prompts(contexts[modality], instance),
                self.build_prompts(contexts[1 - modality], instance),
            ]
        )
        t_orig, t_comp = self.encode_prompts(prompts).chunk(2)
        comp = self.mc.compensation(f_img, t_comp) if self.mc is not None else None
        f_full = f_img + comp if comp is not None else f_img
        embedding = F.normalize(torch.cat([f_cls, f_full], dim=-1), dim=-1)
        return CLIPMCOutput(f_cls, f_img, patches, instance, t_orig, t_comp, f_full, embedding, contexts, comp)

    def embed(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Inference path, one graph: image encoder -> ITPG -> text (other modality's context) -> MC.

        Returns the [N, Wv + D] L2-normalised retrieval vector (1280-d for ViT-B-16). Without MC (the
        "mc" or "text" ablation) the text side does not reach the vector and is not run.
        """
        f_cls, f_img, patches = self.encode_image(images)
        if self.mc is None or self.itpg is None or self.mcl is None:
            return F.normalize(torch.cat([f_cls, f_img], dim=-1), dim=-1)
        instance = self.itpg(f_img, patches)
        other_context = self.mcl()[1 - modality.long()]
        t_comp = self.encode_prompts(self.build_prompts(other_context, instance))
        f_full = self.mc(f_img, t_comp)
        return F.normalize(torch.cat([f_cls, f_full], dim=-1), dim=-1)


def _drop_text_tower(clip: nn.Module) -> None:
    """Delete open_clip's text tower in place (the "text" ablation): no text weights are built into the
    checkpoint, and nothing can run the tower by accident."""
    for name in ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection"):
        if hasattr(clip, name):
            delattr(clip, name)
    if "attn_mask" in getattr(clip, "_buffers", {}):
        del clip._buffers["attn_mask"]


class EmbeddingGraph(nn.Module):
    """`embed` as `forward`, the module that export traces: inputs image, modality; output embedding."""

    def __init__(self, model: CLIPMC) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return self.model.embed(image, modality)
