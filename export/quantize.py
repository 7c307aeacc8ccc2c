"""INT8 ONNX model for CPU-only hosts: ONNX Runtime dynamic quantisation (weights int8, activations
quantised on the fly per batch), with no calibration data needed.

Only MatMul/Gemm weights are quantised (per output channel): they hold almost all of the ViT's
arithmetic, while the single patch-embedding Conv is cheap and its ConvInteger kernel is slow on CPU.
The model keeps the export's metadata, embedding_version included (same weights, same preprocessing),
and adds `precision = int8`; its vectors deviate more from torch than fp16 ones do, so `clipmc verify`
holds it to its own, lower cosine gate and reports the measured parity.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from clipmc.contract import atomic_write

from .base import ExportError
from .graph import read_onnx_metadata

log = logging.getLogger(__name__)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the dynamically quantised copy of the exported model `src` to `dst` (atomically)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    meta = read_onnx_metadata(src)  # refuses files that are not CLIP-MC exports
    if meta.get("precision", "fp32") != "fp32":
        raise ExportError(f"{src}: already {meta['precision']}; quantise the fp32 export")
    source = onnx.load(str(src))
    props = {p.key: p.value for p in source.metadata_props}
    # The quantiser rewrites Gemm(transB) as MatMul on a transposed weight but keeps the weight's old
    # value_info, and then fails its own shape inference ("differ in dimension 0"); value_info is
    # optional (it is re-inferred), so hand it a graph without.
    del source.graph.value_info[:]
    log.info("quantising %s to INT8 (dynamic, per-channel MatMul/Gemm weights)", src.name)

    def write(tmp: Path) -> None:
        quantize_dynamic(
            source,
            str(tmp),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        onnx.helper.set_model_props(
            proto,
            {
                **props,
                "precision": "int8",
                "quantization": "onnxruntime quantize_dynamic: QInt8 per-channel weights of MatMul/Gemm",
            },
        )
        onnx.save(proto, str(tmp))

    atomic_write(dst, write)
    log.info("wrote %s (%.1f MB, from %.1f MB)", dst, dst.stat().st_size / 1e6, src.stat().st_size / 1e6)
    return dst


def quantize_int8_cached(src: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The INT8 copy of the fp32 export `src`, quantised once into `cache_dir` (under a file lock).

    Named by the export's embedding_version (the same weights and preprocessing), so a restart, or a
    second worker starting at the same time, reuses it. An INT8 `src` is returned as it is."""
    from filelock import FileLock

    from .base import default_cache_dir

    src = Path(src)
    meta = read_onnx_metadata(src)
    if meta.get("precision", "fp32") == "int8":
        return src
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{meta['embedding_version']}.int8.onnx"
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            try:
                cached = read_onnx_metadata(target)
                if cached.get("precision") == "int8" and cached["embedding_version"] == meta["embedding_version"]:
                    log.info("reusing quantised %s", target)
                    return target
            except ExportError as exc:
                log.warning("re-quantising: %s", exc)
        return quantize_int8(src, target)
