"""`--backend auto` (export/selection.py): the choice for each kind of host, by injected capabilities."""

from __future__ import annotations

import numpy as np
import pytest

from clipmc.export import EmbedderError, create_embedder
from clipmc.export.selection import HostCapabilities, Selection, probe_host, select_runtime

CPU_ORT = ("CPUExecutionProvider",)
GPU_ORT = ("CUDAExecutionProvider", "CPUExecutionProvider")

CPU_HOST = HostCapabilities(tensorrt=False, cuda_devices=0, ort_providers=CPU_ORT)
CPU_HOST_NO_ORT = HostCapabilities(tensorrt=False, cuda_devices=0, ort_providers=())
TRT_HOST = HostCapabilities(tensorrt=True, cuda_devices=1, ort_providers=GPU_ORT)
ORT_GPU_HOST = HostCapabilities(tensorrt=False, cuda_devices=2, ort_providers=GPU_ORT)
BARE_GPU_HOST = HostCapabilities(tensorrt=False, cuda_devices=1, ort_providers=CPU_ORT)
TRT_NO_GPU = HostCapabilities(tensorrt=True, cuda_devices=0, ort_providers=GPU_ORT)  # installed, no driver


def pick(host: HostCapabilities, device: str = "auto", precision: str = "auto", kind: str = "checkpoint") -> tuple:
    s = select_runtime("auto", device, precision, kind, host)
    return s.backend, s.device, s.precision


@pytest.mark.parametrize(
    ("host", "device", "precision", "kind", "expected"),
    [
        # CPU hosts: ONNX Runtime fp32 by default; int8 / bf16 are opt-ins; torch only without onnxruntime
        (CPU_HOST, "auto", "auto", "checkpoint", ("onnxruntime", "cpu", "fp32")),
        (CPU_HOST, "auto", "auto", "zero-shot", ("onnxruntime", "cpu", "fp32")),
        (CPU_HOST, "auto", "auto", "onnx", ("onnxruntime", "cpu", "fp32")),
        (CPU_HOST, "cpu", "int8", "checkpoint", ("onnxruntime", "cpu", "int8")),
        (CPU_HOST, "auto", "bf16", "checkpoint", ("torch", "cpu", "bf16")),
        (CPU_HOST_NO_ORT, "auto", "auto", "checkpoint", ("torch", "cpu", "fp32")),
        (TRT_NO_GPU, "auto", "auto", "checkpoint", ("onnxruntime", "cpu", "fp32")),
        # CUDA hosts: TensorRT fp16 when installed; else ORT's CUDA provider; else torch on CUDA
        (TRT_HOST, "auto", "auto", "checkpoint", ("tensorrt", "cuda", "fp16")),
        (TRT_HOST, "auto", "auto", "onnx", ("tensorrt", "cuda", "fp16")),
        (TRT_HOST, "cuda:0", "fp32", "checkpoint", ("tensorrt", "cuda:0", "fp32")),
        (TRT_HOST, "auto", "auto", "engine", ("tensorrt", "cuda", "fp16")),
        (TRT_HOST, "cpu", "auto", "checkpoint", ("onnxruntime", "cpu", "fp32")),  # asked for the CPU
        (ORT_GPU_HOST, "auto", "auto", "checkpoint", ("onnxruntime", "cuda", "fp32")),
        (ORT_GPU_HOST, "cuda:1", "auto", "onnx", ("onnxruntime", "cuda:1", "fp32")),
        (BARE_GPU_HOST, "auto", "auto", "checkpoint", ("torch", "cuda", "fp16")),
        # a GPU host where nothing can run an ONNX file on the GPU: ONNX Runtime on the CPU
        (BARE_GPU_HOST, "auto", "auto", "onnx", ("onnxruntime", "cpu", "fp32")),
    ],
)
def test_auto_choice_for_each_host(host, device, precision, kind, expected):
    assert pick(host, device, precision, kind) == expected


@pytest.mark.parametrize(
    ("host", "device", "precision", "kind", "problem"),
    [
        (CPU_HOST, "auto", "fp16", "checkpoint", "fp16 runs on a CUDA GPU"),
        (CPU_HOST, "cuda", "auto", "checkpoint", "0 CUDA GPU"),
        (ORT_GPU_HOST, "cuda:2", "auto", "checkpoint", "2 CUDA GPU"),
        (CPU_HOST, "auto", "auto", "engine", "needs TensorRT and a CUDA GPU"),
        (CPU_HOST_NO_ORT, "auto", "int8", "checkpoint", "pip install onnxruntime"),
        (CPU_HOST_NO_ORT, "auto", "auto", "onnx", "pip install onnxruntime"),
        (CPU_HOST, "auto", "bf16", "onnx", "checkpoint or 'openai'"),
        (BARE_GPU_HOST, "cuda", "auto", "onnx", "gpu extra"),
    ],
)
def test_auto_refuses_what_the_host_cannot_run(host, device, precision, kind, problem):
    with pytest.raises(EmbedderError, match=problem):
        pick(host, device, precision, kind)


def test_explicit_choices_are_kept_and_auto_fields_resolved():
    assert select_runtime("torch", "cpu", "fp32", "checkpoint", TRT_HOST) == Selection(
        "torch", "cpu", "fp32", "torch as configured"
    )
    s = select_runtime("tensorrt", "auto", "auto", "checkpoint", TRT_HOST)
    assert (s.backend, s.device, s.precision) == ("tensorrt", "cuda", "fp16")
    s = select_runtime("tensorrt", "auto", "auto", "onnx", CPU_HOST)  # TensorRT's own error will say "no GPU"
    assert (s.backend, s.device, s.precision) == ("tensorrt", "cuda", "fp16")
    s = select_runtime("onnxruntime", "auto", "auto", "onnx", ORT_GPU_HOST)
    assert (s.backend, s.device, s.precision) == ("onnxruntime", "cuda", "fp32")
    s = select_runtime("onnxruntime", "auto", "auto", "onnx", BARE_GPU_HOST)  # no CUDA provider installed
    assert (s.backend, s.device) == ("onnxruntime", "cpu")
    with pytest.raises(EmbedderError, match="unknown embedder backend"):
        select_runtime("tflite", "auto", "auto", "checkpoint", CPU_HOST)
    with pytest.raises(EmbedderError, match="unknown precision"):
        select_runtime("auto", "auto", "int4", "checkpoint", CPU_HOST)


def test_probe_host_reports_this_machine():
    host = probe_host()
    import onnxruntime as ort

    assert host.ort_providers == tuple(ort.get_available_providers()) and host.onnxruntime
    assert host.cuda_devices >= 0
    import importlib.util

    assert host.tensorrt == (importlib.util.find_spec("tensorrt") is not None)


def test_create_embedder_auto_on_a_cpu_host_runs_onnxruntime(tiny_checkpoint, tmp_path):
    """The resolved back-end is what the embedder is, and describe() (/readyz) says so and why."""
    emb = create_embedder("auto", tiny_checkpoint, device="auto", precision="auto", engine_dir=tmp_path, host=CPU_HOST)
    try:
        info = emb.describe()
        assert type(emb).__name__ == "OnnxRuntimeEmbedder"
        assert (info["backend"], info["device"], info["precision"]) == ("onnxruntime", "cpu", "fp32")
        assert info["selection"]["backend"] == "onnxruntime" and info["selection"]["requested"] == "auto/auto/auto"
        assert list(tmp_path.glob("*.onnx")), "the export went to the given cache"
        reference = create_embedder("torch", tiny_checkpoint, batch_sizes=(1, 8, 32))
        x = np.random.default_rng(0).integers(0, 256, (3, *emb.image_size, 3), dtype=np.uint8)
        cos = (emb.embed(x, 1) * reference.embed(x, 1)).sum(axis=1)
        assert cos.min() > 0.999
    finally:
        emb.close()
    torch_emb = create_embedder("auto", tiny_checkpoint, device="auto", precision="auto", host=CPU_HOST_NO_ORT)
    assert torch_emb.describe()["backend"] == "torch" and torch_emb.selection["reason"].startswith("CPU host")


def test_create_embedder_int8_and_bf16_opt_ins(tiny_checkpoint, tmp_path):
    int8 = create_embedder("auto", tiny_checkpoint, device="cpu", precision="int8", engine_dir=tmp_path, host=CPU_HOST)
    assert (int8.backend, int8.precision) == ("onnxruntime", "int8")
    assert int8.onnx_path.name.endswith(".int8.onnx")
    again = create_embedder("onnxruntime", tiny_checkpoint, precision="int8", engine_dir=tmp_path)
    assert again.onnx_path == int8.onnx_path  # quantised once, reused
    bf16 = create_embedder("auto", tiny_checkpoint, device="cpu", precision="bf16", host=CPU_HOST)
    assert (bf16.backend, bf16.precision) == ("torch", "bf16")
    x = np.random.default_rng(1).integers(0, 256, (2, *bf16.image_size, 3), dtype=np.uint8)
    fp32 = create_embedder("torch", tiny_checkpoint)
    for emb in (int8, bf16):
        cos = (emb.embed(x, 0) * fp32.embed(x, 0)).sum(axis=1)
        assert cos.min() > 0.95, (emb.backend, cos)
    with pytest.raises(EmbedderError, match="int8 runs in ONNX Runtime"):
        create_embedder("torch", tiny_checkpoint, precision="int8")
    with pytest.raises(EmbedderError, match="builds fp16 or fp32"):
        create_embedder("tensorrt", tiny_checkpoint, precision="bf16")
