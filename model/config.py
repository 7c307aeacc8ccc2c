"""Named CLIP-MC architectures.

A `ModelConfig` is everything needed to rebuild the network without weights: the open_clip CLIP
configuration (image and text towers) plus the sizes of the CLIP-MC heads. It is written into every
checkpoint, so a checkpoint never depends on the code's defaults at load time.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from .preprocess import PreprocessConfig

IMAGE_SIZE = (288, 144)  # (H, W), DESIGN.md section 2
# r2: MC's compensation term factored out (same vectors), MCL's last layer near-zero instead of zero
# init, ablations in the architecture. Bump on any change that alters vectors for given weights
# (the revision of CLIPMC.embed; part of every CLIP-MC embedding_version, see model/version.py).
INFERENCE_REVISION = 2

# Modules an ablation can remove (DESIGN.md section 3): "mc" f_full = f_img; "itpg" the instance slot holds
# learnable tokens shared by all images; "mcl" one context for both modalities; "text" no text encoder at
# all (the image-only CLIP-ReID-style baseline; implies the other three).
ABLATIONS = ("mc", "itpg", "mcl", "text")


def normalise_ablations(values: object) -> tuple[str, ...]:
    """Sorted, de-duplicated ablation names; an unknown name is a ValueError naming the allowed ones."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    names = sorted({str(v).strip().lower() for v in values})  # type: ignore[union-attr]
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation(s) {unknown}: expected any of {list(ABLATIONS)}")
    return tuple(names)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one CLIP-MC network."""

    FAMILY: ClassVar[str] = "clipmc"  # its entry in model.registry

    name: str
    clip: dict[str, Any]  # open_clip model config: embed_dim, vision_cfg, text_cfg, quick_gelu
    open_clip_name: str | None = None  # open_clip's own name, for pretrained tags such as "openai"
    image_size: tuple[int, int] = IMAGE_SIZE
    n_queries: int = 4  # ITPG instance tokens M
    itpg_layers: int = 1
    itpg_heads: int = 8
    n_ctx: int = 4  # MCL context tokens per modality
    ablate: tuple[str, ...] = ()  # modules removed (ABLATIONS); part of the architecture, so load rebuilds it
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ablate", normalise_ablations(self.ablate))

    def ablated(self, module: str) -> bool:
        """Whether `module` ("mc", "itpg", "mcl", "text") is removed; no text encoder removes all three heads."""
        return module in self.ablate or "text" in self.ablate

    @property
    def embed_dim(self) -> int:
        """Width of f_img, the projected patches and the text features."""
        return int(self.clip["embed_dim"])

    @property
    def vision_width(self) -> int:
        """Width of the CLS token after ln_post (f_cls)."""
        return int(self.clip["vision_cfg"]["width"])

    @property
    def text_width(self) -> int:
        return int(self.clip["text_cfg"]["width"])

    @property
    def embedding_dim(self) -> int:
        """Length of the retrieval vector concat[f_cls, f_full]."""
        return self.vision_width + self.embed_dim

    def version_stem(self) -> str:
        """The architecture part of the embedding_version: "clipmc-vit-b-16.r2", "clipmc-tiny-no-mc.r2"."""
        arch = self.name + (f"-no-{'-'.join(self.ablate)}" if self.ablate else "")
        return f"clipmc-{arch}.r{INFERENCE_REVISION}"

    def preprocessing(self) -> PreprocessConfig:
        """The embedding contract's preprocessing: our image size, CLIP's normalisation."""
        return PreprocessConfig(height=self.image_size[0], width=self.image_size[1])

    def open_clip_cfg(self) -> dict[str, Any]:
        """The open_clip config with the image size set to ours (position grid sized at build)."""
        cfg = copy.deepcopy(self.clip)
        cfg["vision_cfg"]["image_size"] = list(self.image_size)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["ablate"] = list(self.ablate)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["image_size"] = tuple(d.get("image_size", IMAGE_SIZE))
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


_VIT_B_16 = ModelConfig(
    name="vit-b-16",
    open_clip_name="ViT-B-16",
    clip={
        "embed_dim": 512,
        "quick_gelu": True,  # the openai weights were trained with QuickGELU
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
    },
)

# Same code, small widths and depths: the test suite runs it on 2 CPU cores.
_TINY = ModelConfig(
    name="tiny",
    open_clip_name=None,
    clip={
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 48, "head_width": 24, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    itpg_heads=2,
)

# The small CLIP pretrained on synthetic captions (`clipmc pretrain-clip`, DESIGN.md section 13) and the
# CLIP-MC built on it: a ViT at the generator's 128 x 64 crops (an 8 x 4 patch grid) and a text tower
# long enough for the captions (48 tokens, the CLIP BPE vocabulary), sized so that pretraining takes
# minutes and one method-benchmark training run a few minutes on 2 CPU cores.
_SYNTH_SMALL = ModelConfig(
    name="synth-small",
    open_clip_name=None,
    image_size=(128, 64),
    clip={
        "embed_dim": 128,
        "quick_gelu": False,
        "vision_cfg": {"image_size": [128, 64], "layers": 4, "width": 128, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 48, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 3},
    },
    itpg_heads=4,
)

NAMED_CONFIGS: dict[str, ModelConfig] = {c.name: c for c in (_VIT_B_16, _TINY, _SYNTH_SMALL)}


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """The registry's entry point (model.registry): a checkpoint's architecture dict -> config."""
    return ModelConfig.from_dict(d)


def get_config(name_or_config: str | ModelConfig | dict[str, Any], **overrides: Any) -> ModelConfig:
    """Resolve a named config, a JSON file path, a dict or a ModelConfig; apply overrides."""
    if isinstance(name_or_config, ModelConfig):
        cfg = name_or_config
    elif isinstance(name_or_config, dict):
        cfg = ModelConfig.from_dict(name_or_config)
    elif name_or_config in NAMED_CONFIGS:
        cfg = NAMED_CONFIGS[name_or_config]
    elif Path(name_or_config).is_file():
        with open(name_or_config, encoding="utf-8") as f:
            cfg = ModelConfig.from_dict(json.load(f))
    else:
        raise ValueError(
            f"unknown model configuration {name_or_config!r}: use one of {sorted(NAMED_CONFIGS)} or a JSON file path"
        )
    if overrides:
        if "image_size" in overrides and overrides["image_size"] is not None:
            overrides["image_size"] = tuple(overrides["image_size"])
        if "ablate" in overrides and overrides["ablate"] is not None:
            overrides["ablate"] = normalise_ablations(overrides["ablate"])
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    return cfg
