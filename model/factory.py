"""Build CLIP-MC from a named configuration, with open_clip's weights (DESIGN.md section 3).

`build_model` builds any registered architecture (model.registry); `build` is CLIP-MC's own builder.

The open_clip CLIP model is built at our image size (288 x 144, an 18 x 9 patch grid) and pretrained
weights are loaded with open_clip's own loader, which interpolates the position embedding once, at
load time.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip import pretrained as oc_pretrained

from .clipmc import CLIPMC, PROMPT_LEN, PROMPT_TEMPLATE
from .config import ModelConfig, get_config, normalise_ablations

log = logging.getLogger(__name__)


class PretrainedWeightsError(RuntimeError):
    """Pretrained CLIP weights could not be found or fetched."""


def prompt_token_ids() -> torch.Tensor:
    """Token ids of the prompt template (the BPE vocabulary ships with open_clip: no download)."""
    ids = open_clip.tokenize([PROMPT_TEMPLATE])[0, :PROMPT_LEN]
    return ids


def build_clip(config: ModelConfig) -> torch.nn.Module:
    """A randomly initialised open_clip CLIP model of the config, at the config's image size."""
    return open_clip.CLIP(**config.open_clip_cfg())


def resolve_pretrained(config: ModelConfig, pretrained: str, cache_dir: str | None = None) -> str:
    """Map `pretrained` (an open_clip tag such as "openai", or a local file) to a local file path."""
    if os.path.isfile(pretrained):
        return pretrained
    if config.open_clip_name is None:
        raise PretrainedWeightsError(
            f"model {config.name!r} has no published weights; pretrained={pretrained!r} must be a local "
            "open_clip checkpoint file"
        )
    tag_cfg = oc_pretrained.get_pretrained_cfg(config.open_clip_name, pretrained)
    if not tag_cfg:
        raise PretrainedWeightsError(
            f"pretrained={pretrained!r} is neither a file nor an open_clip tag for {config.open_clip_name} "
            f"(tags: {oc_pretrained.list_pretrained_tags_by_model(config.open_clip_name)})"
        )
    advice = (
        f"With no network, download them once on a connected machine (open_clip caches them, here under "
        f"{cache_dir or 'the Hugging Face cache'}) or point at local weights: --weights PATH, a trained "
        "CLIP-MC checkpoint folder or an open_clip ViT-B-16 file such as open_clip_model.safetensors "
        "(environment: CLIPMC_WEIGHTS)"
    )
    cached = _cached_hub_file(tag_cfg, cache_dir)
    if cached:
        return cached
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or not _reachable("huggingface.co"):
        # Fail in a second rather than after huggingface_hub's retries.
        raise PretrainedWeightsError(
            f"the {pretrained!r} {config.open_clip_name} weights are not cached and the Hugging Face Hub is not "
            f"reachable. {advice}"
        )
    try:
        path = oc_pretrained.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as exc:  # network errors surface as many types from huggingface_hub/urllib
        raise PretrainedWeightsError(
            f"could not obtain the {pretrained!r} {config.open_clip_name} weights ({type(exc).__name__}: "
            f"{exc}). {advice}"
        ) from exc
    if not path:
        raise PretrainedWeightsError(f"open_clip returned no file for {config.open_clip_name}/{pretrained}")
    return path


def _cached_hub_file(tag_cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """The weights file open_clip would download, if it is already in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    hub = tag_cfg.get("hf_hub", "")
    if not hub:
        return None
    repo_id, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    for name in [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def build_model(
    name_or_config: str | ModelConfig | dict[str, Any] = "vit-b-16",
    pretrained: str | None = None,
    *,
    cache_dir: str | None = None,
    image_size: tuple[int, int] | None = None,
    ablate: Sequence[str] | None = None,
) -> Any:
    """Build any registered architecture (model.registry) by name, config, dict or JSON file.

    pretrained: None (random init), an open_clip tag ("openai"), or a local open_clip checkpoint file.
    image_size: override (H, W); default 288 x 144.
    ablate: modules to remove ("mc", "itpg", "mcl", "text"; see config.ABLATIONS); default none.
    """
    from .registry import build_model as build_registered

    overrides = {"ablate": normalise_ablations(ablate)} if ablate is not None else {}
    return build_registered(name_or_config, pretrained, cache_dir=cache_dir, image_size=image_size, **overrides)


def load_open_clip_weights(clip: torch.nn.Module, path: str, architecture: str) -> None:
    """Load an open_clip weights file strictly, through open_clip's own loader (which also resizes the
    position embedding to our image size); a file of another architecture is one clear error.

    The error is cut short: a mismatch lists every key of the state dict (thousands of characters),
    and the user needs the first few to see which file they gave.
    """
    log.info("loading CLIP weights from %s", path)
    try:
        open_clip.load_checkpoint(clip, path, strict=True)
    except (RuntimeError, KeyError, ValueError, OSError, AssertionError) as exc:
        detail = " ".join(str(exc).split())
        if len(detail) > 300:
            detail = detail[:300] + f"... ({len(detail)} characters)"
        raise PretrainedWeightsError(
            f"{path}: not an open_clip checkpoint of architecture {architecture!r}: {detail}"
        ) from exc


def build(config: ModelConfig, pretrained: str | None = None, *, cache_dir: str | None = None) -> CLIPMC:
    """CLIP-MC's builder (its model.registry entry): open_clip CLIP at our image size, then the heads."""
    config = get_config(config)
    path = resolve_pretrained(config, pretrained, cache_dir) if pretrained else None  # fail before building
    clip = build_clip(config)
    if path:
        load_open_clip_weights(clip, path, config.name)
    model = CLIPMC(clip, config, prompt_token_ids())
    model.eval()
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def default_cache_dir() -> str:
    return str(Path(os.environ.get("CLIPMC_CACHE", Path.home() / ".cache" / "clipmc")))
