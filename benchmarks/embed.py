"""Embedding throughput and latency per runtime and batch size (DESIGN.md section 6).

    python benchmarks/embed.py                                   # vit-b-16, random init, torch vs onnxruntime
    python benchmarks/embed.py --precisions fp32,bf16,int8        # CPU: + torch bf16 autocast, ORT INT8, parity
    python benchmarks/embed.py --device cuda --precisions fp32,fp16 --batch-sizes 1,2,4,8,16,32,64,128,256
    python benchmarks/embed.py --device cuda --backends torch --compile reduce-overhead   # CUDA graphs

Writes `embed.json` (machine, settings, every measurement), `embed.md` (a table plus the
ONNX Runtime / torch ratio per batch size) and `embed.png` into `--out` (default benchmarks/results/).
Random weights are fine for speed: the arithmetic is that of the trained model. Inputs are preprocessed
float32 tensors, so the numbers are the runtime's cost (plus host<->device copies on a GPU), not JPEG
decoding. Each point runs for at least `--min-seconds` and `--min-iters` calls after `--warmup` calls;
latency is per `embed` call, throughput is images / mean call time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("benchmarks.embed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", help="checkpoint directory or 'openai' (default: random init of --arch)")
    p.add_argument("--arch", default="vit-b-16", help="architecture for random init (vit-b-16, tiny)")
    p.add_argument(
        "--backends", default="torch,onnxruntime", help="comma list: torch, onnxruntime, tensorrt (default: two)"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--precisions",
        default="fp32",
        help="comma list of fp32, fp16 (CUDA only), bf16 (torch autocast), int8 (ONNX Runtime dynamic INT8)",
    )
    p.add_argument(
        "--parity-images",
        type=int,
        default=48,
        help="synthetic crops (half visible, half infrared) embedded by every runtime and compared with torch "
        "fp32: cosine and top-10 agreement (0: skip)",
    )
    p.add_argument("--batch-sizes", default=None, help="comma list (default: 1,8 on CPU; 1,2,4,...,256 on CUDA)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per point")
    p.add_argument("--min-iters", type=int, default=5, help="timed calls per point, at least")
    p.add_argument("--max-iters", type=int, default=200, help="timed calls per point, at most")
    p.add_argument("--min-seconds", type=float, default=3.0, help="timed seconds per point, at least")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime (default: all)")
    p.add_argument(
        "--compile",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune"],
        help="also run torch.compile'd torch with this mode (reduce-overhead = CUDA graphs on GPU)",
    )
    p.add_argument("--compile-precisions", default=None, help="compile only these precisions (default: all)")
    p.add_argument("--compile-batch-sizes", default=None, help="batch sizes of the compiled runs (default: all)")
    p.add_argument(
        "--flops",
        action="store_true",
        help="count the model's FLOPs per image (torch.utils.flop_counter) and report achieved TFLOP/s",
    )
    p.add_argument("--from-json", type=Path, help="only re-render the table and plot of an earlier run")
    p.add_argument("--engine-dir", type=Path, help="TensorRT engine cache (default: a temporary directory)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output directory")
    p.add_argument("--name", default="embed", help="output file stem (default: embed)")
    return p.parse_args(argv)


def machine_info(device: str) -> dict[str, Any]:
    import torch

    try:
        import onnxruntime
    except ImportError:  # a GPU box with torch only (benchmarks/gpu.sh)
        onnxruntime = None
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "os_cpu_count": os.cpu_count(),
        "sched_affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__ if onnxruntime else None,
        "onnxruntime_providers": onnxruntime.get_available_providers() if onnxruntime else [],
        "device": device,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["cuda"] = torch.version.cuda
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(embedder: Any, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time `embed` on one random preprocessed batch: warm-up calls, then at least min_iters calls and
    min_seconds; per-call latency percentiles and images/s."""
    h, w = embedder.image_size
    rng = np.random.default_rng()
    x = rng.standard_normal((batch, 3, h, w), dtype=np.float32)
    m = np.arange(batch, dtype=np.int64) % 2
    for _ in range(args.warmup):
        embedder.embed(x, m)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < args.max_iters and (
        len(times) < args.min_iters or time.perf_counter() - start < args.min_seconds
    ):
        t0 = time.perf_counter()
        embedder.embed(x, m)
        times.append(time.perf_counter() - t0)
    arr = np.asarray(times)
    return {
        "batch": batch,
        "iters": len(times),
        "images_per_s": batch / float(arr.mean()),
        "p50_ms": float(np.percentile(arr, 50) * 1e3),
        "p99_ms": float(np.percentile(arr, 99) * 1e3),
        "mean_ms": float(arr.mean() * 1e3),
        "stdev_ms": float(statistics.pstdev(times) * 1e3),
    }


def build_runtimes(args: argparse.Namespace, device: str, workdir: Path) -> tuple[list[tuple[str, Any]], dict]:
    """(label, embedder) for every requested back-end x precision that this machine can run."""
    import torch

    from clipmc.export.runtime_torch import TorchEmbedder
    from clipmc.export.weights import load_model_weights
    from clipmc.model import build_model

    if args.weights:
        model, version = load_model_weights(args.weights)
    else:
        torch.manual_seed(0)
        model = build_model(args.arch)
        version = model.embedding_version
    model.eval()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    sizes = parse_sizes(args.batch_sizes, device)
    runtimes: list[tuple[str, Any]] = []
    skipped: dict[str, str] = {}
    onnx_path: Path | None = None

    def onnx_file() -> Path:
        nonlocal onnx_path
        if onnx_path is None:
            from clipmc.export.onnx_export import export_onnx

            log.info("exporting %s to ONNX for the onnxruntime/tensorrt runs", model.config.name)
            onnx_path = export_onnx(model, workdir / "model.onnx", embedding_version=version)
        return onnx_path

    for backend in backends:
        for precision in precisions:
            label = f"{backend}/{precision}"
            try:
                if backend == "onnxruntime" and precision == "int8":
                    from clipmc.export.quantize import quantize_int8
                    from clipmc.export.runtime_ort import OnnxRuntimeEmbedder

                    int8_path = workdir / "model.int8.onnx"
                    if not int8_path.is_file():
                        quantize_int8(onnx_file(), int8_path)
                    runtimes.append(
                        (
                            "onnxruntime-cpu/int8",
                            OnnxRuntimeEmbedder(
                                int8_path,
                                device="cpu",
                                precision="int8",
                                batch_sizes=sizes,
                                intra_op_threads=args.threads,
                            ),
                        )
                    )
                elif backend == "torch" and precision == "int8":
                    skipped[label] = "int8 runs in ONNX Runtime"
                elif backend == "torch":
                    runtimes.append(
                        (
                            label,
                            TorchEmbedder(
                                model, device=device, precision=precision, batch_sizes=sizes, embedding_version=version
                            ),
                        )
                    )
                    compile_precisions = args.compile_precisions.split(",") if args.compile_precisions else None
                    if args.compile and (compile_precisions is None or precision in compile_precisions):
                        compile_sizes = (
                            parse_sizes(args.compile_batch_sizes, device) if args.compile_batch_sizes else sizes
                        )
                        runtimes.append(
                            (
                                f"torch-compile[{args.compile}]/{precision}",
                                TorchEmbedder(
                                    model,
                                    device=device,
                                    precision=precision,
                                    batch_sizes=compile_sizes,
                                    embedding_version=version,
                                    compile=True,
                                    compile_mode=args.compile,
                                ),
                            )
                        )
                elif backend == "onnxruntime":
                    from clipmc.export.runtime_ort import OnnxRuntimeEmbedder

                    ort_device = "cpu" if device == "cpu" else ("tensorrt" if precision == "fp16" else "cuda")
                    runtimes.append(
                        (
                            f"onnxruntime-{ort_device}/{precision}",
                            OnnxRuntimeEmbedder(
                                onnx_file(),
                                device=ort_device,
                                precision=precision,
                                batch_sizes=sizes,
                                intra_op_threads=args.threads,
                                cache_dir=args.engine_dir or workdir,
                            ),
                        )
                    )
                elif backend == "tensorrt":
                    from clipmc.export.runtime_trt import TensorRTEmbedder
                    from clipmc.export.tensorrt_build import build_engine

                    engine = build_engine(
                        onnx_file(),
                        args.engine_dir or workdir,
                        precision=precision,
                        batch_sizes=sizes,
                        device=device if device != "cpu" else "cuda",
                    )
                    runtimes.append((label, TensorRTEmbedder(engine, device=device, batch_sizes=sizes)))
                else:
                    skipped[label] = f"unknown backend {backend!r}"
            except ValueError as exc:  # EmbedderError: not runnable here (fp16 on CPU, no TensorRT, ...)
                skipped[label] = str(exc)
                log.warning("skipping %s: %s", label, exc)
    info: dict[str, Any] = {"skipped": skipped, "embedding_version": version, "architecture": model.config.name}
    if args.flops:
        info["gflop_per_image"] = flops_per_image(model) / 1e9
        log.info("%.1f GFLOP per image (torch.utils.flop_counter)", info["gflop_per_image"])
    return runtimes, info


def flops_per_image(model: Any) -> float:
    """FLOPs of one embedding (batch 1, fp32, on the CPU), as torch's FlopCounterMode counts them (2 per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from clipmc.model.clipmc import EmbeddingGraph

    h, w = model.config.image_size
    graph = EmbeddingGraph(model).to("cpu").eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        graph(torch.zeros(1, 3, h, w), torch.zeros(1, dtype=torch.int64))
    return float(counter.get_total_flops())


def parity_set(n: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic person crops (model.synth, SYSU-like cameras), half visible and half infrared, of
    ``n // 4`` identities: (uint8 [n, H, W, 3], modality [n])."""
    from clipmc.model.synth import render_image

    crops, modality = [], []
    for i in range(n):
        infrared = i % 2
        camera = (3, 6)[i // 2 % 2] if infrared else (1, 2, 4, 5)[i // 2 % 4]
        crops.append(render_image(7, "sysu", 1 + (i // 2) % max(1, n // 4), camera, infrared, i, size=size))
        modality.append(infrared)
    return np.stack(crops), np.asarray(modality, dtype=np.int64)


def parity(runtimes: list[tuple[str, Any]], n: int) -> list[dict[str, Any]]:
    """Each runtime's vectors against torch fp32's on the same crops: cosine (mean, min) and the agreement
    of the top-10 gallery neighbours of every infrared query among the visible crops (cross-modality, as
    the service searches). With random weights this is numerical agreement, not accuracy."""
    reference = next((emb for label, emb in runtimes if label == "torch/fp32"), None)
    if reference is None or n < 4:
        return []
    images, modality = parity_set(n, reference.image_size)
    want = reference.embed(images, modality)
    queries, gallery = modality == 1, modality == 0
    k = min(10, int(gallery.sum()))

    def top(v: np.ndarray) -> np.ndarray:
        return np.argsort(-(v[queries] @ v[gallery].T), axis=1)[:, :k]

    ref_top = top(want)
    rows = []
    for label, emb in runtimes:
        if label == "torch/fp32":
            continue
        got = emb.embed(images, modality)
        cos = (got * want).sum(axis=1)
        agree = np.mean([len(set(a) & set(b)) / k for a, b in zip(top(got), ref_top, strict=True)])
        rows.append(
            {"runtime": label, "images": n, "cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "top10": agree}
        )
        log.info("parity %s: cosine mean %.5f min %.5f, top-10 agreement %.3f", label, cos.mean(), cos.min(), agree)
    return rows


def parse_sizes(text: str | None, device: str) -> tuple[int, ...]:
    if text is None:
        return (1, 8) if device == "cpu" else tuple(2**i for i in range(9))
    return tuple(sorted({int(t) for t in text.split(",") if t.strip()}))


def write_outputs(result: dict[str, Any], out: Path, name: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": out / f"{name}.png"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    paths["md"].write_text(markdown(result), encoding="utf-8")
    try:
        plot(result, paths["png"])
    except ImportError as exc:  # a bare GPU box without matplotlib: re-render later with --from-json
        log.warning("no plot (%s): run benchmarks/embed.py --from-json %s to draw it", exc, paths["json"])
        del paths["png"]
    return paths


def ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Throughput of every runtime / torch fp32 (the reference runtime, and the old service default) at the
    same batch size."""
    rows = []
    by_key = {(r["runtime"], r["batch"]): r for r in result["results"]}
    for (runtime, batch), r in sorted(by_key.items()):
        if runtime == "torch/fp32":
            continue
        ref = by_key.get(("torch/fp32", batch))
        if ref:
            rows.append(
                {"runtime": runtime, "batch": batch, "throughput_ratio": r["images_per_s"] / ref["images_per_s"]}
            )
    return rows


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# Embedding benchmark: {result['architecture']} ({result['weights']})",
        "",
        f"Machine: {m['cpu_model']}, os.cpu_count() = {m['os_cpu_count']}, torch threads = {m['torch_threads']}, "
        f"device = {m['device']}" + (f" ({m.get('gpu')})" if m.get("gpu") else "") + f"; torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime']}; load average at start {m['load_average']}.",
        "",
        "| runtime | batch | images/s | p50 ms | p99 ms | calls | TFLOP/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    gflop = result.get("gflop_per_image")
    for r in result["results"]:
        tflops = f"{r['images_per_s'] * gflop / 1e3:.3g}" if gflop else "–"
        lines.append(
            f"| {r['runtime']} | {r['batch']} | {r['images_per_s']:.2f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['iters']} | {tflops} |"
        )
    if gflop:
        lines += [
            "",
            f"{gflop:.3g} GFLOP per image (torch.utils.flop_counter, 2 per multiply-add): TFLOP/s = images/s x "
            "that; the bound on images/s is the device's peak TFLOP/s for the precision divided by it.",
        ]
    if result["ratios"]:
        lines += ["", "Throughput relative to torch fp32 eager (same batch, same run):", ""]
        lines += [f"- {r['runtime']} batch {r['batch']}: x{r['throughput_ratio']:.2f}" for r in result["ratios"]]
    if result.get("parity"):
        lines += [
            "",
            f"Parity with torch fp32 on {result['parity'][0]['images']} synthetic crops (model.synth; "
            f"{result['weights']} weights, so this is numerical agreement, not accuracy): cosine of each vector "
            "with torch fp32's, and the overlap of the top-10 visible neighbours of every infrared crop.",
            "",
            "| runtime | cosine mean | cosine min | top-10 agreement |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {p['runtime']} | {p['cos_mean']:.5f} | {p['cos_min']:.5f} | {p['top10']:.3f} |"
            for p in result["parity"]
        ]
    if result["skipped"]:
        lines += ["", "Not run here:", ""]
        lines += [f"- {k}: {v}" for k, v in result["skipped"].items()]
    lines += ["", result["note"], ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    runtimes = sorted({r["runtime"] for r in result["results"]})
    for name in runtimes:
        pts = sorted((r for r in result["results"] if r["runtime"] == name), key=lambda r: r["batch"])
        batches = [r["batch"] for r in pts]
        ax1.plot(batches, [r["images_per_s"] for r in pts], marker="o", label=name)
        ax2.plot(batches, [r["p50_ms"] for r in pts], marker="o", label=f"{name} p50")
        ax2.fill_between(batches, [r["p50_ms"] for r in pts], [r["p99_ms"] for r in pts], alpha=0.15)
    for ax, ylabel in ((ax1, "images / s"), (ax2, "latency per call, ms (p50, band to p99)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu_model']}, {m['os_cpu_count']} CPUs, {m['torch_threads']} threads"
    fig.suptitle(f"{result['architecture']} embedding: {where}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, device)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, device: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="clipmc-bench-") as tmp:
        runtimes, info = build_runtimes(args, device, Path(tmp))
        if not runtimes:
            raise SystemExit(f"nothing to run: {info['skipped']}")
        machine = machine_info(device)
        agreement = parity(runtimes, args.parity_images)
        results = []
        for label, embedder in runtimes:
            for batch in embedder.batch_sizes:
                log.info("%s batch %d", label, batch)
                point = measure(embedder, batch, args)
                point["runtime"] = label
                results.append(point)
                log.info(
                    "  %.2f images/s, p50 %.1f ms, p99 %.1f ms (%d calls)",
                    point["images_per_s"],
                    point["p50_ms"],
                    point["p99_ms"],
                    point["iters"],
                )
            embedder.close()
    result = {
        "architecture": info["architecture"],
        "weights": args.weights or "random init",
        "embedding_version": info["embedding_version"],
        "machine": machine,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
        "skipped": info["skipped"],
        "gflop_per_image": info.get("gflop_per_image"),
        "parity": agreement,
        "note": "Inputs: preprocessed float32 batches, fresh random values. Other processes shared the CPU: "
        "see load_average; compare runtimes measured in the same run only.",
    }
    result["ratios"] = ratios(result)
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text(encoding="utf-8"))
        paths = write_outputs(result, args.out, args.name)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    result = run(args)
    paths = write_outputs(result, args.out, args.name)
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
