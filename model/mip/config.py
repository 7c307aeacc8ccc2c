"""MIP's named architectures and embedding contract (torch-free: read by the registry and checkpoints).

`mip-vit-b-16` is the published network: a TransReID ViT-B/16 (timm's `vit_base_patch16_224` ImageNet
weights), 256 x 128 input, overlapping 16 x 16 patches at stride 12 (a 21 x 10 grid, the position
embedding resized from 14 x 14 once at load), the SIE camera embedding (x 3.0), JPM (shift 5, 2
groups, 4 local branches), modality-aware deep prompts and the instance-aware prompt generator.
`mip-tiny` is the same code with small widths, for tests on 2 CPU cores.

mode "paper" runs what the paper describes: learned seed tokens for the prompt generator and every
backbone block before the JPM branches. mode "code" reproduces the released code: the seed tokens are
zeros created inside forward (never learned) and the second-to-last block is never run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ..cameras import CameraMap
from ..preprocess import NORMALIZATIONS, PreprocessConfig

MIP_MODES = ("paper", "code")
# The revision of MIP.embed (and everything it calls); bump on any change that alters the vectors.
INFERENCE_REVISION = 1


@dataclass(frozen=True)
class MIPConfig:
    """Architecture of one MIP network (everything needed to rebuild it without weights)."""

    FAMILY: ClassVar[str] = "mip"  # its entry in model.registry

    name: str
    timm_name: str | None = "vit_base_patch16_224"  # timm's model name, for its pretrained weights
    timm_tag: str = "orig_in21k_ft_in1k"  # the original JAX weights (TransReID's jx_vit_base_p16_224)
    image_size: tuple[int, int] = (256, 128)
    patch_size: int = 16
    stride: int = 12  # overlapping patches: (256 - 16) // 12 + 1 = 21 rows, (128 - 16) // 12 + 1 = 10 columns
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    cameras: tuple[str, ...] = ()  # camera names seen in training; index = position
    unknown_camera: bool = True  # a learned row for crops without a (known) camera, index len(cameras)
    sie_coef: float = 3.0
    modality_tokens: int = 16  # modality-aware prompt tokens per layer
    instance_tokens: int = 16  # instance-aware prompt tokens per layer (from the generator)
    prompt_dropout: float = 0.1
    shift: int = 5  # JPM shift
    groups: int = 2  # JPM shuffle groups
    locals: int = 4  # JPM local branches
    num_classes: int = 0  # training identities (classifiers); 0 for an inference-only model
    mode: str = "paper"
    normalization: str = "half"  # MIP normalises with mean 0.5, std 0.5 (as timm's ViT weights)
    # The pretrained ViT's own layout: its input size (position-embedding grid) and whether it is a CLIP
    # image tower (LayerNorm before the blocks, no patch bias, LayerNorm eps 1e-5), as `mip-synth-small`.
    pretrained_size: tuple[int, int] = (224, 224)
    pre_norm: bool = False
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.mode not in MIP_MODES:
            raise ValueError(f"mode must be one of {MIP_MODES}, got {self.mode!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {self.normalization!r}")
        if min(self.image_size) < self.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than a {self.patch_size}-pixel patch")
        if self.depth < 3:
            raise ValueError("MIP needs depth >= 3 (prompted blocks, the released code's skipped block, JPM)")
        if self.num_patches % self.groups:
            raise ValueError(f"{self.num_patches} patches do not split into {self.groups} JPM groups")
        CameraMap(self.cameras, self.unknown_camera)  # validates the names

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns): 21 x 10 at 256 x 128, stride 12."""
        h, w = self.image_size
        return (h - self.patch_size) // self.stride + 1, (w - self.patch_size) // self.stride + 1

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def prompt_layers(self) -> int:
        """Backbone blocks that take prompts: all but the last, whose copies are the JPM branches (11)."""
        return self.depth - 1

    @property
    def camera_map(self) -> CameraMap:
        return CameraMap(self.cameras, self.unknown_camera)

    @property
    def embedding_dim(self) -> int:
        """cat[global, locals / locals]: (1 + 4) x 768 = 3840 for ViT-B."""
        return (1 + self.locals) * self.width

    def version_stem(self) -> str:
        """The architecture part of the embedding_version: "mip-vit-b-16.r1" ("-code" for mode code)."""
        return f"{self.name}{'-code' if self.mode == 'code' else ''}.r{INFERENCE_REVISION}"

    def preprocessing(self) -> PreprocessConfig:
        return PreprocessConfig.named(self.image_size[0], self.image_size[1], self.normalization)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["pretrained_size"] = list(self.pretrained_size)
        d["cameras"] = list(self.cameras)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MIPConfig:
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown MIP config keys: {sorted(unknown)}")
        d["image_size"] = tuple(d.get("image_size", (256, 128)))
        d["pretrained_size"] = tuple(d.get("pretrained_size", (224, 224)))
        d["cameras"] = tuple(str(c) for c in d.get("cameras", ()))
        return cls(**d)


_VIT_B16 = MIPConfig(name="mip-vit-b-16")

# Same code, small widths: a 3-block, 32-wide ViT at 76 x 40 (stride 12: a 6 x 3 grid of 16 x 16 patches).
_TINY = MIPConfig(
    name="mip-tiny",
    timm_name=None,
    image_size=(76, 40),
    width=32,
    depth=3,
    heads=2,
    drop_path=0.0,
    modality_tokens=4,
    instance_tokens=4,
)


def config_for_clip_tower(
    name: str, vision_cfg: dict[str, Any], quick_gelu: bool = False, **overrides: Any
) -> MIPConfig:
    """MIP on the ViT image tower of an open_clip CLIP (its open_clip ``vision_cfg``): the tower's widths,
    input size (as the pretrained size and MIP's input), pre-norm, LayerNorm eps 1e-5 and CLIP's
    normalisation; 8 + 8 prompt tokens per layer. The weights load from the CLIP's file (`network.build`).

    Args:
        name: the config's name.
        vision_cfg: open_clip's vision config (``image_size``, ``layers``, ``width``, ``head_width``,
            ``patch_size``; ``mlp_ratio`` optional).
        quick_gelu: the CLIP's activation (open_clip's ``quick_gelu``): refused, since timm's ViT here uses
            GELU and the tower would load without error yet compute something else.
        overrides: other MIPConfig fields.
    """
    if quick_gelu:
        raise ValueError(f"{name}: the CLIP's image tower uses QuickGELU; MIP's timm ViT uses GELU, so its weights "
                         "would load but compute something else")  # fmt: skip
    size = vision_cfg["image_size"]
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    width = int(vision_cfg["width"])
    fields: dict[str, Any] = dict(
        name=name, timm_name=None, image_size=size, pretrained_size=size, patch_size=int(vision_cfg["patch_size"]),
        width=width, depth=int(vision_cfg["layers"]), heads=width // int(vision_cfg.get("head_width", 64)),
        mlp_ratio=float(vision_cfg.get("mlp_ratio", 4.0)), modality_tokens=8, instance_tokens=8,
        normalization="clip", pre_norm=True, norm_eps=1e-5,
    )  # fmt: skip
    return MIPConfig(**{**fields, **overrides})


# The same code on the image tower of the synthetic CLIP (`clipmc pretrain-clip --arch synth-small`, DESIGN.md
# section 13): its 4-block, 128-wide ViT at 128 x 64, loaded from that open_clip weights file through timm's
# own CLIP converter, as mip-vit-b-16 starts from ImageNet weights. Stride 12 gives a 10 x 5 grid.
# (model.config's synth-small: vision_cfg image_size [128, 64], 4 layers, width 128, head_width 32, patch 16).
_SYNTH_SMALL = config_for_clip_tower(
    "mip-synth-small", {"image_size": [128, 64], "layers": 4, "width": 128, "head_width": 32, "patch_size": 16}
)

NAMED_CONFIGS: dict[str, MIPConfig] = {c.name: c for c in (_VIT_B16, _TINY, _SYNTH_SMALL)}


def config_from_dict(d: dict[str, Any]) -> MIPConfig:
    """The registry's entry point (model.registry): a checkpoint's architecture dict -> config."""
    return MIPConfig.from_dict(d)
