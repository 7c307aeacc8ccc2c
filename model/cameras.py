"""The camera as an inference input (DESIGN.md sections 11 and 12): camera name -> embedding index.

An architecture whose inference inputs include "camera" (MIP's SIE camera embedding) records in its
config the camera names it was trained on (`cameras`, index = position) and whether it has a learned
"unknown camera" row (`unknown_camera`, index = len(cameras)). This module is torch-free so that the
ONNX Runtime and TensorRT embedders and the service resolve names from the checkpoint's or the ONNX
file's architecture config without torch.

The documented rules: a known name maps to its index; a crop without a camera (None) and a name the
checkpoint does not know both map to the unknown index when the checkpoint has one; without an unknown
index either is a `CameraError` (the service answers 422).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class CameraError(ValueError):
    """A camera the checkpoint cannot embed (unknown name or missing camera, and no unknown index)."""


@dataclass(frozen=True)
class CameraMap:
    """The checkpoint's camera names (index = position) and its optional learned unknown index."""

    names: tuple[str, ...]
    unknown: bool = True

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"camera names must be unique, got {list(self.names)}")
        if not self.names and not self.unknown:
            raise ValueError("a camera map needs at least one camera name or the unknown index")

    @classmethod
    def from_architecture(cls, config: dict[str, Any]) -> CameraMap:
        """From an architecture config dict (a checkpoint's or an ONNX file's `architecture_config`)."""
        return cls(tuple(str(c) for c in config.get("cameras", ())), bool(config.get("unknown_camera", True)))

    @property
    def size(self) -> int:
        """Rows of the camera embedding: the named cameras plus the unknown row where there is one."""
        return len(self.names) + int(self.unknown)

    @property
    def unknown_index(self) -> int | None:
        return len(self.names) if self.unknown else None

    def index(self, camera: str | int | None) -> int:
        """The embedding index of one camera name (ints are names too: camera 3 is "3")."""
        if (camera is not None and not isinstance(camera, (str, int, np.integer))) or isinstance(camera, bool):
            raise CameraError(f"a camera is a name (str or int), got {type(camera).__name__}")
        name = None if camera is None else str(camera)
        if name is not None and name in self.names:
            return self.names.index(name)
        if self.unknown:
            return len(self.names)
        if name is None:
            raise CameraError(
                f"this model needs the crop's camera (one of {list(self.names)}): it has no unknown index"
            )
        raise CameraError(f"unknown camera {name!r}: this model knows {list(self.names)} and has no unknown index")

    def indices(self, cameras: str | int | Sequence[str | int | None] | None, n: int) -> np.ndarray:
        """One camera for all n crops (a name or None) or one per crop -> int64 [n] of indices."""
        if cameras is None or isinstance(cameras, (str, int, np.integer)):
            return np.full(n, self.index(cameras), np.int64)
        values = list(cameras)
        if len(values) != n:
            raise CameraError(f"cameras must be one name or {n} names (one per crop), got {len(values)}")
        return np.array([self.index(c) for c in values], np.int64)
