"""HTTP load test of the service: throughput and latency of POST /query, with and without dynamic batching,
or with the old default back-end (torch) against the new one (``--backend auto``).

The script starts the service itself (``python -m clipmc.cli serve`` in a subprocess, loopback only,
auth off), fills a gallery with synthetic crops through ``POST /gallery/ingest``, then, for each
concurrency level, runs a bounded number of ``POST /query`` requests (multipart, infrared crops) from
an asynchronous httpx client, ``concurrency`` requests in flight at any time. It does so twice: with
dynamic batching (``--max-batch``, ``--max-wait-ms``) and without (``max_batch=1``: one model call per
request). Both servers run side by side and the measurements alternate between them, ``--repeats``
times, so that drift in the load of a shared machine hits both modes alike. The model is a randomly
initialised checkpoint of the chosen architecture (``tiny`` or ``vit-b-16``: the real network's cost
without its weights) or ``--weights`` of your own.

Reported per (mode, concurrency): requests per second, p50 / p99 latency, errors, and the mean model
batch size the server actually formed (from its /metrics). Writes ``service-<model>.json``, ``.md``
and ``.png`` under ``--out``.

    python benchmarks/service.py --model tiny --requests 200 --repeats 3
    python benchmarks/service.py --model vit-b-16 --requests 48 --repeats 2 --gallery-size 64
    python benchmarks/service.py --model vit-b-16 --concurrency 8 --requests 32 --repeats 2 --gallery-size 32 \
        --modes "torch (old default)" "auto (new default)" --suffix=-backends
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

logger = logging.getLogger("benchmarks.service")


def make_checkpoint(model: str, directory: Path) -> Path:
    """A randomly initialised checkpoint (MC head switched on, so the modality matters as after training)."""
    import torch

    from clipmc.model import build_model, save_checkpoint

    torch.manual_seed(0)
    net = build_model(model)
    with torch.no_grad():
        net.mc.alpha.fill_(0.5)
    return save_checkpoint(net, directory / model, note="benchmarks/service.py random init")


def crops(n: int, camera: int, seed: int = 0) -> list[bytes]:
    """Synthetic person crops as PNG (SYSU-MM01 camera numbering: 3 and 6 are infrared)."""
    from PIL import Image

    from clipmc.model.synth import render_image

    modality = 1 if camera in (3, 6) else 0
    out = []
    for i in range(n):
        array = render_image(seed, "sysu", 1 + i % 500, camera, modality, i // 500, size=(128, 64))
        img = Image.fromarray(array)
        if modality:
            img = img.convert("L")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(
    weights: Path, gallery: Path, max_batch: int, max_wait_ms: float, log_path: Path, backend: str = "auto"
) -> Iterator[str]:
    """The service in a subprocess on a free loopback port; yields its URL once /readyz says ready.

    The export cache (ONNX for --backend auto on a CPU host) is the run's own (``workdir/cache``), not ~/.cache."""
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPMC_")}
    env.update(CLIPMC_MAX_QUEUE="100000", CLIPMC_LOG_LEVEL="warning", CLIPMC_CACHE=str(gallery.parent.parent / "cache"))
    cmd = [sys.executable, "-m", "clipmc.cli", "serve", "--weights", str(weights), "--gallery", str(gallery)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--backend", backend]
    cmd += ["--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 1800
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}; see {log_path}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready within 30 minutes; see {log_path}")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def ingest(url: str, images: list[bytes], batch: int = 32) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=600) as client:
        for start in range(0, len(images), batch):
            part = images[start : start + batch]
            items = [
                {"external_id": f"bench/{start + i}", "modality": "visible", "camera": 1} for i in range(len(part))
            ]
            files = [("images", (f"{start + i}.png", data, "image/png")) for i, data in enumerate(part)]
            r = client.post("/gallery/ingest", files=files, data={"items": json.dumps(items)})
            r.raise_for_status()


def batch_histogram(url: str) -> tuple[float, float]:
    """(model calls, crops embedded) so far, from the server's embedding batch-size histogram."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    calls = crops_total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "clipmc_embedding_batch_size_count":
                calls = sample.value
            elif sample.name == "clipmc_embedding_batch_size_sum":
                crops_total = sample.value
    return calls, crops_total


async def load(url: str, queries: list[bytes], concurrency: int, n: int, top_k: int) -> dict[str, Any]:
    """``n`` queries with ``concurrency`` in flight: latencies (s) of the successful ones, errors by kind."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            files = {"image": ("q.png", queries[i % len(queries)], "image/png")}
            start = time.perf_counter()
            try:
                r = await client.post("/query", files=files, data={"modality": "infrared", "top_k": str(top_k)})
                ok = r.status_code == 200
                key = str(r.status_code)
            except httpx.HTTPError as exc:
                ok, key = False, type(exc).__name__
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors[key] = errors.get(key, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "seconds": wall}


def summarise(parts: list[dict[str, Any]], concurrency: int, calls: float, crops_total: float) -> dict[str, Any]:
    """Pool the repeats of one cell: throughput over the summed wall time, percentiles over all requests."""
    ms = np.asarray([x for p in parts for x in p["latencies"]]) * 1000.0
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    seconds = sum(p["seconds"] for p in parts)
    per_repeat = [round(len(p["latencies"]) / p["seconds"], 1) for p in parts]
    return {
        "concurrency": concurrency,
        "requests": len(ms) + sum(errors.values()),
        "ok": len(ms),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(seconds, 3),
        "throughput_rps": round(len(ms) / seconds, 2),
        "throughput_per_repeat": per_repeat,
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "mean_ms": round(float(ms.mean()), 2) if len(ms) else None,
        "model_calls": int(calls),
        "mean_batch": round(crops_total / max(1.0, calls), 2),
    }


#: mode -> (back-end or None for --backend, (max_batch, max_wait_ms) or None for the flags)
MODES: dict[str, tuple[str | None, tuple[int, float] | None]] = {
    "dynamic batching": (None, None),
    "no batching": (None, (1, 0.0)),
    "torch (old default)": ("torch", None),
    "auto (new default)": ("auto", None),
}


def mode_config(mode: str, args: argparse.Namespace) -> tuple[str, int, float]:
    backend, batching = MODES[mode]
    max_batch, max_wait = batching or (args.max_batch, args.max_wait_ms)
    return backend or args.backend, max_batch, max_wait


def describe_embedder(url: str) -> str:
    """What the server's /readyz says it runs: back-end, device, precision."""
    import httpx

    info = httpx.get(f"{url}/readyz", timeout=30).json()["embedder"]
    return f"{info['backend']} {info['device']} {info['precision']}"


def run(args: argparse.Namespace, weights: Path, workdir: Path) -> list[dict[str, Any]]:
    """Both servers up at once; the cells alternate between them so that drift in the machine's load
    (other jobs on a shared host) hits both modes alike."""
    queries = crops(32, camera=3, seed=2)
    gallery = crops(args.gallery_size, camera=1, seed=1)
    log_path = args.out / f"service-{args.model}-server.log"
    if any(mode_config(mode, args)[0] in ("auto", "onnxruntime") for mode in args.modes):
        # The ONNX export a CPU host's first start does, done once here, outside every timing, into the cache
        # the servers share (a ViT-B/16 export takes minutes on a loaded 2-core machine).
        from clipmc.export.onnx_export import export_onnx_cached

        export_onnx_cached(weights, workdir / "cache")
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        runtimes: dict[str, str] = {}
        for mode in args.modes:
            backend, max_batch, max_wait = mode_config(mode, args)
            gallery_dir = workdir / f"server-{len(urls)}" / "gallery"
            gallery_dir.parent.mkdir(parents=True)
            urls[mode] = stack.enter_context(server(weights, gallery_dir, max_batch, max_wait, log_path, backend))
            runtimes[mode] = describe_embedder(urls[mode])
            logger.info(
                "%s: server up at %s (%s, max_batch %d, max_wait %g ms)",
                mode,
                urls[mode],
                runtimes[mode],
                max_batch,
                max_wait,
            )
            ingest(urls[mode], gallery)
            asyncio.run(load(urls[mode], queries, min(8, args.warmup), args.warmup, args.top_k))  # warm the path
        cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
        counts: dict[tuple[str, int], list[float]] = {}
        for repeat in range(args.repeats):
            for c in args.concurrency:
                for mode, url in urls.items():
                    calls0, crops0 = batch_histogram(url)
                    part = asyncio.run(load(url, queries, c, args.requests, args.top_k))
                    calls1, crops1 = batch_histogram(url)
                    cells.setdefault((mode, c), []).append(part)
                    acc = counts.setdefault((mode, c), [0.0, 0.0])
                    acc[0] += calls1 - calls0
                    acc[1] += crops1 - crops0
                    logger.info(
                        "repeat %d %-16s c=%-3d %7.1f req/s  errors %d",
                        repeat + 1,
                        mode,
                        c,
                        len(part["latencies"]) / part["seconds"],
                        sum(part["errors"].values()),
                    )
    runs = []
    for mode in urls:
        _, max_batch, max_wait = mode_config(mode, args)
        rows = []
        for c in args.concurrency:
            row = summarise(cells[(mode, c)], c, *counts[(mode, c)])
            row.update(mode=mode, max_batch=max_batch, max_wait_ms=max_wait, runtime=runtimes[mode])
            rows.append(row)
        runs.append({"mode": mode, "runtime": runtimes[mode], "rows": rows})
    return runs


def ratios(runs: list[dict[str, Any]], baseline: str) -> list[tuple[str, int, float]]:
    """(mode, concurrency, throughput / baseline's throughput at that concurrency) for every other mode."""
    base = next((r for r in runs if r["mode"] == baseline), None)
    if base is None:
        return []
    ref = {row["concurrency"]: row["throughput_rps"] for row in base["rows"]}
    return [
        (run["mode"], row["concurrency"], row["throughput_rps"] / ref[row["concurrency"]])
        for run in runs
        if run["mode"] != baseline
        for row in run["rows"]
        if ref.get(row["concurrency"])
    ]


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def markdown(result: dict[str, Any]) -> str:
    info, cfg = result["machine"], result["config"]
    lines = [
        f"Service load test, model `{cfg['model']}` ({cfg['weights']}) on {info['gpu'] or 'CPU'}: {info['cpu']}, "
        f"{info['cores']} cores (load: 1-min load average {cfg.get('load_before')} "
        f"before, {cfg.get('load_after')} after). {cfg['repeats']} x {cfg['requests']} POST /query per row "
        f"(multipart PNG crops, top_k {cfg['top_k']}, the modes alternating) against a gallery of "
        f"{cfg['gallery_size']}; the load generator runs on the same machine. Runtime: what each server's "
        "/readyz reported.",
        "",
        "| mode | runtime | concurrency | req/s | req/s per repeat | p50 ms | p99 ms | errors | model calls "
        "| mean batch |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        for r in run["rows"]:
            mode = run["mode"] + (f" ({r['max_batch']}, {r['max_wait_ms']:g} ms)" if r["max_batch"] > 1 else "")
            lines.append(
                f"| {mode} | {run.get('runtime', '')} | {r['concurrency']} | {r['throughput_rps']:.1f} | "
                f"{', '.join(f'{x:g}' for x in r['throughput_per_repeat'])} | {r['p50_ms']} | {r['p99_ms']} | "
                f"{r['errors']} | {r['model_calls']} | {r['mean_batch']} |"
            )
    baseline = next(
        (m for m in ("torch (old default)", "no batching") if any(r["mode"] == m for r in result["runs"])), None
    )
    if baseline:
        lines += ["", f"Throughput relative to {baseline}, same run:", ""]
        lines += [f"- {mode} at concurrency {c}: x{x:.2f}" for mode, c, x in ratios(result["runs"], baseline)]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, run in enumerate(result["runs"]):
        colour = f"C{i}"
        conc = [r["concurrency"] for r in run["rows"]]
        ax1.plot(conc, [r["throughput_rps"] for r in run["rows"]], marker="o", color=colour, label=run["mode"])
        ax2.plot(conc, [r["p50_ms"] for r in run["rows"]], marker="o", color=colour, label=f"{run['mode']} p50")
        ax2.plot(
            conc, [r["p99_ms"] for r in run["rows"]], marker="x", ls="--", color=colour, label=f"{run['mode']} p99"
        )
    for ax, title, ylabel in ((ax1, "throughput", "requests / s"), (ax2, "latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["config"]["concurrency"], [str(c) for c in result["config"]["concurrency"]])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}, model {result['config']['model']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax2.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "vit-b-16"), default="tiny", help="random-init architecture")
    parser.add_argument("--weights", type=Path, help="a checkpoint directory instead of a random-init one")
    parser.add_argument("--requests", type=int, default=200, help="queries per concurrency level (bounded)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--gallery-size", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=16, help="untimed queries before each mode")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats of every cell")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        default=["dynamic batching", "no batching"],
        help="servers to compare",
    )
    parser.add_argument("--suffix", default="", help="added to the output file names (e.g. -backends)")
    parser.add_argument("--backend", default="auto", help="--backend of the batching modes (default auto)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.requests < 1 or args.requests > 100_000 or min(args.concurrency) < 1:
        parser.error("--requests must be in 1..100000 and --concurrency values >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="clipmc-bench-") as tmp:
        weights = args.weights or make_checkpoint(args.model, Path(tmp))
        runs = run(args, weights, Path(tmp))
    result = {
        "machine": machine(),
        "config": {
            "model": args.model,
            "weights": str(args.weights) if args.weights else "random init",
            "requests": args.requests,
            "repeats": args.repeats,
            "concurrency": args.concurrency,
            "gallery_size": args.gallery_size,
            "top_k": args.top_k,
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "load_before": load_before,
            "load_after": round(os.getloadavg()[0], 2),
        },
        "runs": runs,
    }
    stem = args.out / f"service-{args.model}{args.suffix}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(markdown(result))
    plot(result, stem.with_suffix(".png"))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
