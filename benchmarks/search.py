"""Gallery search benchmark: exact search vs NumPy brute force, IVF recall vs speed, coalescing, ingest.

For each gallery size it generates unit vectors (float32 everywhere, NumPy included) and measures:

- single-query latency (p50, p99) and batched throughput of NumPy brute force (``X @ q`` + partial
  sort), of FAISS ``IndexFlatIP`` (the gallery's exact search until issue 15) and of the gallery's exact
  search now (an fp16 or int8 copy scanned in parallel shards, then a proven float32 re-rank:
  gallery/exact_scan.py), with its agreement with float32 exact search and its memory per item;
- search coalescing: ``--clients`` concurrent clients through the service's ``SearchBatcher``, one query
  per search call against coalesced batches (the two modes alternating);
- IVF (``IndexIVFFlat``, about sqrt(n) lists): recall@10 against the exact top-10, and speed, for a
  few ``nprobe`` values;
- ingest throughput through ``Gallery.add`` (SQLite WAL with synchronous=FULL, then the FAISS index),
  and end-to-end ``Gallery.search`` latency (FAISS + filter + fetching the items from SQLite), with
  and without a modality filter.

The data are synthetic but shaped like re-identification embeddings rather than uniform noise (on
which IVF recall means little): n/10 "identities" whose unit centres lie near a ``--latent-dim``
subspace (embeddings of real images occupy far fewer dimensions than 1280; ``--latent-dim 0`` draws
isotropic centres, the hardest case for IVF), and every vector a noisy sighting of one of them
(cosine about 0.6 between two sightings of the same identity). Queries are fresh sightings.

Writes ``search.json``, ``search.md`` (a markdown table) and ``search.png`` under ``--out``.

    python benchmarks/search.py --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("benchmarks.search")

SIGMA = 0.8  # noise norm relative to the identity centre: same-identity cosine ~ 1 / (1 + SIGMA**2)
TOP_K = 10


def synthetic(
    n: int, dim: int, n_queries: int, seed: int, latent_dim: int = 64, sink: Any = None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(gallery vectors [n, dim], their modality 0/1, queries [n_queries, dim]), float32, unit norm.

    With ``sink``, each block of gallery vectors is handed to ``sink(start, block)`` instead of being kept
    (a 1M x 1280 gallery then exists once, in the index, not also as an array), and None is returned."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // 10)
    if latent_dim:
        basis = rng.standard_normal((latent_dim, dim), dtype=np.float32)
        centres = rng.standard_normal((n_ids, latent_dim), dtype=np.float32) @ basis
    else:
        centres = rng.standard_normal((n_ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = np.float32(SIGMA / np.sqrt(dim))

    def sightings(count: int, to: Any = None) -> np.ndarray | None:
        out = np.empty((count, dim), dtype=np.float32) if to is None else None
        for start in range(0, count, 65536):
            stop = min(count, start + 65536)
            block = rng.standard_normal((stop - start, dim), dtype=np.float32)
            block *= scale
            block += centres[rng.integers(0, n_ids, stop - start)]
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            if out is None:
                to(start, block)
            else:
                out[start:stop] = block
        return out

    vectors = sightings(n, sink)
    modality = rng.integers(0, 2, n).astype(np.int8)
    queries = sightings(n_queries)
    assert queries is not None
    return vectors, modality, queries


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "single_qps": float(1000.0 / ms.mean()),
        "n": len(seconds),
    }


def time_single(search: Any, queries: np.ndarray) -> dict[str, float]:
    search(queries[:1])  # warm-up
    times = []
    for q in queries:
        started = time.perf_counter()
        search(q[None, :])
        times.append(time.perf_counter() - started)
    return percentiles(times)


def time_batched(search: Any, queries: np.ndarray, batch: int) -> float:
    """Queries per second when queries arrive in batches of ``batch``."""
    started = time.perf_counter()
    done = 0
    for start in range(0, len(queries), batch):
        search(queries[start : start + batch])
        done += len(queries[start : start + batch])
    return done / (time.perf_counter() - started)


def overlap_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row's true top-k that ``found`` holds (recall@k; agreement of two exact searches)."""
    return float(np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(found, truth, strict=True)]))


def numpy_search(vectors: np.ndarray, queries: np.ndarray, k: int = TOP_K) -> np.ndarray:
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def bench_ivf(
    vectors: np.ndarray, queries: np.ndarray, single: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """IVF as the gallery builds it (its IndexConfig defaults, VectorIndex.ivf): recall@10 and speed per nprobe."""
    import faiss

    from clipmc.gallery import IndexConfig
    from clipmc.gallery.index import VectorIndex

    n, dim = vectors.shape
    config = IndexConfig()
    nlist = config.nlist_for(n)
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed + 1)
    train_size = min(n, config.train_size or 40 * nlist)
    training = vectors[np.sort(rng.choice(n, size=train_size, replace=False))]
    ivf = VectorIndex.ivf(
        dim, training, nlist, nprobe=config.nprobe, iterations=config.kmeans_iterations, seed=config.seed
    ).cpu
    train_s = time.perf_counter() - started
    rss0 = rss_bytes()
    ivf.add(vectors)
    bytes_per_item = (rss_bytes() - rss0) / n
    out: dict[str, Any] = {
        "nlist": nlist,
        "train_s": train_s,
        "build_s": time.perf_counter() - started,
        "bytes_per_item": bytes_per_item,
        "nprobe": [],
    }
    float32_found: dict[int, np.ndarray] = {}
    for nprobe in [p for p in args.nprobe if p <= nlist]:
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        found = ivf.search(queries, TOP_K, params=params)[1]
        recall = overlap_at_k(found, truth)
        row: dict[str, Any] = {"nprobe": nprobe, "recall_at_10": recall}
        row.update(time_single(lambda q, p=params: ivf.search(q, TOP_K, params=p), single))
        row["batched_qps"] = time_batched(lambda q, p=params: ivf.search(q, TOP_K, params=p), queries, args.batch)
        out["nprobe"].append(row)
        float32_found[nprobe] = found
        logger.info("n=%d ivf nlist=%d nprobe=%d: recall@10 %.3f, p50 %.2f ms", n, nlist, nprobe, recall, row["p50_ms"])
    # The gallery's default: the same lists scanned from an 8-bit copy, re-ranked from the float32 lists.
    index = VectorIndex(ivf, "ivf", nprobe=config.nprobe)
    gc.collect()
    rss0, started = rss_bytes(), time.perf_counter()
    index.attach_ivf_scan(config.ivf_candidates, config.seed)
    out["scan_build_s"] = time.perf_counter() - started
    out["scan_bytes_per_item"] = (rss_bytes() - rss0) / n
    out["scan"] = []
    for nprobe in float32_found:
        index.nprobe = nprobe
        found = index.search(queries, TOP_K, None, n)[1]
        row = {
            "nprobe": nprobe,
            "recall_at_10": overlap_at_k(found, truth),
            "same_ids_as_float32_ivf": float(np.mean(np.all(found == float32_found[nprobe], axis=1))),
        }
        row.update(time_single(lambda q: index.search(q, TOP_K, None, n), single))
        row["batched_qps"] = time_batched(lambda q: index.search(q, TOP_K, None, n), queries, args.batch)
        out["scan"].append(row)
        logger.info("n=%d 8-bit ivf nprobe=%d: %s", n, nprobe, row)
    index.detach_ivf_scan()
    return out


def bench_gallery(
    vectors: np.ndarray, modality: np.ndarray, single: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """Ingest through Gallery.add (durable batches), then end-to-end Gallery.search."""
    from clipmc.gallery import Filters, IndexConfig, Item, open_gallery

    n, dim = vectors.shape
    workdir = Path(tempfile.mkdtemp(prefix="gallery-bench-", dir=args.workdir))
    try:
        # A flat index throughout, so the timing is ingest alone (no switch to IVF at the threshold).
        gallery = open_gallery(workdir / "g", dim, "bench", index=IndexConfig(kind="flat"), snapshot_every=0)
        started = time.perf_counter()
        for start in range(0, n, args.ingest_batch):
            stop = min(n, start + args.ingest_batch)
            gallery.add(
                [
                    Item(vectors[i], int(modality[i]), camera=i % 16, external_id=f"i{i}", timestamp=float(i))
                    for i in range(start, stop)
                ]
            )
        ingest_s = time.perf_counter() - started
        started = time.perf_counter()
        gallery.snapshot()
        out: dict[str, Any] = {
            "ingest": {
                "items_per_s": n / ingest_s,
                "seconds": ingest_s,
                "batch": args.ingest_batch,
                "snapshot_s": time.perf_counter() - started,
                "database_gb": gallery.stats()["database_bytes"] / 1e9,
            }
        }
        out["gallery_search"] = time_single(lambda q: gallery.search(q, TOP_K), single)
        infrared = Filters(modality=1)
        out["gallery_search_filtered"] = time_single(lambda q: gallery.search(q, TOP_K, infrared), single)
        gallery.close()
        started = time.perf_counter()
        open_gallery(workdir / "g", index=IndexConfig(kind="flat")).close()
        out["ingest"]["reopen_s"] = time.perf_counter() - started
        logger.info("n=%d ingest: %s", n, out["ingest"])
        if n >= args.gallery_ivf_min:
            # What the gallery does on its own past IndexConfig.ivf_threshold: train, add, measure
            # recall@10 at its nprobe, snapshot; then end-to-end search on that index.
            started = time.perf_counter()
            gallery = open_gallery(workdir / "g", index=IndexConfig(kind="ivf"))
            index = gallery.stats()["index"]
            out["gallery_ivf"] = {
                "switch_s": time.perf_counter() - started,
                "nlist": index["nlist"],
                "nprobe": index["nprobe"],
                "recall_at_10": index["recall_at_10"],
                "search": time_single(lambda q: gallery.search(q, TOP_K), single),
                "search_filtered": time_single(lambda q: gallery.search(q, TOP_K, infrared), single),
            }
            gallery.close()
            logger.info("n=%d gallery ivf: %s", n, out["gallery_ivf"])
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc), to measure what an index costs per item."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def bench_exact_scan(
    index: Any,
    queries: np.ndarray,
    single: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray],
    args: argparse.Namespace,
    codes: str,
) -> dict[str, Any]:
    """The gallery's exact search (fp16 or int8 scan + proven float32 re-rank): speed, agreement with float32,
    memory."""
    n = index.ntotal
    before = rss_bytes()
    started = time.perf_counter()
    index.attach_scan(args.scan_shards or faiss_threads(), codes=codes)
    out: dict[str, Any] = {"build_s": time.perf_counter() - started, "shards": index.describe()["exact_scan"]["shards"]}
    out["bytes_per_item"] = (rss_bytes() - before) / n
    out.update(time_single(lambda q: index.search(q, TOP_K, None, n), single))
    scores, labels = zip(*(index.search(q[None], TOP_K, None, n) for q in queries), strict=True)
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    out["recall_at_10"] = overlap_at_k(labels, truth[1])
    out["same_ids"] = float(np.mean(np.all(labels == truth[1], axis=1)))
    out["max_score_diff"] = float(np.abs(scores - truth[0]).max())
    out["widened_queries"] = index.describe()["exact_scan"]["widened"]
    out["max_error"] = index.describe()["exact_scan"].get("max_error")
    out["batched_qps"] = time_batched(lambda q: index.search(q, TOP_K, None, n), queries, args.batch)
    return out


def bench_coalescing(index: Any, queries: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """``--clients`` concurrent clients searching through the service's SearchBatcher: one query per search
    call (max_batch 1: one at a time) against coalesced batches (max_batch 64), same queries, one run."""
    import asyncio

    from clipmc.service.search_batching import SearchBatcher

    n = index.ntotal

    def search(vectors: np.ndarray, top_k: int, filters: Any) -> list[np.ndarray]:
        return list(index.search(vectors, top_k, None, n)[1])

    async def drive(max_batch: int) -> dict[str, Any]:
        batcher = SearchBatcher(search, max_batch=max_batch)
        batcher.start()
        per_client = args.coalesce_queries // args.clients
        latencies: list[float] = []

        async def client(c: int) -> None:
            for i in range(per_client):
                started = time.perf_counter()
                await batcher.search(queries[(c * per_client + i) % len(queries)], TOP_K)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(args.clients)))
        wall = time.perf_counter() - started
        calls = batcher.calls
        await batcher.stop()
        ms = np.asarray(latencies) * 1000
        return {
            "qps": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "search_calls": calls,
            "mean_batch": len(latencies) / max(1, calls),
        }

    out: dict[str, Any] = {"clients": args.clients, "queries": args.coalesce_queries}
    for _ in range(args.coalesce_repeats):  # alternate, so load drift hits both alike
        for name, max_batch in (("one_at_a_time", 1), ("coalesced", 64)):
            out.setdefault(name, []).append(asyncio.run(drive(max_batch)))
    for name in ("one_at_a_time", "coalesced"):
        runs = out[name]
        out[name] = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]} | {
            "qps_per_repeat": [round(r["qps"], 2) for r in runs]
        }
    out["speedup"] = out["coalesced"]["qps"] / out["one_at_a_time"]["qps"]
    logger.info("coalescing at n=%d, %d clients: x%.2f", n, args.clients, out["speedup"])
    return out


def bench_batch_scan(index: Any, queries: np.ndarray, truth: tuple[np.ndarray, np.ndarray],
                     args: argparse.Namespace, codes: str) -> dict[str, Any]:  # fmt: skip
    """IndexConfig.batch_scan="bf16" or "int8": batches from a bf16 or int8 copy (proven float32 re-rank), its
    agreement with float32, its memory, and the coalescing test again with it (singles still go to the exact
    scan, as do the queries the batch scan cannot prove)."""
    n = index.ntotal
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    index.attach_batch_scan(codes=codes, threads=args.scan_shards or faiss_threads())
    out: dict[str, Any] = {
        "build_s": time.perf_counter() - started,
        "bytes_per_item": (rss_bytes() - before) / n,
        "batch": args.batch,
    }
    out["batched_qps"] = time_batched(lambda q: index.search(q, TOP_K, None, n), queries, args.batch)
    found = [index.search(queries[i : i + args.batch], TOP_K, None, n) for i in range(0, len(queries), args.batch)]
    scores, labels = np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])
    out["same_ids"] = float(np.mean(np.all(labels == truth[1], axis=1)))
    out["max_score_diff"] = float(np.abs(scores - truth[0]).max())
    out["coalescing"] = bench_coalescing(index, queries, args)
    out["fallback_queries"] = index.describe()["batch_scan"]["fallbacks"]
    out["widened_queries"] = index.describe()["batch_scan"].get("widened")
    logger.info("n=%d %s batch scan: %s", n, codes, out)
    index.detach_batch_scan()
    return out


def faiss_threads() -> int:
    import faiss

    return int(faiss.omp_get_max_threads())


def bench_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from clipmc.gallery.index import VectorIndex

    result: dict[str, Any] = {"n": n, "dim": args.dim, "latent_dim": args.latent_dim, "load_before": load()}
    n_single = min(args.queries, max(20, 2_000_000 // n))  # fewer single queries for big galleries
    started = time.perf_counter()
    # The float32 vectors live once, in the gallery's own flat index (IndexIDMap2(IndexFlatIP)); NumPy and
    # the other indexes read that storage in place.
    rss0 = rss_bytes()
    master = VectorIndex.flat(args.dim)
    _, modality, queries = synthetic(
        n,
        args.dim,
        max(args.batch_queries, n_single),
        args.seed,
        args.latent_dim,
        sink=lambda start, block: master.add(np.arange(start, start + len(block)), block),
    )
    flat = faiss.downcast_index(master.cpu.index)
    vectors = faiss.rev_swig_ptr(flat.get_xb(), n * args.dim).reshape(n, args.dim)
    result["float32_bytes_per_item"] = (rss_bytes() - rss0) / n
    logger.info("n=%d: generated data in %.1fs (%.2f GB)", n, time.perf_counter() - started, vectors.nbytes / 1e9)
    single = queries[:n_single]

    # The reference and the old exact path, measured alternately with the new one below (same run).
    result["numpy"] = time_single(lambda q: numpy_search(vectors, q), single)
    result["numpy"]["batched_qps"] = time_batched(lambda q: numpy_search(vectors, q), queries, args.batch)
    logger.info("n=%d numpy: %s", n, result["numpy"])
    stats = time_single(lambda q: master.cpu.search(q, TOP_K), single)
    stats["batched_qps"] = time_batched(lambda q: master.cpu.search(q, TOP_K), queries, args.batch)
    truth = master.cpu.search(queries, TOP_K)
    stats["agreement_with_numpy"] = overlap_at_k(truth[1][:50], numpy_search(vectors, queries[:50]))
    result["faiss_flat"] = stats
    logger.info("n=%d faiss flat: %s", n, result["faiss_flat"])
    for codes in ("fp16", "int8"):
        result[f"exact_{codes}"] = bench_exact_scan(master, queries, single, truth, args, codes)
        logger.info("n=%d %s exact scan: %s", n, codes, result[f"exact_{codes}"])
        if codes == "fp16":
            master.detach_scan()  # one copy at a time, so each one's memory is measured alone
            gc.collect()
    result["numpy_again"] = time_single(lambda q: numpy_search(vectors, q), single)  # drift check
    numpy_p50 = float(np.mean([result["numpy"]["p50_ms"], result["numpy_again"]["p50_ms"]]))
    result["exact_vs_numpy"] = result["exact_fp16"]["p50_ms"] / numpy_p50
    result["exact_int8_vs_numpy"] = result["exact_int8"]["p50_ms"] / numpy_p50
    result["coalescing"] = bench_coalescing(master, queries, args)  # singles: int8 scan; batches: float32 master
    for codes in ("bf16", "int8"):
        result[f"batch_{codes}"] = bench_batch_scan(master, queries, truth, args, codes)
        gc.collect()
    master.detach_scan()  # the scan copy is freed before IVF takes its memory
    gc.collect()
    result["ivf"] = bench_ivf(vectors, queries, single, truth[1], args)
    fastest_exact = min(result["exact_fp16"]["p50_ms"], result["exact_int8"]["p50_ms"])
    for rows, key in (("nprobe", "speedup_vs_exact"), ("scan", "scan_speedup_vs_exact")):
        result["ivf"][key] = [round(fastest_exact / p["p50_ms"], 1) for p in result["ivf"][rows]]
    gc.collect()
    if n <= args.ingest_max:
        result.update(bench_gallery(np.array(vectors), modality, single, args))
    master.release()
    result["load_after"] = load()
    return result


def load() -> float | None:
    """The 1-minute load average: on a shared machine, what else was running shapes every number."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def machine() -> dict[str, Any]:
    import faiss

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gb,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss_gpus": faiss.get_num_gpus(),
        "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "faiss_omp_threads": faiss.omp_get_max_threads(),
    }


def markdown(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB "
        f"(load: 1-min load average before-after each size: "
        + ", ".join(f"{r['load_before']}-{r['load_after']}" for r in results)
        + f"); numpy {info['numpy']}, faiss {info['faiss']} (CPU, {info['faiss_omp_threads']} OpenMP threads). "
        f"dim {results[0]['dim']}, top-{TOP_K}, float32 vectors. Latency: one query at a time; batched QPS: "
        f"batches of queries. Synthetic clustered data (latent dim {results[0]['latent_dim'] or 'none: isotropic'}). "
        "Every ratio below compares methods measured in the same run.",
        "",
        "| gallery | method | p50 ms | p99 ms | QPS (single) | QPS (batched) | recall@10 | bytes / item |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(n: int, name: str, stats: dict[str, Any], recall: str = "1.000", memory: float | None = None) -> None:
        batched = f"{stats['batched_qps']:.0f}" if "batched_qps" in stats else "–"
        mem = f"{memory:,.0f}" if memory else "–"
        lines.append(
            f"| {n:,} | {name} | {stats['p50_ms']:.2f} | {stats['p99_ms']:.2f} | {stats['single_qps']:.1f} | "
            f"{batched} | {recall} | {mem} |"
        )

    for r in results:
        n, f32 = r["n"], r.get("float32_bytes_per_item")
        row(n, "NumPy brute force (float32)", r["numpy"], memory=f32)
        row(n, "FAISS IndexFlatIP (the gallery's exact search before)", r["faiss_flat"], memory=f32)
        for codes in ("fp16", "int8"):
            e = r.get(f"exact_{codes}")
            if e:
                default = " (default)" if codes == "int8" else ""
                name = f"gallery exact: {codes} scan x{e['shards']} + float32 re-rank{default}"
                row(n, name, e, f"{e['recall_at_10']:.3f}", (f32 or 0) + e["bytes_per_item"])
        for p in r["ivf"]["nprobe"]:
            name = f"FAISS IVF nlist={r['ivf']['nlist']} nprobe={p['nprobe']} (float32 lists)"
            row(n, name, p, f"{p['recall_at_10']:.3f}", r["ivf"].get("bytes_per_item"))
        for p in r["ivf"].get("scan", []):
            name = f"gallery IVF nprobe={p['nprobe']}: 8-bit lists + float32 re-rank (default)"
            memory = (r["ivf"].get("bytes_per_item") or 0) + r["ivf"]["scan_bytes_per_item"]
            row(n, name, p, f"{p['recall_at_10']:.3f}", memory)
        if "gallery_search" in r:
            row(n, "Gallery.search, exact (+ SQLite fetch)", r["gallery_search"])
            row(n, "Gallery.search, exact + modality filter", r["gallery_search_filtered"])
        g = r.get("gallery_ivf")
        if g:
            name = f"Gallery.search, IVF nprobe={g['nprobe']}"
            recall = f"{g['recall_at_10']:.3f}*"
            row(n, name, g["search"], recall)
            row(n, name + " + modality filter", g["search_filtered"], recall)
    lines += [
        "",
        "Ratios (same run): exact = the gallery's exact search (fp16 or int8 scan + proven float32 re-rank); "
        "NumPy p50 is the mean of its measurements before and after the scans. IVF speed-up: over the faster "
        "exact scan's p50 (float32 lists, and the gallery's 8-bit lists with the share of queries whose top-10 "
        "ids equal the float32 lists').",
        "",
        "| gallery | codes | exact p50 / NumPy p50 | exact p50 / IndexFlatIP p50 | same top-10 ids as float32 "
        "| max score diff | queries widened |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for codes, ratio in (("fp16", "exact_vs_numpy"), ("int8", "exact_int8_vs_numpy")):
            e = r.get(f"exact_{codes}")
            if e:
                lines.append(
                    f"| {r['n']:,} | {codes} | {r[ratio]:.2f} | {e['p50_ms'] / r['faiss_flat']['p50_ms']:.2f} | "
                    f"{e['same_ids']:.3f} | {e['max_score_diff']:.1e} | {e['widened_queries']} |"
                )
    lines += [
        "",
        "| gallery | IVF | nprobe | recall@10 | p50 ms | speed-up over exact p50 | same top-10 ids as float32 lists |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for label, rows, key in (("float32 lists", "nprobe", "speedup_vs_exact"),
                                 ("8-bit lists + re-rank (default)", "scan", "scan_speedup_vs_exact")):  # fmt: skip
            for sp, p in zip(r["ivf"].get(key, []), r["ivf"].get(rows, []), strict=True):
                same = f"{p['same_ids_as_float32_ivf']:.3f}" if "same_ids_as_float32_ivf" in p else "–"
                lines.append(
                    f"| {r['n']:,} | {label} | {p['nprobe']} | {p['recall_at_10']:.3f} | {p['p50_ms']:.2f} "
                    f"| x{sp} | {same} |"
                )
    lines += [
        "",
        "Search coalescing (service/search_batching.py): concurrent clients, each sending its next query when "
        "the last is answered, through the service's SearchBatcher over the gallery's exact index (one query: the "
        "int8 scan; a coalesced batch: the float32 master's matrix product, or the bf16 or int8 batch scan; "
        '`batch_scan="auto"`, the default, is int8 on a CPU whose integer product is exact, as this one\'s); the '
        "two modes alternate in one run.",
        "",
        "| gallery | batches from | clients | one at a time QPS | coalesced QPS | mean batch "
        "| p50 ms one / coalesced | speed-up |",
        "|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        batches = [('float32 master (`batch_scan="off"`)', r["coalescing"])]
        batches += [
            (f'{c} batch scan (`batch_scan="{c}"`)', r.get(f"batch_{c}", {}).get("coalescing"))
            for c in ("bf16", "int8")
        ]
        for label, c in batches:
            if not c:
                continue
            one, co = c["one_at_a_time"], c["coalesced"]
            lines.append(
                f"| {r['n']:,} | {label} | {c['clients']} | {one['qps']:.2f} | {co['qps']:.2f} "
                f"| {co['mean_batch']:.1f} | {one['p50_ms']:.0f} / {co['p50_ms']:.0f} | x{c['speedup']:.2f} |"
            )
    for r in results:
        for codes in ("bf16", "int8"):
            b = r.get(f"batch_{codes}")
            if not b:
                continue
            widened = f"{b['widened_queries']} re-ranked 4x wider, " if b.get("widened_queries") is not None else ""
            lines.append(
                f"\n{codes} batch scan (`IndexConfig.batch_scan`): batches of {b['batch']} at "
                f"{b['batched_qps']:.0f} QPS, same top-10 ids as float32 {b['same_ids']:.3f}, max score diff "
                f"{b['max_score_diff']:.1e}, {widened}{b['fallback_queries']} queries answered by the exact scan, "
                f"{b['bytes_per_item']:,.0f} bytes per item more, built in {b['build_s']:.1f} s."
            )
    lines += [
        "",
        "Gallery.search includes the filter mask and fetching the hits' items from SQLite. "
        "*: recall@10 the gallery measured itself when it built the index (100 stored vectors as queries, "
        "each query's own item left out). Bytes / item: growth of the process's resident memory while the index "
        "was filled, divided by the items (the exact rows: float32 master + the fp16 or int8 copy).",
        "",
        "| gallery | ingest items/s (Gallery.add) | snapshot s | reopen s | SQLite GB | FAISS IVF build s "
        "| gallery switch to IVF s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ingest = r.get("ingest")
        switch = f"{r['gallery_ivf']['switch_s']:.1f}" if "gallery_ivf" in r else "–"
        if ingest:
            lines.append(
                f"| {r['n']:,} | {ingest['items_per_s']:.0f} (batches of {ingest['batch']}) | "
                f"{ingest['snapshot_s']:.1f} | {ingest['reopen_s']:.1f} | {ingest['database_gb']:.2f} | "
                f"{r['ivf']['build_s']:.1f} | {switch} |"
            )
        else:
            lines.append(f"| {r['n']:,} | – | – | – | – | {r['ivf']['build_s']:.1f} | – |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    sizes = [r["n"] for r in results]
    left.plot(sizes, [r["numpy"]["p50_ms"] for r in results], "o-", label="NumPy brute force")
    left.plot(sizes, [r["faiss_flat"]["p50_ms"] for r in results], "s-", label="FAISS IndexFlatIP")
    left.plot(sizes, [r["exact_fp16"]["p50_ms"] for r in results], "*-", label="gallery exact (fp16 + re-rank)")
    if all("exact_int8" in r for r in results):
        left.plot(sizes, [r["exact_int8"]["p50_ms"] for r in results], "P-", label="gallery exact (int8 + re-rank)")
    if all("gallery_search" in r for r in results):
        left.plot(sizes, [r["gallery_search"]["p50_ms"] for r in results], "^-", label="Gallery.search (exact)")
    ivf_points = [(r["n"], r["gallery_ivf"]["search"]["p50_ms"]) for r in results if "gallery_ivf" in r]
    if ivf_points:
        nprobe = next(r["gallery_ivf"]["nprobe"] for r in results if "gallery_ivf" in r)
        left.plot(*zip(*ivf_points, strict=True), "v-", label=f"Gallery.search (IVF nprobe={nprobe})")
    probes = sorted({p["nprobe"] for r in results for p in r["ivf"]["nprobe"]})
    for nprobe in probes[1:3]:
        points = [(r["n"], p["p50_ms"]) for r in results for p in r["ivf"]["nprobe"] if p["nprobe"] == nprobe]
        left.plot(*zip(*points, strict=True), "d--", label=f"FAISS IVF nprobe={nprobe}")
    left.set(xscale="log", yscale="log", xlabel="gallery size", ylabel="p50 latency, one query (ms)")
    left.set_title(f"Top-{TOP_K} search latency, dim {results[0]['dim']}")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    for r in results:
        rows = r["ivf"]["nprobe"]
        right.plot([p["recall_at_10"] for p in rows], [p["batched_qps"] for p in rows], "o-",
                   label=f"n={r['n']:,}, float32 lists")  # fmt: skip
        scan = r["ivf"].get("scan", [])
        if scan:
            right.plot([p["recall_at_10"] for p in scan], [p["batched_qps"] for p in scan], "s--",
                       label=f"n={r['n']:,}, 8-bit lists + re-rank")  # fmt: skip
        for p in rows:
            right.annotate(str(p["nprobe"]), (p["recall_at_10"], p["batched_qps"]), fontsize=7)
        right.axhline(r["faiss_flat"]["batched_qps"], ls=":", lw=1, color=right.lines[-1].get_color())
    right.set(yscale="log", xlabel="recall@10 vs exact", ylabel="QPS (batched)")
    right.set_title("IVF: recall vs speed (labels: nprobe; dotted: exact)")
    right.grid(True, which="both", alpha=0.3)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="gallery sizes")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=200, help="most single queries timed per size")
    parser.add_argument("--batch", type=int, default=64, help="queries per batch for batched QPS")
    parser.add_argument("--batch-queries", type=int, default=256, help="queries used for batched QPS and recall")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--latent-dim", type=int, default=64, help="identity centres' subspace (0: isotropic)")
    parser.add_argument("--ingest-batch", type=int, default=1000, help="items per Gallery.add call")
    parser.add_argument("--ingest-max", type=int, default=10**9, help="skip the ingest phase above this size")
    parser.add_argument(
        "--gallery-ivf-min", type=int, default=100_000, help="from this size, also time the gallery's own IVF switch"
    )
    parser.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: FAISS's)")
    parser.add_argument("--scan-shards", type=int, default=None, help="exact scan shards (default: threads)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients for the coalescing test")
    parser.add_argument("--coalesce-queries", type=int, default=192, help="queries per coalescing run")
    parser.add_argument("--coalesce-repeats", type=int, default=2, help="alternating repeats of the two modes")
    parser.add_argument("--workdir", default=None, help="where the ingest gallery is written (default: temp dir)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-json", type=Path, default=None, help="only re-render the table and plot of a run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "search.md").write_text(markdown(saved["results"], saved["machine"]))
        plot(saved["results"], args.out / "search.png")
        print(f"wrote {args.out / 'search.md'} and {args.out / 'search.png'}")
        return 0
    if any(n < 100 for n in args.sizes):
        parser.error("sizes must be at least 100")

    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    info = machine()
    logger.info("machine: %s", info)
    results = []
    for n in sorted(args.sizes):
        started = time.perf_counter()
        results.append(bench_size(n, args))
        results[-1]["wall_s"] = time.perf_counter() - started
        gc.collect()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search.json").write_text(json.dumps({"machine": info, "top_k": TOP_K, "results": results}, indent=2))
    table = markdown(results, info)
    (args.out / "search.md").write_text(table)
    plot(results, args.out / "search.png")
    print(table)
    print(f"wrote {args.out / 'search.json'}, {args.out / 'search.md'}, {args.out / 'search.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
