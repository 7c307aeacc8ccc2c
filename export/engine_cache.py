"""The TensorRT engine cache (DESIGN.md section 6): one engine per key, built once, under a file lock.

An engine is only valid for the exact ONNX file, TensorRT version, GPU model and compute capability,
precision and optimisation profile it was built with, so those fields are the key. The cache is a
directory of `<digest>.engine` files, each with a `<digest>.json` sidecar holding the key and what a
runtime needs to know (embedding_version, embedding_dim, image size, profile). The sidecar is written
last and names the engine's sha256: a crash half-way leaves no entry that looks complete.

Several service workers starting together on a fresh host all ask for the same engine; the first takes
`<digest>.lock` and builds (minutes), the others wait on the lock and then load what it wrote.
Nothing here imports TensorRT, so the logic is tested on machines without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from clipmc.contract import atomic_write, file_sha256

from .base import EmbedderError

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "clipmc-trt-engine/1"
DEFAULT_LOCK_TIMEOUT_S = 3600.0  # a ViT-B/16 FP16 build takes minutes; an hour means a stuck builder


class EngineCacheError(EmbedderError):
    """An engine or its sidecar is missing, corrupt, or was built for something else (an EmbedderError,
    like ExportError: no TensorRT embedder can be made from it)."""


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; any change means a different engine."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"
    precision: str  # "fp16" | "fp32"
    profile: tuple[tuple[int, int, int], ...]  # per input (min, opt, max) batch
    batch_sizes: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = [list(p) for p in self.profile]
        d["batch_sizes"] = list(self.batch_sizes)
        return d

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON of the fields: the cache file name."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def batch_profile(batch_sizes: Sequence[int]) -> tuple[int, int, int]:
    """(min, opt, max) batch of the one optimisation profile: smallest, a middle one, largest."""
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise EngineCacheError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    return sizes[0], sizes[len(sizes) // 2], sizes[-1]


def make_key(
    *,
    onnx_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision: str,
    batch_sizes: Sequence[int],
) -> EngineKey:
    sizes = tuple(sorted({int(b) for b in batch_sizes}))
    profile = batch_profile(sizes)
    return EngineKey(
        onnx_sha256=onnx_sha256,
        tensorrt_version=tensorrt_version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        precision=precision,
        profile=(profile,),
        batch_sizes=sizes,
    )


def engine_paths(directory: str | os.PathLike, key: EngineKey) -> tuple[Path, Path, Path]:
    """(engine, sidecar, lock) paths of a key in a cache directory."""
    d = Path(directory)
    stem = key.digest[:32]
    return d / f"{stem}.engine", d / f"{stem}.json", d / f"{stem}.lock"


def read_sidecar(engine_path: str | os.PathLike, *, verify_hash: bool = False) -> dict[str, Any]:
    """The sidecar JSON of an engine file (`x.engine` -> `x.json`), checked against the engine."""
    engine = Path(engine_path)
    sidecar = engine.with_suffix(".json")
    if not engine.is_file():
        raise EngineCacheError(f"{engine}: engine file not found")
    if not sidecar.is_file():
        raise EngineCacheError(
            f"{sidecar}: missing; an engine needs the sidecar written by `clipmc export tensorrt` "
            "(it holds the embedding_version and the profile)"
        )
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EngineCacheError(f"{sidecar}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise EngineCacheError(f"{sidecar}: not a CLIP-MC engine sidecar (format != {SIDECAR_FORMAT!r})")
    if meta.get("engine_bytes") != engine.stat().st_size:
        raise EngineCacheError(f"{engine}: size differs from its sidecar (truncated or replaced)")
    if verify_hash and meta.get("engine_sha256") != file_sha256(engine):
        raise EngineCacheError(f"{engine}: sha256 differs from its sidecar (corrupt or replaced)")
    return meta


def cached_engine(
    directory: str | os.PathLike,
    key: EngineKey,
    build: Callable[[], tuple[bytes, dict[str, Any]]],
    *,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> Path:
    """The engine for `key` in `directory`, built with `build()` -> (serialized engine, sidecar fields)
    only if no valid one exists; builders of the same key are serialised by a file lock."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    engine, sidecar, lock_path = engine_paths(directory, key)
    found = _valid_entry(engine, key)
    if found:
        log.info("engine cache hit: %s", engine)
        return engine
    lock = FileLock(str(lock_path))
    log.info("engine cache miss for %s; waiting for the build lock %s", key.digest[:12], lock_path.name)
    t_wait = time.perf_counter()
    try:
        lock.acquire(timeout=lock_timeout_s)
    except Timeout as exc:
        raise EngineCacheError(
            f"{lock_path}: another process has held the build lock for {lock_timeout_s:.0f}s; if no build is "
            "running, delete the lock file"
        ) from exc
    try:
        waited = time.perf_counter() - t_wait
        if _valid_entry(engine, key):  # another worker built it while we waited
            log.info("engine built by another worker (waited %.1fs): %s", waited, engine)
            return engine
        t0 = time.perf_counter()
        data, fields = build()
        if not data:
            raise EngineCacheError("the engine build returned no data")
        build_s = time.perf_counter() - t0
        atomic_write(engine, bytes(data))
        meta = {
            **fields,
            "format": SIDECAR_FORMAT,
            "key": key.to_dict(),
            "key_digest": key.digest,
            "engine_file": engine.name,
            "engine_bytes": len(data),
            "engine_sha256": hashlib.sha256(data).hexdigest(),
            "build_seconds": round(build_s, 2),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write(sidecar, json.dumps(meta, indent=2, sort_keys=True).encode())
        log.info("engine built in %.1fs: %s (%.1f MB)", build_s, engine, len(data) / 1e6)
        return engine
    finally:
        lock.release()


def _valid_entry(engine: Path, key: EngineKey) -> bool:
    if not (engine.is_file() and engine.with_suffix(".json").is_file()):
        return False
    try:
        meta = read_sidecar(engine, verify_hash=True)
    except EngineCacheError as exc:
        log.warning("ignoring cache entry: %s", exc)
        return False
    return meta.get("key_digest") == key.digest
