"""`clipmc serve` and `clipmc ingest`: run the service, and bulk-load a folder of crops through its API."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clipmc.contract import IMAGE_SUFFIXES

log = logging.getLogger("clipmc.service")


class CommandError(Exception):
    """A configuration problem found before the server starts (printed as one line, exit 2)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP service (query, ingest, web page)",
        description="Run the service. Flags override CLIPMC_* environment variables, which override the "
        "config file; defaults: the fastest runtime this host has (--backend auto), weights 'openai', a FAISS "
        "gallery under ./data/gallery.",
    )
    p.add_argument("--config", type=Path, help="TOML or JSON settings file (also CLIPMC_CONFIG)")
    p.add_argument("--weights", help="checkpoint directory, 'openai', an .onnx or an .engine file")
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime", "tensorrt"),
        help="auto (default): TensorRT on a CUDA host with TensorRT, else ONNX Runtime",
    )
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16", "bf16", "int8"),
        help="auto (default): fp16 on TensorRT, fp32 elsewhere; int8/bf16: CPU opt-ins (run clipmc verify first)",
    )
    p.add_argument("--engine-dir", type=Path, help="cache of exported ONNX graphs and TensorRT engines")
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE",
        help="calibration.json from clipmc calibrate (default: the checkpoint directory's, if it has one)",
    )
    p.add_argument("--gallery", type=Path, help="gallery directory (FAISS back-end)")
    p.add_argument("--gallery-backend", choices=("faiss", "milvus"))
    p.add_argument("--milvus-uri", help="Milvus server or milvus-lite file (gallery back-end milvus)")
    p.add_argument("--host", help="address to bind (loopback only unless API keys are configured)")
    p.add_argument("--port", type=int)
    p.add_argument("--max-batch", type=int, help="largest dynamic batch (1 turns batching off)")
    p.add_argument("--max-wait-ms", type=float, help="longest wait for a batch to fill")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-json", action="store_true", default=None, help="JSON lines logs")
    p.set_defaults(func=cmd_serve)

    q = sub.add_parser(
        "ingest",
        help="add a folder of crops to a running service's gallery",
        description="Upload every image under DIR through POST /gallery/ingest. The external_id of a crop is "
        "CAMERA:PATH (PATH relative to DIR), so folders of several cameras with the same layout do not collide "
        "and running the command again adds nothing twice.",
    )
    q.add_argument("directory", type=Path, metavar="DIR")
    q.add_argument("--camera", required=True, help="camera id of these crops")
    q.add_argument("--modality", required=True, choices=("visible", "infrared"))
    q.add_argument("--url", default="http://127.0.0.1:8000", help="service address (default %(default)s)")
    q.add_argument("--api-key", default=None, help="key with the ingest scope (default: $CLIPMC_API_KEY)")
    q.add_argument("--batch", type=int, default=16, help="crops per request (default %(default)s)")
    q.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)")
    q.set_defaults(func=cmd_ingest)

    from clipmc.service import demo  # light at import: its heavy imports are inside the command

    demo.register(sub)


# -- serve ------------------------------------------------------------------------------------------


def serve_settings(args: argparse.Namespace) -> Any:
    from clipmc.service.settings import load_settings

    return load_settings(
        config=args.config,
        weights=args.weights,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        engine_dir=args.engine_dir,
        calibration=args.calibration,
        gallery=args.gallery,
        gallery_backend=args.gallery_backend,
        milvus_uri=args.milvus_uri,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        log_level=args.log_level,
        log_json=args.log_json,
    )


def bind_host(settings: Any) -> str:
    """The address to bind: a non-loopback host without API keys is overridden to 127.0.0.1, loudly."""
    from clipmc.service.settings import is_loopback

    if settings.auth_enabled or is_loopback(settings.host):
        return settings.host
    log.warning(
        "!!! no API key is configured (CLIPMC_API_KEYS), so the service binds 127.0.0.1 instead of %s: "
        "an unauthenticated re-identification service must not be reachable from the network. "
        "Configure API keys to listen on %s.",
        settings.host,
        settings.host,
    )
    return "127.0.0.1"


def cmd_serve(args: argparse.Namespace) -> int:
    from clipmc.service.logs import configure_logging

    try:
        settings = serve_settings(args)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError: name every bad setting
        print(f"clipmc serve: invalid settings: {_one_line(exc)}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    try:
        return _serve(settings)
    except CommandError as exc:
        print(f"clipmc serve: error: {exc}", file=sys.stderr)
        return 2


def _serve(settings: Any) -> int:
    import uvicorn

    from clipmc.export import EmbedderError
    from clipmc.gallery import GalleryError, GalleryStateError
    from clipmc.model.calibration import CalibrationError
    from clipmc.model.checkpoint import CheckpointError
    from clipmc.model.factory import PretrainedWeightsError
    from clipmc.service.app import build_embedder, create_app, load_service_calibration, open_service_gallery

    host = bind_host(settings)
    log.info("loading the model: %s back-end, weights %s on %s", settings.backend, settings.weights, settings.device)
    try:
        embedder = build_embedder(settings)
    except (PretrainedWeightsError, EmbedderError, CheckpointError, FileNotFoundError) as exc:
        raise CommandError(_one_line(exc)) from None
    try:
        calibration = load_service_calibration(settings, embedder)
    except CalibrationError as exc:
        embedder.close()
        raise CommandError(_one_line(exc)) from None
    try:
        gallery = open_service_gallery(settings, embedder)
    except GalleryError as exc:  # VersionMismatchError included: refuse to mix two models' vectors
        raise CommandError(
            f"{_one_line(exc)}. Serve this gallery with the model that built it, or pick another --gallery "
            "directory and re-ingest."
        ) from None
    except GalleryStateError as exc:  # locked by another process, back-end not installed, ...
        raise CommandError(_one_line(exc)) from None
    try:
        # refuses an incompatible pair
        app = create_app(settings, embedder=embedder, gallery=gallery, calibration=calibration)
        config = uvicorn.Config(
            app,
            host=host,
            port=settings.port,
            log_config=None,  # keep our logging configuration (text or JSON lines)
            access_log=False,  # the service logs each request itself, with its route and duration
            proxy_headers=False,
            server_header=False,
        )
        log.info("serving on http://%s:%d (web page at /, API docs at /docs)", host, settings.port)
        server = uvicorn.Server(config)
        server.run()
        return 0 if server.started else 1
    except ValueError as exc:
        raise CommandError(_one_line(exc)) from None
    finally:
        gallery.close()
        embedder.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# -- ingest -----------------------------------------------------------------------------------------


def find_images(directory: Path) -> list[Path]:
    """Image files under ``directory`` (recursively), sorted so that runs are reproducible."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _batches(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def external_id(camera: str, relative_path: str) -> str:
    """The external id ``clipmc ingest`` gives a crop: ``CAMERA:PATH``, PATH relative to the folder.

    The camera is part of it because camera folders often share one layout (``0001/0001.jpg`` under
    each of SYSU-MM01's cam1..cam6): keyed by the path alone, the second camera's crops would be taken
    for the first's. A camera id holds no ':', so the first ':' splits the two unambiguously.
    """
    return f"{camera}:{relative_path}"


class IngestClient:
    """Posts crops to ``/gallery/ingest``; a refused batch is retried file by file to isolate bad files."""

    def __init__(self, url: str, api_key: str | None, timeout: float, root: Path, camera: str, modality: str) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.root = root
        self.camera = camera
        self.modality = modality

    def close(self) -> None:
        self.http.close()

    def _item(self, path: Path) -> dict[str, Any]:
        rel = path.relative_to(self.root).as_posix()
        return {
            "external_id": external_id(self.camera, rel),
            "modality": self.modality,
            "camera": self.camera,
            "metadata": {"path": rel},
        }

    def post(self, paths: list[Path], retries: int = 5) -> Any:
        """One request; a 503 (warming up, overloaded) is retried after the server's Retry-After."""
        files = [("images", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
        data = {"items": json.dumps([self._item(p) for p in paths])}
        for _ in range(retries):
            response = self.http.post("/gallery/ingest", files=files, data=data)
            if response.status_code != 503:
                break
            try:
                delay = float(response.headers.get("retry-after", "2"))
            except ValueError:
                delay = 2.0
            time.sleep(min(max(delay, 0.1), 30.0))
        return response


def _error_text(response: Any) -> str:
    try:
        err = response.json()["error"]
        return f"{err['message']} ({err['code']}, HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def cmd_ingest(args: argparse.Namespace) -> int:
    import httpx
    from tqdm import tqdm

    root: Path = args.directory
    if not root.is_dir():
        print(f"clipmc ingest: error: {root} is not a directory", file=sys.stderr)
        return 2
    if args.batch < 1:
        print("clipmc ingest: error: --batch must be >= 1", file=sys.stderr)
        return 2
    if ":" in args.camera or not args.camera.strip():
        print(f"clipmc ingest: error: --camera {args.camera!r} must be non-empty and hold no ':'", file=sys.stderr)
        return 2
    paths = find_images(root)
    if not paths:
        print(f"clipmc ingest: error: no images ({', '.join(IMAGE_SUFFIXES)}) under {root}", file=sys.stderr)
        return 2
    api_key = args.api_key or os.environ.get("CLIPMC_API_KEY")
    client = IngestClient(args.url, api_key, args.timeout, root, args.camera, args.modality)
    created = existing = 0
    skipped: list[tuple[Path, str]] = []
    try:
        with tqdm(total=len(paths), unit="crop", desc="ingest") as bar:
            for batch in _batches(paths, args.batch):
                response = client.post(batch)
                if response.status_code in (413, 415, 422) and len(batch) > 1:
                    outcomes = [(p, client.post([p])) for p in batch]  # all-or-nothing: find the bad file(s)
                else:
                    outcomes = [(batch, response)]
                for what, resp in outcomes:
                    if resp.status_code == 200:
                        body = resp.json()
                        created += body["created"]
                        existing += body["existing"]
                    elif resp.status_code in (413, 415, 422):
                        for p in what if isinstance(what, list) else [what]:
                            skipped.append((p, _error_text(resp)))
                    else:
                        raise CommandError(f"{args.url} refused the batch: {_error_text(resp)}")
                bar.update(len(batch))
    except CommandError as exc:
        print(f"clipmc ingest: error: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"clipmc ingest: error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
    print(f"{created} added, {existing} already in the gallery, {len(skipped)} skipped")
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 1 if skipped else 0
