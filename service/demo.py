"""``clipmc demo`` (``make demo``): from nothing to the web page with a gallery, offline, in one command.

Steps, each skipped when its output is already there (so a second run starts in seconds):

1. ``clipmc synth``: a synthetic SYSU-MM01-layout dataset (60 identities, 20 of them test).
2. ``clipmc train`` with ``configs/tiny-synth.json``: the randomly initialised ``tiny`` model (no CLIP
   weights, nothing downloaded), checkpoint chosen on validation identities.
3. ``clipmc calibrate`` on the identities the run held out for selection (not the test ones), so
   that the page shows match probabilities and marks matches at a 1% false-match rate.
4. The service on 127.0.0.1 with a fresh gallery; the visible crops of the *test* identities are
   ingested through ``POST /gallery/ingest`` (identity, a track per identity and camera, and made-up
   timestamps so the page's time filter has something to filter), then the command prints which
   infrared test crops to upload, one identity's crops together as a tracklet.

Everything is SYNTHETIC: drawn people, a tiny model trained for minutes; the scores show how the
system behaves, not how well CLIP-MC re-identifies real people.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger("clipmc.service.demo")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "tiny-synth.json"
#: Made-up capture times of the demo gallery: from this moment, one minute per crop index, an hour per camera.
DEMO_EPOCH = 1_704_096_000.0  # 2024-01-01T08:00:00Z
INGEST_BATCH = 32


class DemoError(Exception):
    """A step of the demo failed (printed as one line)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="synthetic data, a tiny model trained here, a gallery and the web page (offline)",
        description="Make a synthetic dataset, train the tiny model (minutes on a CPU), ingest the visible "
        "test crops into a gallery and serve the web page on 127.0.0.1. Steps already done are skipped.",
    )
    p.add_argument("--dir", type=Path, default=Path("data/demo"), help="where everything goes (default %(default)s)")
    p.add_argument("--ids", type=int, default=60, help="synthetic identities (default %(default)s, a third test)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training options (default: tiny-synth)")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default %(default)s)")
    p.add_argument("--no-serve", action="store_true", help="stop after ingesting and printing (for timing, tests)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import sys

    started = time.perf_counter()
    try:
        if not args.config.is_file():
            raise DemoError(f"training config {args.config} not found (run from the repository, or pass --config)")
        synth, checkpoint = prepare(args.dir, args.ids, args.config)
        return serve_demo(args.dir, synth, checkpoint, args.port, started, serve=not args.no_serve)
    except DemoError as exc:
        print(f"clipmc demo: error: {exc}", file=sys.stderr)
        return 2


def _run(argv: list[str], what: str) -> None:
    from clipmc.cli import main

    log.info("demo: %s: clipmc %s", what, " ".join(argv))
    code = main(argv)
    if code != 0:
        raise DemoError(f"{what} failed (clipmc {' '.join(argv)} exited {code})")


def prepare(directory: Path, ids: int, config: Path) -> tuple[Path, Path]:
    """Steps 1-3: the synthetic dataset and the trained (and, where possible, calibrated) checkpoint."""
    synth, run = directory / "synth", directory / "run"
    if not (synth / "exp" / "test_id.txt").is_file():
        if synth.exists() and any(synth.iterdir()):
            raise DemoError(f"{synth} holds an incomplete dataset: delete it and run the demo again")
        _run(["synth", "--layout", "sysu", "--out", str(synth), "--ids", str(ids)], "synthetic dataset")
    checkpoint = run / "best"
    if not (checkpoint / "config.json").is_file():
        _run(
            ["train", "--dataset", "sysu", "--data-root", str(synth), "--config", str(config), "--out", str(run)],
            "training",
        )
    if not (checkpoint / "config.json").is_file():
        raise DemoError(f"training wrote no checkpoint at {checkpoint}")
    from clipmc.model.calibration import CALIBRATION_FILE

    if not (checkpoint / CALIBRATION_FILE).is_file():
        _calibrate(checkpoint, synth)
    return synth, checkpoint


def _calibrate(checkpoint: Path, synth: Path) -> None:
    """Fit the same-person calibration on the identities the run held out for selection (never test ones)."""
    _run(["calibrate", "--checkpoint", str(checkpoint), "--dataset", "sysu", "--data-root", str(synth)], "calibration")


def demo_crops(synth: Path) -> tuple[list[Any], list[Any]]:
    """(visible test crops, infrared test crops) of the synthetic SYSU-MM01 tree, as dataset records."""
    from clipmc.model.data.base import list_identity_folders
    from clipmc.model.data.records import INFRARED, VISIBLE
    from clipmc.model.data.sysu import INFRARED_CAMERAS, VISIBLE_CAMERAS, SYSUDataset

    dataset = SYSUDataset(synth)
    where = f"demo dataset at {synth}"
    visible = list_identity_folders(synth, dataset.test_ids, [(c, f"cam{c}") for c in VISIBLE_CAMERAS], VISIBLE, where)
    infrared = list_identity_folders(
        synth, dataset.test_ids, [(c, f"cam{c}") for c in INFRARED_CAMERAS], INFRARED, where
    )
    return visible, infrared


def ingest_items(records: list[Any], synth: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(file, ingest metadata) per visible test crop: identity, a track per (identity, camera), a made-up time."""
    out = []
    index: dict[tuple[int, int], int] = defaultdict(int)
    for r in records:
        i = index[(r.pid, r.camid)]
        index[(r.pid, r.camid)] += 1
        path = Path(r.path)
        out.append(
            (
                path,
                {
                    "external_id": path.relative_to(synth).as_posix(),
                    "modality": "visible",
                    "camera": str(r.camid),
                    "identity": str(r.pid),
                    "track_id": f"{r.pid}",  # one track per identity within a camera
                    "timestamp": DEMO_EPOCH + 3600.0 * r.camid + 60.0 * (r.pid % 50) + i,
                },
            )
        )
    return out


def serve_demo(directory: Path, synth: Path, checkpoint: Path, port: int, started: float, *, serve: bool) -> int:
    """Step 4: start the service, ingest the visible test crops through its API, print what to try."""
    import uvicorn

    from clipmc.service.app import build_embedder, create_app, load_service_calibration, open_service_gallery
    from clipmc.service.settings import load_settings

    settings = load_settings(
        weights=str(checkpoint), gallery=directory / "gallery", host="127.0.0.1", port=port, api_keys=""
    )
    embedder = build_embedder(settings)
    try:
        calibration = load_service_calibration(settings, embedder)
        gallery = open_service_gallery(settings, embedder)
    except ValueError as exc:
        embedder.close()
        raise DemoError(f"{' '.join(str(exc).split())} (delete {directory / 'gallery'} and run again)") from None
    app = create_app(settings, embedder=embedder, gallery=gallery, calibration=calibration)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, server_header=False)
    )
    outcome: dict[str, Any] = {}
    loader = threading.Thread(
        target=_load_and_announce,
        args=(server, synth, started, calibration is not None, serve, outcome),
        name="clipmc-demo-ingest",
        daemon=True,
    )
    loader.start()
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind; it has logged why
        pass
    finally:
        server.should_exit = True  # the announcer stops waiting
        loader.join(timeout=5)
        gallery.close()
        embedder.close()
    if not server.started:
        raise DemoError(f"the service did not start on 127.0.0.1:{port} (port in use? make demo ARGS='--port N')")
    if "error" in outcome:
        raise DemoError(outcome["error"])
    return 0


def _load_and_announce(
    server: Any, synth: Path, started: float, calibrated: bool, serve: bool, outcome: dict[str, Any]
) -> None:
    """In a thread beside the server: wait until ready, ingest, print the crops to try (or stop)."""
    import httpx

    try:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=120.0) as client:
            for _ in range(1200):  # warm-up takes seconds; give up after a minute
                if client.get("/readyz").status_code == 200:
                    break
                time.sleep(0.05)
            else:
                raise DemoError("the service did not become ready within a minute")
            visible, infrared = demo_crops(synth)
            items = ingest_items(visible, synth)
            created = 0
            for start in range(0, len(items), INGEST_BATCH):
                batch = items[start : start + INGEST_BATCH]
                files = [("images", (p.name, p.read_bytes(), "application/octet-stream")) for p, _ in batch]
                r = client.post("/gallery/ingest", files=files, data={"items": json.dumps([m for _, m in batch])})
                if r.status_code != 200:
                    raise DemoError(f"ingest refused: HTTP {r.status_code} {r.text[:200]}")
                created += r.json()["created"]
        _announce(url, synth, visible, infrared, created, calibrated, time.perf_counter() - started)
    except Exception as exc:  # the server thread must not wait for an announcer that died
        log.error("demo: %s", exc, exc_info=not isinstance(exc, DemoError))
        outcome["error"] = " ".join(str(exc).split())
        server.should_exit = True
        return
    if not serve:
        server.should_exit = True


def _announce(
    url: str, synth: Path, visible: list[Any], infrared: list[Any], created: int, calibrated: bool, seconds: float
) -> None:
    by_pid: dict[int, list[str]] = defaultdict(list)
    for r in infrared:
        by_pid[r.pid].append(r.path)
    lines = [
        "",
        f"clipmc demo ready after {seconds:.0f} s (SYNTHETIC data, tiny model trained here)",
        f"  web page: {url}/   (API docs: {url}/docs)",
        f"  gallery: {len(visible)} visible crops of {len({r.pid for r in visible})} test identities "
        f"({created} new), one track per identity and camera",
        "  calibration: "
        + ("loaded: results show a match probability and matches are marked" if calibrated else "none"),
        "  try these infrared crops (choose several files of one person: they are searched as one tracklet):",
    ]
    for pid in sorted(by_pid)[:3]:
        paths = sorted(by_pid[pid])[:3]
        lines.append(f"    identity {pid}: " + "  ".join(str(Path(p)) for p in paths))
    lines.append("  then tick 'one per track' to get one result per track. Ctrl-C stops the service.")
    print("\n".join(lines), flush=True)
