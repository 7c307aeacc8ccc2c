"""The TensorRT engine cache: key, file lock, validation (no TensorRT needed), and the TensorRT
back-end itself where TensorRT and a GPU are present."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clipmc.export import EmbedderError, create_embedder
from clipmc.export.engine_cache import EngineCacheError, batch_profile, cached_engine, make_key, read_sidecar

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "onnx_sha256": "a" * 64,
    "tensorrt_version": "10.3.0",
    "gpu_name": "NVIDIA L4",
    "compute_capability": "8.9",
    "precision": "fp16",
    "batch_sizes": (1, 8, 32, 128),
}
CHANGES = {
    "onnx_sha256": "b" * 64,
    "tensorrt_version": "10.4.0",
    "gpu_name": "NVIDIA A10",
    "compute_capability": "8.6",
    "precision": "fp32",
    "batch_sizes": (1, 8, 32, 64),
}


def _fake_build(calls: list, delay: float = 0.0, payload: bytes = b"serialized-engine"):
    def build():
        calls.append(time.monotonic())
        time.sleep(delay)
        return payload, {"embedding_version": "clipmc-tiny.wabc.288x144", "embedding_dim": 80}

    return build


def test_profile_is_min_middle_max():
    assert batch_profile([32, 1, 128, 8]) == (1, 32, 128)
    assert batch_profile([1, 8, 32]) == (1, 8, 32)
    assert batch_profile([16]) == (16, 16, 16)
    with pytest.raises(EngineCacheError):
        batch_profile([0, 4])


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_key_changes_with_each_field(field):
    base = make_key(**BASE)
    assert make_key(**BASE).digest == base.digest  # deterministic
    changed = make_key(**{**BASE, field: CHANGES[field]})
    assert changed.digest != base.digest
    assert {f.name for f in dataclasses.fields(base)} >= {"onnx_sha256", "tensorrt_version", "gpu_name"}


def test_build_once_then_hit(tmp_path):
    key, calls = make_key(**BASE), []
    first = cached_engine(tmp_path, key, _fake_build(calls))
    second = cached_engine(tmp_path, key, _fake_build(calls))
    assert first == second and len(calls) == 1
    assert first.read_bytes() == b"serialized-engine"
    meta = read_sidecar(first, verify_hash=True)
    assert meta["key"]["gpu_name"] == "NVIDIA L4" and meta["key_digest"] == key.digest
    assert meta["embedding_version"].startswith("clipmc-tiny")
    other = cached_engine(tmp_path, make_key(**{**BASE, "precision": "fp32"}), _fake_build(calls))
    assert other != first and len(calls) == 2


def test_lock_serialises_two_builders_in_threads(tmp_path):
    """Two workers ask at once: one builds, the other waits on the lock and reuses the engine."""
    key, calls, results = make_key(**BASE), [], {}

    def worker(name):
        results[name] = (cached_engine(tmp_path, key, _fake_build(calls, delay=0.5)), time.monotonic())

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results["a"][0] == results["b"][0]
    assert min(r[1] for r in results.values()) >= calls[0] + 0.5  # the second returned only after the build


_PROCESS_WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from clipmc.export.engine_cache import cached_engine, make_key
    directory, log = Path(sys.argv[1]), Path(sys.argv[2])
    key = make_key(onnx_sha256="c" * 64, tensorrt_version="10.3.0", gpu_name="g", compute_capability="9.0",
                   precision="fp16", batch_sizes=(1, 8))
    def build():
        with open(log, "a") as f:
            f.write("build\\n")
        time.sleep(1.0)
        return b"engine-bytes", {}
    print(cached_engine(directory, key, build))
    """
)


def test_lock_serialises_two_builder_processes(tmp_path):
    log = tmp_path / "builds.log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS_WORKER, str(tmp_path / "cache"), str(log)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert log.read_text().count("build") == 1
    assert outs[0][0].strip() == outs[1][0].strip()


def test_corrupt_entry_is_rebuilt(tmp_path):
    key, calls = make_key(**BASE), []
    engine = cached_engine(tmp_path, key, _fake_build(calls))
    engine.write_bytes(b"serialized-enginX")  # same size, different bytes
    with pytest.raises(EngineCacheError, match="sha256"):
        read_sidecar(engine, verify_hash=True)
    again = cached_engine(tmp_path, key, _fake_build(calls))
    assert len(calls) == 2 and again.read_bytes() == b"serialized-engine"
    engine.write_bytes(b"short")
    with pytest.raises(EngineCacheError, match="size"):
        read_sidecar(engine)


def test_sidecar_errors(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"abc")
    with pytest.raises(EngineCacheError, match="missing"):
        read_sidecar(engine)
    engine.with_suffix(".json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(EngineCacheError, match="not a CLIP-MC engine sidecar"):
        read_sidecar(engine)
    with pytest.raises(EngineCacheError, match="not found"):
        read_sidecar(tmp_path / "none.engine")
    with pytest.raises(EmbedderError, match="not found"):  # what create_embedder's callers catch
        read_sidecar(tmp_path / "none.engine")


def test_failed_build_leaves_no_entry(tmp_path):
    key = make_key(**BASE)

    def broken():
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        cached_engine(tmp_path, key, broken)
    assert not list(tmp_path.glob("*.engine")) and not list(tmp_path.glob("*.json"))


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_is_a_clear_error(tmp_path):
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"")
    for weights in (onnx_file, engine):
        with pytest.raises(EmbedderError, match=r"TensorRT 10.*clipmc\[gpu\]"):
            create_embedder("tensorrt", weights, device="cuda")


def test_tensorrt_runtime_imports_no_torch():
    """Issue 10 item 2: the TensorRT runtime (and its CUDA helpers) load without torch (cuda-python instead)."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "import clipmc.export.runtime_trt, clipmc.export.tensorrt_build, clipmc.export.cuda_rt\n"
        "import clipmc.export.runtime_ort\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_cuda_runtime_errors_are_clear(monkeypatch):
    """Without cuda-python: an error naming the extra; without a GPU (this CI machine): one saying so."""
    from clipmc.export import cuda_rt

    if cuda_rt.device_count() == 0:
        with pytest.raises(cuda_rt.CudaUnavailable, match="needs a CUDA GPU"):
            cuda_rt.cuda_device("cuda")
    with pytest.raises(EmbedderError, match="not device 'cpu'"):
        cuda_rt.cuda_device("cpu")
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)  # import now fails as if not installed
    with pytest.raises(cuda_rt.CudaUnavailable, match=r"cuda-python.*clipmc\[gpu\]"):
        cuda_rt.cuda_device("cuda")


# -- real TensorRT: only where it is installed and a GPU is present ------------------------------------
needs_trt = pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()), reason="needs TensorRT 10 and a CUDA GPU")


@needs_trt
@pytest.mark.parametrize(("precision", "gate"), [("fp16", 0.999), ("fp32", 0.99999)])
def test_tensorrt_engine_parity_and_cache(tiny_checkpoint, tmp_path, precision, gate):
    from clipmc.export.onnx_export import export_onnx_cached
    from clipmc.export.verify import cosine_rows, random_crops, topk_agreement

    onnx_path = export_onnx_cached(tiny_checkpoint, tmp_path)
    emb = create_embedder(
        "tensorrt", onnx_path, device="cuda", precision=precision, batch_sizes=(1, 4, 16), engine_dir=tmp_path
    )
    assert emb.backend == "tensorrt" and emb.precision == precision and emb.embedding_dim == 80
    emb.warmup()
    ref = create_embedder("torch", tiny_checkpoint, batch_sizes=(16,))
    crops = random_crops(37, (288, 144))  # splits into 16 + 16 + 5
    m = np.arange(37) % 2
    got, want = emb.embed(crops, m), ref.embed(crops, m)
    assert cosine_rows(want, got).min() >= gate
    assert topk_agreement(want[m == 1], want[m == 0], got[m == 1], got[m == 0], 5, 2e-3)["agree"]
    engines = list(tmp_path.glob("*.engine"))
    assert len(engines) == 1
    again = create_embedder(
        "tensorrt", onnx_path, device="cuda", precision=precision, batch_sizes=(1, 4, 16), engine_dir=tmp_path
    )
    assert again.engine_path == engines[0]
    emb.close()  # frees the cudaMalloc'd buffers and the stream
    with pytest.raises(EmbedderError, match="closed"):
        emb.embed(crops[:1], 0)
