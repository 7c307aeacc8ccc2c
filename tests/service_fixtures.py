"""Helpers for the service tests: a real uvicorn server in a thread, synthetic crops, crafted bad files."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from PIL import Image

from clipmc.model.synth import render_image

# SYSU-MM01 cameras: 1, 2, 4, 5 are visible, 3 and 6 infrared.
VISIBLE_CAMERAS = (1, 2)
INFRARED_CAMERA = 3
KEYS = {"query": "query-key-0123", "ingest": "ingest-key-4567", "admin": "admin-key-89ab"}
API_KEYS = f"{KEYS['query']}:query;{KEYS['ingest']}:ingest,query;{KEYS['admin']}:admin"


def crop_array(pid: int, camera: int, index: int = 0, size: tuple[int, int] = (128, 64)) -> np.ndarray:
    modality = 1 if camera in (3, 6) else 0
    return render_image(0, "sysu", pid, camera, modality, index, size=size)


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def crop_bytes(pid: int, camera: int, index: int = 0, fmt: str = "PNG") -> bytes:
    """A synthetic person crop (infrared cameras give a grey image, saved single-channel)."""
    array = crop_array(pid, camera, index)
    return encode(array, fmt, "L" if camera in (3, 6) else None)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_header(width: int, height: int, mode_bits: tuple[int, int] = (1, 0)) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb in a few bytes)."""
    bit_depth, colour_type = mode_bits
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    data = crop_bytes(5, 1, fmt="JPEG")
    return data[: len(data) // 2]


class GatedEmbedder:
    """Wraps an embedder so that warm-up waits for the test: makes /readyz observable."""

    def __init__(self, inner: Any, gate: threading.Event) -> None:
        self._inner = inner
        self._gate = gate

    def warmup(self) -> None:
        if not self._gate.wait(30):
            raise TimeoutError("gate never opened")
        self._inner.warmup()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class LiveServer:
    """A uvicorn server on a free loopback port, in a thread, with the app's lifespan."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.port = 0

    def start(self, timeout: float = 60.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the test server failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> Any:
        return self.app.state.service

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0, **kwargs)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while c.get("/readyz").status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not ready: {self.state.status}")
                time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextmanager
def live_server(app: Any, *, ready: bool = True) -> Iterator[LiveServer]:
    server = LiveServer(app).start()
    try:
        if ready:
            server.wait_ready()
        yield server
    finally:
        server.stop()


def ingest_multipart(
    client: httpx.Client, crops: list[tuple[bytes, dict[str, Any]]], filename: str = "crop.png"
) -> httpx.Response:
    import json

    files = [("images", (filename, data, "application/octet-stream")) for data, _ in crops]
    return client.post("/gallery/ingest", files=files, data={"items": json.dumps([meta for _, meta in crops])})


def query_multipart(client: httpx.Client, image: bytes, **fields: Any) -> httpx.Response:
    return client.post(
        "/query",
        files={"image": ("q.png", image, "application/octet-stream")},
        data={k: str(v) for k, v in fields.items()},
    )


def settings_for(tmp: Path, **overrides: Any) -> Any:
    from clipmc.service.settings import Settings

    values: dict[str, Any] = {
        "weights": "unused-the-tests-pass-an-embedder",
        "gallery": tmp / "gallery",
        "batch_sizes": (1, 8),
        "max_batch": 8,
        "max_wait_ms": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


# A hand-written calibration: a piecewise-linear similarity -> probability map whose steep part lies in
# the range of the untrained tiny model's similarities (about 0.85 to 0.95).
CAL_SCORES = [-1.0, 0.85, 0.92, 1.0]
CAL_PROBS = [0.0, 0.05, 0.6, 1.0]


def write_calibration(path: Path, embedding_version: str, threshold: float) -> Path:
    """A calibration.json in the format of clipmc.model.calibration, written by hand (a test input, not fitted)."""
    import json

    path.write_text(
        json.dumps(
            {
                "format": "clipmc-calibration/1",
                "embedding_version": embedding_version,
                "scores": CAL_SCORES,
                "probabilities": CAL_PROBS,
                "threshold": threshold,
                "target_fmr": 0.01,
                "fmr_at_threshold": 0.009,
                "tmr_at_threshold": 0.8,
                "fitted_on": {"note": "written by hand in a test"},
            }
        )
    )
    return path
