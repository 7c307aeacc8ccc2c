"""ONNX Runtime back-end of the `Embedder` interface (DESIGN.md section 6).

`device` picks the execution provider: "cpu" -> CPUExecutionProvider, "cuda[:N]" -> CUDAExecutionProvider,
"tensorrt[:N]" -> TensorrtExecutionProvider (with CUDA and CPU as fallbacks for any node TensorRT does
not take). fp16 is only offered through the TensorRT provider, with LayerNorm kept in fp32
(`trt_layer_norm_fp32_fallback`); the CUDA provider runs the fp32 graph as exported. precision "int8"
means an INT8 model (`quantize.quantize_int8`), which runs as it is on the CPU provider.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipmc.model.preprocess import PreprocessConfig

from .base import GPU_EXTRA, PRECISIONS, Embedder, EmbedderError
from .engine_cache import batch_profile
from .graph import OUTPUT_NAME, read_onnx_metadata

log = logging.getLogger(__name__)

_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class OnnxRuntimeEmbedder(Embedder):
    """An exported embedding graph (any architecture) in an ONNX Runtime session; the embedding_version
    comes from its metadata."""

    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        batch_sizes: Sequence[int] = (1, 8, 32),
        intra_op_threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EmbedderError(
                "the onnxruntime back-end needs onnxruntime: pip install onnxruntime (CPU) or " + GPU_EXTRA
            ) from exc
        path = Path(onnx_path)
        meta = read_onnx_metadata(path)  # ExportError is an EmbedderError
        if precision not in PRECISIONS:
            raise EmbedderError(f"unknown precision {precision!r}: use one of {PRECISIONS}")
        kind, device_id = _parse_device(device)
        if precision == "fp16" and kind != "tensorrt":
            raise EmbedderError(
                "onnxruntime runs fp16 only through the TensorRT execution provider: use device='tensorrt' "
                "(or the tensorrt back-end), or precision='fp32'"
            )
        if precision == "bf16":
            raise EmbedderError("onnxruntime has no bf16 mode here: bf16 runs in torch (autocast); use fp32 or int8")
        model_precision = meta.get("precision", "fp32")  # "int8" for `clipmc export onnx --int8` models
        if precision == "int8" and model_precision != "int8":
            raise EmbedderError(
                f"{path}: an {model_precision} model; int8 needs the quantised export (clipmc export onnx --int8, "
                "or create_embedder(..., precision='int8') which quantises into the cache)"
            )
        if model_precision != "fp32" and precision not in ("fp32", model_precision):
            raise EmbedderError(f"{path}: an {model_precision} model runs as it is: use precision='fp32'")
        super().__init__(
            embedding_dim=meta["embedding_dim"],
            embedding_version=meta["embedding_version"],
            image_size=meta["image_size"],
            batch_sizes=batch_sizes,
            device=device,
            precision=precision if model_precision == "fp32" else model_precision,
            preprocessing=PreprocessConfig.from_dict(meta["preprocessing"]),
            inputs=meta["input_names"],
            architecture_config=meta["architecture_config"],
        )
        self.onnx_path = path
        self.metadata = meta
        available = ort.get_available_providers()
        wanted = _PROVIDERS[kind]
        if wanted not in available:
            raise EmbedderError(
                f"onnxruntime execution provider {wanted} (device {device!r}) is not available in this "
                f"installation (available: {', '.join(available)}); install onnxruntime-gpu: {GPU_EXTRA}"
            )
        providers = self._providers(kind, device_id, precision, cache_dir or path.parent / "ort_trt_cache")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        options.log_severity_level = 3  # warnings about unused initializers etc. are not the user's concern
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
            raise EmbedderError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from exc
        names = tuple(i.name for i in self.session.get_inputs())
        if sorted(names) != sorted(self.inputs) or self.session.get_outputs()[0].name != OUTPUT_NAME:
            raise EmbedderError(f"{path}: expected inputs {self.inputs} and output {OUTPUT_NAME!r}, got {names}")
        active = self.session.get_providers()
        if active[0] != wanted:
            raise EmbedderError(f"{path}: ONNX Runtime fell back to {active} instead of {wanted}")
        self.providers = active
        log.info("onnxruntime session on %s (%s)", active[0], path.name)

    def _providers(self, kind: str, device_id: int, precision: str, cache_dir: str | os.PathLike) -> list[Any]:
        if kind == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": device_id})
        if kind == "cuda":
            return [cuda, "CPUExecutionProvider"]
        h, w = self.image_size
        lo, mid, hi = batch_profile(self.batch_sizes)  # the same profile as the tensorrt back-end's engines

        def shapes(n: int) -> str:
            return f"image:{n}x3x{h}x{w}," + ",".join(f"{name}:{n}" for name in self.inputs[1:])

        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        trt_options = {
            "device_id": device_id,
            "trt_fp16_enable": precision == "fp16",
            "trt_layer_norm_fp32_fallback": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache_dir),
            "trt_profile_min_shapes": shapes(lo),
            "trt_profile_opt_shapes": shapes(mid),
            "trt_profile_max_shapes": shapes(hi),
        }
        return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]

    def _run(self, images: np.ndarray, modality: np.ndarray, camera: np.ndarray | None) -> np.ndarray:
        feeds = {"image": images, "modality": modality}
        if camera is not None:
            feeds["camera"] = camera
        return self.session.run([OUTPUT_NAME], feeds)[0]

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


def _parse_device(device: str) -> tuple[str, int]:
    """'cpu' | 'cuda[:N]' | 'tensorrt[:N]' -> (provider kind, device id)."""
    kind, _, index = str(device).strip().lower().partition(":")
    if kind not in _PROVIDERS or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise EmbedderError(
            f"unknown onnxruntime device {device!r}: use 'cpu', 'cuda[:N]' or 'tensorrt[:N]' (TensorRT provider)"
        )
    return kind, int(index or 0)
