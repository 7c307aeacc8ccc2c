"""What every training recipe's options share: read from a JSON file with command-line overrides, unknown
keys refused with the list of known ones, the common fields normalised once.

Each recipe (CLIP-MC's `trainer.TrainConfig`, `csdn.recipe.CSDNTrainConfig`, `mip.recipe.MIPTrainConfig`)
is a dataclass that mixes this in and adds its own checks in `from_dict`.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="RecipeOptions")

SELECTIONS = ("val", "last")


class RecipeOptions:
    """Mixin for a recipe's options dataclass."""

    #: what error messages call these options ("CSDN training option", ...)
    KIND = "training"

    @classmethod
    def from_file(cls: type[T], path: str | Path, **overrides: Any) -> T:
        """Options from a JSON file; overrides that are not None win (the command line over the file)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path}: training config not found") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training config is a JSON object of options")
        return cls.from_dict({**data, **{k: v for k, v in overrides.items() if v is not None}}, source=str(path))

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], source: str = "training config") -> T:
        return cls.construct(data, source)

    @classmethod
    def construct(cls: type[T], data: dict[str, Any], source: str) -> T:
        """The dataclass from ``data``: unknown keys refused, ``image_size`` as a tuple, ``selection`` checked."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{source}: unknown {cls.KIND} option(s) {unknown}; known: {sorted(names)}")
        cfg = cls(**data)
        if getattr(cfg, "image_size", None) is not None:
            cfg.image_size = tuple(cfg.image_size)  # type: ignore[attr-defined]
        selection = getattr(cfg, "selection", "val")
        if selection not in SELECTIONS:
            raise ValueError(f"{source}: selection must be one of {list(SELECTIONS)}, got {selection!r}")
        return cfg
