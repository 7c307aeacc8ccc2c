"""The ONNX graph's interface: input and output names and the metadata every export carries.

Read by the exporter (which writes it), by the ONNX Runtime and TensorRT runtimes and the engine cache
(which read it): kept apart from the exporter so that the runtimes need neither torch nor the exporter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import ExportError

if TYPE_CHECKING:
    import onnx

INPUT_NAMES = ("image", "modality")  # every architecture's first two inputs (camera may follow)
OUTPUT_NAME = "embedding"
METADATA_FORMAT = "clipmc-onnx/1"


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The clipmc metadata of an exported file (any architecture; without loading its weights), decoded."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{p}: ONNX file not found")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / OSError / ValueError for a bad file
        raise ExportError(f"{p}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    props = {prop.key: prop.value for prop in proto.metadata_props}
    if props.get("format") != METADATA_FORMAT or "embedding_version" not in props:
        raise ExportError(f"{p}: not a CLIP-MC export (no {METADATA_FORMAT!r} metadata; run clipmc export onnx)")
    meta: dict[str, Any] = dict(props)
    meta["embedding_dim"] = int(props["embedding_dim"])
    meta["opset"] = int(props["opset"])
    meta["image_size"] = tuple(json.loads(props["image_size"]))
    meta["preprocessing"] = json.loads(props["preprocessing"])
    meta["architecture_config"] = json.loads(props.get("architecture_config", "{}"))
    meta["family"] = props.get("family", "clipmc")  # exports from before the registry are CLIP-MC
    meta["input_names"] = tuple(json.loads(props.get("input_names", json.dumps(list(INPUT_NAMES)))))
    return meta


def onnx_opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
