"""The architecture registry (DESIGN.md section 12): every method is a named architecture.

An architecture (a *family*: "clipmc", "csdn", ...) is described by one `Architecture` record that
names the modules implementing it; the rest of the system (checkpoints, evaluation, export, the
embedders, the service, `clipmc train`) is written once against this interface and never branches on
the method:

    config module   NAMED_CONFIGS {name: config}, config_from_dict(d); torch-free, so that resolving a
                    name or reading a checkpoint's contract never imports torch
    model module    build(config, pretrained=None, cache_dir=None) -> model
    graph           the nn.Module that export traces; its forward takes `inputs` in order
    recipe module   train(...) : the method's training recipe (stages, losses, optimiser groups,
                    sampler, augmentation)

Every config has `name`, `image_size`, `embedding_dim`, `to_dict()`, `preprocessing()` (the
embedding contract: input size and normalisation) and `version_stem()` (architecture and inference
revision, the first part of the embedding_version); every model has `config`, `embedding_dim`,
`embedding_version` and `embed(*inputs)` returning L2-normalised float vectors. The inference inputs
are "image" and "modality"; an architecture that needs the camera lists "camera" too (int64 [N]).

Implementation modules are imported on first use, so `clipmc.model.registry` itself stays light.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import import_module
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from .preprocess import PreprocessConfig

DEFAULT_FAMILY = "clipmc"  # checkpoints written before the registry carry no family: they are CLIP-MC
KNOWN_INPUTS = ("image", "modality", "camera")


class ArchitectureConfig(Protocol):
    """What every architecture's config offers (see the module docstring)."""

    name: str
    image_size: tuple[int, int]

    @property
    def embedding_dim(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...

    def preprocessing(self) -> PreprocessConfig: ...

    def version_stem(self) -> str: ...


class EmbeddingModel(Protocol):
    """What every architecture's network offers to evaluation, export and the embedders."""

    config: Any

    @property
    def embedding_dim(self) -> int: ...

    @property
    def embedding_version(self) -> str: ...

    def embed(self, *inputs: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Architecture:
    """One method: where its config, builder, inference graph and training recipe live."""

    family: str
    summary: str
    config_module: str
    model_module: str
    graph: str  # "module:ClassName" of the inference graph
    recipe_module: str
    inputs: tuple[str, ...] = ("image", "modality")

    def __post_init__(self) -> None:
        unknown = [i for i in self.inputs if i not in KNOWN_INPUTS]
        if unknown or self.inputs[:2] != ("image", "modality"):
            raise ValueError(f"{self.family}: inputs must start with image, modality and use {KNOWN_INPUTS}")

    def _module(self, name: str) -> ModuleType:
        return import_module(name, __package__)

    @property
    def named_configs(self) -> dict[str, Any]:
        return dict(self._module(self.config_module).NAMED_CONFIGS)

    def config_from_dict(self, d: dict[str, Any]) -> Any:
        return self._module(self.config_module).config_from_dict(d)

    def build(self, config: Any, pretrained: str | None = None, *, cache_dir: str | None = None) -> Any:
        return self._module(self.model_module).build(config, pretrained, cache_dir=cache_dir)

    def inference_graph(self, model: Any) -> torch.nn.Module:
        """The module export traces: forward(*inputs) -> embedding."""
        module, cls = self.graph.split(":")
        return getattr(self._module(module), cls)(model)

    @property
    def recipe(self) -> ModuleType:
        """The training recipe module; its `train` function is the entry point."""
        return self._module(self.recipe_module)


ARCHITECTURES: MappingProxyType[str, Architecture] = MappingProxyType(
    {
        "clipmc": Architecture(
            family="clipmc",
            summary="CLIP-MC: ViT CLIP image encoder, ITPG, MCL, frozen text encoder, modality compensation",
            config_module=".config",
            model_module=".factory",
            graph=".clipmc:EmbeddingGraph",
            recipe_module=".trainer",
        ),
        "csdn": Architecture(
            family="csdn",
            summary="CSDN: CLIP RN50 with modality-specific stems, bimodal prompt learners, SII fusion",
            config_module=".csdn.config",
            model_module=".csdn.network",
            graph=".csdn.network:EmbeddingGraph",
            recipe_module=".csdn.recipe",
        ),
        "mip": Architecture(
            family="mip",
            summary="MIP: TransReID ViT with SIE camera embedding, JPM, modality- and instance-aware prompts",
            config_module=".mip.config",
            model_module=".mip.network",
            graph=".mip.network:EmbeddingGraph",
            recipe_module=".mip.recipe",
            inputs=("image", "modality", "camera"),
        ),
    }
)


def get_architecture(family: str) -> Architecture:
    """The architecture of a family name; a clear error for an unknown one."""
    try:
        return ARCHITECTURES[family]
    except KeyError:
        raise ValueError(f"unknown architecture family {family!r}: use one of {sorted(ARCHITECTURES)}") from None


def all_config_names() -> dict[str, str]:
    """{config name: family} over every registered architecture."""
    names: dict[str, str] = {}
    for arch in ARCHITECTURES.values():
        for name in arch.named_configs:
            if name in names:
                raise RuntimeError(f"config name {name!r} is registered by both {names[name]} and {arch.family}")
            names[name] = arch.family
    return names


def family_of_name(name: str | None) -> str:
    """The family of a registered config name; None, a JSON file path or an unknown name give the
    default family (whose recipe then resolves the name, or reports it)."""
    if name is None:
        return DEFAULT_FAMILY
    if Path(name).is_file():
        try:
            data = json.loads(Path(name).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return DEFAULT_FAMILY
        return str(data.get("family", DEFAULT_FAMILY)) if isinstance(data, dict) else DEFAULT_FAMILY
    return all_config_names().get(name, DEFAULT_FAMILY)


def family_of(config: Any) -> str:
    """The family a config instance belongs to (its class's FAMILY attribute)."""
    family = getattr(type(config), "FAMILY", None)
    if family not in ARCHITECTURES:
        raise ValueError(f"{type(config).__name__} is not the config of a registered architecture")
    return str(family)


def architecture_of(config_or_model: Any) -> Architecture:
    """The architecture of a config or of a model (through its `config`)."""
    config = getattr(config_or_model, "config", config_or_model)
    return ARCHITECTURES[family_of(config)]


def resolve_config(
    name_or_config: str | dict[str, Any] | Any, *, family: str | None = None, **overrides: Any
) -> tuple[Architecture, Any]:
    """(architecture, config) for a registered name, a config instance, a dict (with `family` given or
    as a key, CLIP-MC by default) or a JSON file of such a dict; `overrides` (None values ignored)
    replace config fields, e.g. image_size=(256, 128)."""
    if isinstance(name_or_config, str):
        names = all_config_names()
        if name_or_config in names:
            arch = ARCHITECTURES[names[name_or_config]]
            config = arch.named_configs[name_or_config]
        elif Path(name_or_config).is_file():
            try:
                data = json.loads(Path(name_or_config).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{name_or_config}: not a JSON model configuration ({exc})") from exc
            return resolve_config(data, family=family, **overrides)
        else:
            raise ValueError(
                f"unknown model configuration {name_or_config!r}: use one of {sorted(names)} or a JSON file path"
            )
    elif isinstance(name_or_config, dict):
        data = dict(name_or_config)
        arch = get_architecture(str(data.pop("family", None) or family or DEFAULT_FAMILY))
        config = arch.config_from_dict(data)
    else:
        arch = architecture_of(name_or_config)
        config = name_or_config
    if family is not None and arch.family != family:
        raise ValueError(f"configuration {config.name!r} is a {arch.family} architecture, not {family}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "image_size" in changes:
        changes["image_size"] = tuple(changes["image_size"])
    try:
        return arch, (replace(config, **changes) if changes else config)
    except TypeError as exc:  # an option another architecture has (e.g. CLIP-MC's ablate for CSDN)
        raise ValueError(f"{arch.family} configuration {config.name!r} does not take {sorted(changes)}: {exc}") from exc


def build_model(
    name_or_config: str | dict[str, Any] | Any,
    pretrained: str | None = None,
    *,
    cache_dir: str | None = None,
    image_size: tuple[int, int] | None = None,
    **overrides: Any,
) -> Any:
    """Build any registered architecture (in eval mode) from a name, config, dict or JSON file."""
    arch, config = resolve_config(name_or_config, image_size=image_size, **overrides)
    return arch.build(config, pretrained, cache_dir=cache_dir)
