"""benchmarks/embed.py end to end on the tiny configuration: JSON, markdown and PNG outputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_embed", ROOT / "benchmarks" / "embed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_writes_json_markdown_and_png(tmp_path):
    bench = _load_benchmark()
    argv = ["--arch", "tiny", "--batch-sizes", "1,2", "--precisions", "fp32,fp16,bf16,int8", "--device", "cpu"]
    argv += ["--warmup", "1", "--min-iters", "2", "--min-seconds", "0", "--threads", "1", "--out", str(tmp_path)]
    argv += ["--parity-images", "8"]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "embed.json").read_text())
    machine = result["machine"]
    assert machine["os_cpu_count"] and machine["torch_threads"] == 1 and machine["cpu_model"]
    points = {(r["runtime"], r["batch"]): r for r in result["results"]}
    runtimes = ("torch/fp32", "torch/bf16", "onnxruntime-cpu/fp32", "onnxruntime-cpu/int8")
    assert set(points) == {(rt, b) for rt in runtimes for b in (1, 2)}
    for r in points.values():
        assert r["iters"] >= 2 and r["images_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
    ratio_points = {(r["runtime"], r["batch"]) for r in result["ratios"]}
    assert ratio_points == {(rt, b) for rt in runtimes[1:] for b in (1, 2)}
    assert "torch/fp16" in result["skipped"]  # fp16 needs CUDA: skipped with the reason, not a crash
    assert "onnxruntime/bf16" in result["skipped"] and "torch/int8" in result["skipped"]
    parity = {p["runtime"]: p for p in result["parity"]}
    assert set(parity) == set(runtimes[1:])
    assert parity["onnxruntime-cpu/fp32"]["cos_min"] > 0.999  # the same graph: numerically the same vectors
    for p in parity.values():
        assert p["images"] == 8 and -1 <= p["cos_min"] <= p["cos_mean"] <= 1 + 1e-5 and 0 <= p["top10"] <= 1
    md = (tmp_path / "embed.md").read_text()
    assert "| torch/fp32 | 2 |" in md and "relative to torch fp32" in md and "| onnxruntime-cpu/int8 |" in md
    assert (tmp_path / "embed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
