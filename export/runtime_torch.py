"""The reference runtime: the model's own embedding graph in PyTorch, on CPU or CUDA."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import PRECISIONS, Embedder, EmbedderError

if TYPE_CHECKING:
    import torch

    from clipmc.model.registry import EmbeddingModel


class TorchEmbedder(Embedder):
    """The reference runtime: the model's `embed` (any registered architecture) in PyTorch on CPU or CUDA.

    fp16 uses CUDA autocast rather than `.half()`: autocast runs matmuls and convolutions in fp16
    while LayerNorm, softmax and the norms of the final L2 normalisation stay fp32 (autocast's fp32
    op list), which is the precision split DESIGN.md section 4 asks for, with no hand-written casts.
    bf16 is the same autocast with bfloat16, on the CPU too (AVX-512 BF16 / AMX CPUs run it natively).
    `compile=True` wraps the graph in `torch.compile` (mode "reduce-overhead" uses CUDA graphs on GPU).
    """

    backend = "torch"

    def __init__(
        self,
        model: EmbeddingModel,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        batch_sizes: Sequence[int] = (1, 8, 32),
        embedding_version: str | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
    ) -> None:
        import torch

        from clipmc.model.registry import architecture_of

        dev = torch_device(device)
        if precision not in PRECISIONS:
            raise EmbedderError(f"unknown precision {precision!r}: use one of {PRECISIONS}")
        if precision == "fp16" and dev.type != "cuda":
            raise EmbedderError("the torch back-end runs fp16 on CUDA only: use device='cuda' or precision='fp32'")
        if precision == "int8":
            raise EmbedderError("int8 runs in ONNX Runtime (backend onnxruntime or auto), not in torch")
        version = embedding_version or model.embedding_version  # the property hashes the weights: once
        super().__init__(
            embedding_dim=model.embedding_dim,
            embedding_version=version,
            image_size=model.config.image_size,
            batch_sizes=batch_sizes,
            device=str(dev),
            precision=precision,
            preprocessing=model.config.preprocessing(),
            inputs=architecture_of(model).inputs,
            architecture_config=model.config.to_dict(),
        )
        self.model = model.eval().to(dev)
        self._torch_device = dev
        graph: Any = architecture_of(self.model).inference_graph(self.model)
        if compile:
            graph = torch.compile(graph, mode=compile_mode, dynamic=False)
        self._graph = graph
        self.compiled = bool(compile)

    def embed_tensor(self, images: torch.Tensor, modality: torch.Tensor, camera: torch.Tensor | None = None
                     ) -> torch.Tensor:  # fmt: skip
        """On-device variant for callers that already hold torch tensors (the verify command); camera:
        int64 indices for a model with a camera input (the unknown index when None)."""
        import torch

        inputs = (images, modality)
        if "camera" in self.inputs:
            if camera is None:
                camera = torch.from_numpy(self.prepare_camera(None, images.shape[0])).to(images.device)
            inputs = (images, modality, camera)

        with torch.inference_mode():
            if self.precision in ("fp16", "bf16"):
                dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
                with torch.autocast(self._torch_device.type, dtype=dtype):
                    out = self._graph(*inputs)
                # CPU autocast runs the final L2 normalisation in bf16 (its fp32 op list differs from CUDA's),
                # leaving norms ~1e-3 off: renormalise in fp32 so every runtime returns contract vectors.
                out = torch.nn.functional.normalize(out.float(), dim=-1)
            else:
                out = self._graph(*inputs)
        return out.float()

    def _run(self, images: np.ndarray, modality: np.ndarray, camera: np.ndarray | None) -> np.ndarray:
        import torch

        x = torch.from_numpy(images).to(self._torch_device, non_blocking=True)
        m = torch.from_numpy(modality).to(self._torch_device, non_blocking=True)
        c = None if camera is None else torch.from_numpy(camera).to(self._torch_device, non_blocking=True)
        return self.embed_tensor(x, m, c).cpu().numpy()

    def close(self) -> None:
        if self._torch_device.type == "cuda":
            import torch

            self._graph = None
            self.model = None  # type: ignore[assignment]
            torch.cuda.empty_cache()


def torch_device(device: str) -> torch.device:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise EmbedderError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EmbedderError(f"device {device!r} requested but torch sees no CUDA GPU")
    if dev.type not in ("cpu", "cuda"):
        raise EmbedderError(f"unsupported device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
    return dev
