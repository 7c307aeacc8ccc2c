"""CSDN's named architectures and embedding contract (torch-free: read by the registry and checkpoints).

`csdn-rn50` is the published network: open_clip's `RN50` (openai weights when given), layer4 at stride
1 so that 288 x 144 gives an 18 x 9 map of 2048 channels, the attention pool's position embedding
resized from 7 x 7 to that grid once at load. `csdn-tiny` is the same code with small ResNet and text
widths, for tests on 2 CPU cores.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..preprocess import NORMALIZATIONS, PreprocessConfig

SII_MODES = ("paper", "code")
# The revision of CSDN.embed (and everything it calls); bump on any change that alters the vectors
# given weights produce. Part of every CSDN embedding_version.
INFERENCE_REVISION = 1


@dataclass(frozen=True)
class CSDNConfig:
    """Architecture of one CSDN network (everything needed to rebuild it without weights).

    sii: "paper" gives the fusion's softmax a real choice (the visible query attends over the infrared
    AND the visible key of the same identity); "code" reproduces the published code, whose softmax runs
    over the single infrared key and is therefore always 1 (the fusion reduces to a gated MLP of the
    infrared feature plus the visible residual).
    """

    FAMILY: ClassVar[str] = "csdn"  # its entry in model.registry

    name: str
    clip: dict[str, Any]  # open_clip CLIP config with a ModifiedResNet image tower (vision layers a list)
    open_clip_name: str | None = None  # open_clip's name, for pretrained tags such as "openai"
    image_size: tuple[int, int] = (288, 144)
    num_classes: int = 0  # training identities (classifiers, prompt learners); 0 for an inference-only model
    n_id_tokens: int = 4  # identity-specific learnable tokens per prompt ("A photo of a X X X X person.")
    gem_p: float = 3.0
    sii: str = "paper"
    sii_dropout: float = 0.1
    normalization: str = "imagenet"  # CSDN's code normalises with ImageNet mean/std
    flip: bool = False  # average with the flipped crop inside the inference graph
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sii not in SII_MODES:
            raise ValueError(f"sii must be one of {SII_MODES}, got {self.sii!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {self.normalization!r}")
        if not isinstance(self.clip.get("vision_cfg", {}).get("layers"), (list, tuple)):
            raise ValueError("CSDN needs a ModifiedResNet image tower: clip.vision_cfg.layers must be a list")
        if self.image_size[0] % 16 or self.image_size[1] % 16:
            raise ValueError(f"image_size {self.image_size} must be multiples of 16 (stride-16 feature map)")

    @property
    def embed_dim(self) -> int:
        """Width of the attention-pool projection and the text features (1024 for RN50)."""
        return int(self.clip["embed_dim"])

    @property
    def feature_dim(self) -> int:
        """Channels of the last ResNet stage (2048 for RN50): width * 32."""
        return int(self.clip["vision_cfg"].get("width", 64)) * 32

    @property
    def token_width(self) -> int:
        return int(self.clip["text_cfg"]["width"])

    @property
    def grid(self) -> tuple[int, int]:
        """Feature map size with layer4 at stride 1: the input divided by 16 (18 x 9 at 288 x 144)."""
        return self.image_size[0] // 16, self.image_size[1] // 16

    @property
    def embedding_dim(self) -> int:
        """cat[l2(BN(GeM)), l2(attnpool)]: 2048 + 1024 = 3072 for RN50."""
        return self.feature_dim + self.embed_dim

    def version_stem(self) -> str:
        """The architecture part of the embedding_version: "csdn-rn50.r1" (SII "code" and flip say so)."""
        options = ("-siicode" if self.sii == "code" else "") + ("-flip" if self.flip else "")
        return f"{self.name}{options}.r{INFERENCE_REVISION}"

    def preprocessing(self) -> PreprocessConfig:
        """The embedding contract's preprocessing: input size and the recorded normalisation."""
        return PreprocessConfig.named(self.image_size[0], self.image_size[1], self.normalization)

    def open_clip_cfg(self) -> dict[str, Any]:
        """The open_clip config, built at the pretrained 224 grid (the pool is resized after loading)."""
        cfg = copy.deepcopy(self.clip)
        cfg["vision_cfg"]["image_size"] = 224
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CSDNConfig:
        d = dict(d)
        d["image_size"] = tuple(d.get("image_size", (288, 144)))
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown CSDN config keys: {sorted(unknown)}")
        return cls(**d)


_RN50 = CSDNConfig(
    name="csdn-rn50",
    open_clip_name="RN50",
    clip={
        "embed_dim": 1024,
        "quick_gelu": True,  # the openai weights were trained with QuickGELU
        "vision_cfg": {"image_size": 224, "layers": [3, 4, 6, 3], "width": 64, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
    },
)

# Same code, small widths: 8 * 32 = 256 ResNet channels, a 32-d projection, a 2-layer text tower.
_TINY = CSDNConfig(
    name="csdn-tiny",
    open_clip_name=None,
    image_size=(128, 64),
    clip={
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
)

NAMED_CONFIGS: dict[str, CSDNConfig] = {c.name: c for c in (_RN50, _TINY)}


def config_from_dict(d: dict[str, Any]) -> CSDNConfig:
    """The registry's entry point (model.registry): a checkpoint's architecture dict -> config."""
    return CSDNConfig.from_dict(d)
