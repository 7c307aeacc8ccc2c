"""Reliability reruns of the service: fuzzing, kill -9 during ingest, and a soak under concurrent load.

Each mode starts the service itself (``python -m clipmc.cli serve`` in a subprocess on a free
127.0.0.1 port, a randomly initialised ``tiny`` checkpoint, a fresh gallery in a temporary folder),
runs a bounded workload, stops it, and writes ``reliability-<mode>.json`` and ``.md`` (and, for the
soak, a ``.png`` of the server's memory over time) under ``--out``. Nothing leaves the machine.

    python benchmarks/reliability.py fuzz --max-examples 200        # needs: pip install schemathesis
    python benchmarks/reliability.py kill --cycles 5
    python benchmarks/reliability.py soak --clients 32 --seconds 300

- ``fuzz``: schemathesis generates requests from the service's OpenAPI document for every route
  (with an admin key, so the routes run past auth) and checks ``not_a_server_error``. The counts come
  from the server's own ``/metrics`` (requests by status), so they do not depend on the
  schemathesis version's report format. Pass: 0 responses with status 500 or above.
- ``kill``: per cycle, a client streams ``POST /gallery/ingest`` batches with unique external ids and
  records the acknowledged ones (HTTP 200); the server is killed with SIGKILL at a random moment
  (``--min-s`` to ``--max-s`` after the start of the stream) and restarted on the same gallery. At
  the end the gallery is opened directly: every acknowledged crop must be there (lost = 0), and every
  batch must be there entirely or not at all (partial = 0).
- ``soak``: ``--clients`` concurrent clients send ``POST /query`` for ``--seconds``; the server's RSS
  is sampled every second. Pass: 0 errors, and the RSS of the last quarter within 10% of the second
  quarter's (flat memory once warm).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.service import crops, free_port, make_checkpoint  # noqa: E402

logger = logging.getLogger("benchmarks.reliability")
ADMIN_KEY = "reliability-admin-key-0001"


class Server:
    """``clipmc serve`` in a subprocess on a loopback port; ``start`` waits for /readyz."""

    def __init__(self, weights: Path, gallery: Path, log_path: Path, api_keys: str | None = None, **env: str) -> None:
        self.weights, self.gallery, self.log_path, self.api_keys = weights, gallery, log_path, api_keys
        self.extra_env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 300.0) -> Server:
        import httpx

        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPMC_")}
        env.update(CLIPMC_LOG_LEVEL="warning", CLIPMC_MAX_QUEUE="100000")
        if self.api_keys:
            env["CLIPMC_API_KEYS"] = self.api_keys
        env.update(self.extra_env)
        cmd = [sys.executable, "-m", "clipmc.cli", "serve", "--weights", str(self.weights)]
        cmd += ["--gallery", str(self.gallery), "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready in {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss_bytes(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():  # type: ignore[union-attr]
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (OSError, AttributeError):
            return None
        return None


def status_counts(url: str, headers: dict[str, str]) -> dict[str, int]:
    """Requests answered so far by status, from the server's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, int] = {}
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "clipmc_http_requests_total":
                status = sample.labels["status"]
                counts[status] = counts.get(status, 0) + int(sample.value)
    return counts


def machine() -> str:
    """CPU model and core count as this process sees them, and the load average now."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"


# -- fuzz ---------------------------------------------------------------------------------------------


def run_fuzz(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    beside = Path(sys.executable).parent / "schemathesis"  # installed in this interpreter's environment
    st = str(beside) if beside.is_file() else shutil.which("schemathesis")
    if st is None:
        raise SystemExit("fuzz needs schemathesis: pip install schemathesis")
    weights = make_checkpoint("tiny", work)
    # The failed-authentication limit is off here: schemathesis sends wrong keys on purpose, and a 429
    # for the rest of the run would stop it from reaching the routes behind auth.
    server = Server(
        weights, work / "gallery", work / "server.log", api_keys=f"{ADMIN_KEY}:admin", CLIPMC_AUTH_FAILURE_LIMIT="0"
    ).start()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        before = status_counts(server.url, headers)
        cmd = [st, "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error"]
        cmd += ["--max-examples", str(args.max_examples), "--seed", str(args.seed)]
        cmd += ["-H", f"Authorization: Bearer {ADMIN_KEY}", "--workers", "1"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=args.timeout)
        seconds = time.perf_counter() - started
        (work / "schemathesis.log").write_text(proc.stdout + proc.stderr)
        after = status_counts(server.url, headers)
    finally:
        server.stop()
    by_status = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after)}
    by_status = {k: v for k, v in by_status.items() if v}
    server_errors = sum(v for k, v in by_status.items() if k.isdigit() and int(k) >= 500)
    return {
        "mode": "fuzz",
        "max_examples": args.max_examples,
        "seed": args.seed,
        "requests": sum(by_status.values()),
        "by_status": by_status,
        "server_errors": server_errors,
        "schemathesis_exit": proc.returncode,
        "seconds": round(seconds, 1),
        "passed": server_errors == 0,
    }


# -- kill -9 during ingest ------------------------------------------------------------------------------


def run_kill(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import httpx

    from clipmc.gallery import open_gallery

    weights = make_checkpoint("tiny", work)
    images = crops(64, camera=1, seed=1)
    gallery = work / "gallery"
    acknowledged: dict[str, list[str]] = {}  # batch name -> its external ids
    rng = random.Random(args.seed)
    cycles = []
    for cycle in range(args.cycles):
        server = Server(weights, gallery, work / "server.log").start()
        stop = threading.Event()

        def stream(url: str = server.url, cycle: int = cycle, stop: threading.Event = stop) -> None:
            n = 0
            with httpx.Client(base_url=url, timeout=60) as client:
                while not stop.is_set():
                    name = f"c{cycle}-b{n}"
                    ids = [f"{name}-{i}" for i in range(args.batch)]
                    items = [{"external_id": e, "modality": "visible", "camera": "1"} for e in ids]
                    files = [
                        ("images", (f"{i}.png", images[(n + i) % len(images)], "image/png")) for i in range(len(ids))
                    ]
                    try:
                        r = client.post("/gallery/ingest", files=files, data={"items": json.dumps(items)})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code == 200:
                        acknowledged[name] = ids
                    n += 1

        thread = threading.Thread(target=stream, daemon=True)
        thread.start()
        delay = rng.uniform(args.min_s, args.max_s)
        time.sleep(delay)
        server.kill()
        stop.set()
        thread.join(timeout=60)
        cycles.append({"cycle": cycle, "killed_after_s": round(delay, 2)})
        logger.info("cycle %d: killed after %.1f s, %d batches acknowledged so far", cycle, delay, len(acknowledged))
    stored: set[str] = set()
    with open_gallery(gallery, read_only=True) as g:
        for batch in g.iter_items(with_vectors=False):
            stored.update(item.external_id for item in batch if item.external_id)
    acked_ids = [e for ids in acknowledged.values() for e in ids]
    lost = [e for e in acked_ids if e not in stored]
    by_batch: dict[str, int] = {}
    for external_id in stored:
        name = external_id.rsplit("-", 1)[0]
        by_batch[name] = by_batch.get(name, 0) + 1
    partial = sorted(name for name, n in by_batch.items() if n != args.batch)
    return {
        "mode": "kill",
        "cycles": args.cycles,
        "batch": args.batch,
        "acknowledged_crops": len(acked_ids),
        "stored_crops": len(stored),
        "lost": len(lost),
        "partial_batches": len(partial),
        "per_cycle": cycles,
        "passed": not lost and not partial,
    }


# -- soak ------------------------------------------------------------------------------------------------


def run_soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import httpx

    weights = make_checkpoint("tiny", work)
    server = Server(weights, work / "gallery", work / "server.log").start()
    try:
        gallery_images = crops(args.gallery_size, camera=1, seed=2)
        with httpx.Client(base_url=server.url, timeout=300) as client:
            for start in range(0, len(gallery_images), 32):
                part = gallery_images[start : start + 32]
                items = [{"external_id": f"g{start + i}", "modality": "visible"} for i in range(len(part))]
                files = [("images", (f"{i}.png", d, "image/png")) for i, d in enumerate(part)]
                client.post("/gallery/ingest", files=files, data={"items": json.dumps(items)}).raise_for_status()
        queries = crops(32, camera=3, seed=3)
        samples: list[tuple[float, int]] = []
        errors: dict[str, int] = {}
        ok = 0
        started = time.monotonic()
        end = started + args.seconds

        async def client_loop(http: httpx.AsyncClient, k: int) -> None:
            nonlocal ok
            i = k
            while time.monotonic() < end:
                files = {"image": ("q.png", queries[i % len(queries)], "image/png")}
                try:
                    r = await http.post("/query", files=files, data={"modality": "infrared", "top_k": "10"})
                    key = None if r.status_code == 200 else str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                if key is None:
                    ok += 1
                else:
                    errors[key] = errors.get(key, 0) + 1
                i += args.clients

        async def sampler() -> None:
            while time.monotonic() < end:
                rss = server.rss_bytes()
                if rss is not None:
                    samples.append((time.monotonic() - started, rss))
                await asyncio.sleep(1.0)

        async def main() -> None:
            limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
            async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
                await asyncio.gather(sampler(), *(client_loop(http, k) for k in range(args.clients)))

        asyncio.run(main())
    finally:
        server.stop()
    rss = [r for _, r in samples]
    q = max(1, len(rss) // 4)
    second, last = rss[q : 2 * q] or rss, rss[-q:]
    growth = (sum(last) / len(last)) / (sum(second) / len(second)) - 1.0 if rss else float("nan")
    result = {
        "mode": "soak",
        "clients": args.clients,
        "seconds": args.seconds,
        "requests_ok": ok,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "rss_mb_start": round(rss[0] / 2**20, 1) if rss else None,
        "rss_mb_max": round(max(rss) / 2**20, 1) if rss else None,
        "rss_mb_end": round(rss[-1] / 2**20, 1) if rss else None,
        "rss_growth_last_vs_second_quarter": round(growth, 4),
        "samples": [(round(t, 1), r) for t, r in samples],
        "passed": not errors and abs(growth) <= 0.10,
    }
    return result


def plot_soak(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in result["samples"]]
    mb = [s[1] / 2**20 for s in result["samples"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, mb)
    ax.set_xlabel("seconds")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title(f"soak: {result['clients']} clients, {result['requests_ok']} queries, {result['errors']} errors")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    rows = [(k, v) for k, v in result.items() if k not in ("samples", "per_cycle", "machine")]
    lines = [f"# reliability: {result['mode']}", "", f"machine: {result['machine']}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    fuzz = sub.add_parser("fuzz", help="schemathesis against every route; counts 5xx answers")
    fuzz.add_argument("--max-examples", type=int, default=100, help="examples per operation (default 100)")
    fuzz.add_argument("--seed", type=int, default=0)
    fuzz.add_argument("--timeout", type=float, default=3600.0, help="seconds before schemathesis is stopped")
    kill = sub.add_parser("kill", help="kill -9 the server during HTTP ingest, restart, count lost crops")
    kill.add_argument("--cycles", type=int, default=5)
    kill.add_argument("--batch", type=int, default=8, help="crops per ingest request")
    kill.add_argument("--min-s", type=float, default=3.0)
    kill.add_argument("--max-s", type=float, default=8.0)
    kill.add_argument("--seed", type=int, default=0)
    soak = sub.add_parser("soak", help="concurrent queries for a while; server memory and errors")
    soak.add_argument("--clients", type=int, default=32)
    soak.add_argument("--seconds", type=float, default=300.0)
    soak.add_argument("--gallery-size", type=int, default=256)
    for p in (fuzz, kill, soak):
        p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    runner = {"fuzz": run_fuzz, "kill": run_kill, "soak": run_soak}[args.mode]
    with tempfile.TemporaryDirectory(prefix=f"clipmc-reliability-{args.mode}-") as tmp:
        load_before = os.getloadavg()[0]
        result = runner(args, Path(tmp))
    result["machine"] = machine() + f" (load {load_before:.1f} at the start)"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"reliability-{args.mode}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    if args.mode == "soak":
        plot_soak(result, stem.with_suffix(".png"))
    print(markdown(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
