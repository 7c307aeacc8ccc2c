"""`clipmc serve` and `clipmc ingest` through the real command line entry point."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from clipmc.cli import main
from tests.service_fixtures import KEYS, GatedEmbedder, crop_bytes, live_server, settings_for, truncated_jpeg

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def embedder(tiny_checkpoint):
    from clipmc.export import create_embedder

    return create_embedder("torch", str(tiny_checkpoint), batch_sizes=(1, 8))


def _crop_folder(root: Path) -> Path:
    folder = root / "crops"
    for i, pid in enumerate((1, 2, 3, 4)):
        sub = folder / ("a" if i < 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{pid:04d}.png").write_bytes(crop_bytes(pid, 1))
    (folder / "a" / "broken.jpg").write_bytes(truncated_jpeg())
    (folder / "notes.txt").write_text("not an image, not uploaded")
    return folder


def test_ingest_command_is_idempotent_and_skips_bad_files(tmp_path, embedder, capsys):
    from clipmc.service.app import create_app

    folder = _crop_folder(tmp_path)
    app = create_app(settings_for(tmp_path, api_keys=f"{KEYS['ingest']}:ingest,query"), embedder=embedder)
    with live_server(app) as srv:
        args = ["ingest", str(folder), "--camera", "5", "--modality", "visible", "--url", srv.url, "--batch", "3"]
        assert main([*args, "--api-key", KEYS["ingest"]]) == 1  # one file skipped
        out, err = capsys.readouterr()
        assert "4 added, 0 already in the gallery, 1 skipped" in out
        assert "broken.jpg" in err and "invalid_image" in err

        os.environ["CLIPMC_API_KEY"] = KEYS["ingest"]
        try:
            assert main(args) == 1
        finally:
            del os.environ["CLIPMC_API_KEY"]
        assert "0 added, 4 already in the gallery, 1 skipped" in capsys.readouterr().out

        with srv.client(KEYS["ingest"]) as c:
            stats = c.get("/gallery/stats").json()
            assert stats["count"] == 4
            item = c.get("/gallery/items/1").json()
        assert item["external_id"] == "5:a/0001.png" and item["metadata"]["path"] == "a/0001.png"
        assert item["camera"] == "5" and item["modality"] == "visible"

        assert main([*args, "--api-key", "wrong-key-000000"]) == 2
        assert "invalid API key" in capsys.readouterr().err


def test_ingest_command_waits_for_a_warming_server(tmp_path, embedder, capsys):
    from clipmc.service.app import create_app

    folder = _crop_folder(tmp_path)
    gate = threading.Event()
    app = create_app(settings_for(tmp_path), embedder=GatedEmbedder(embedder, gate))
    with live_server(app, ready=False) as srv:
        opener = threading.Timer(1.0, gate.set)  # warm-up ends while the command is retrying its 503s
        opener.start()
        try:
            code = main(["ingest", str(folder), "--camera", "2", "--modality", "visible", "--url", srv.url])
        finally:
            opener.cancel()
            gate.set()
    assert code == 1 and "4 added" in capsys.readouterr().out


def test_ingest_command_errors(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "nope"), "--camera", "1", "--modality", "visible"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path), "--camera", "1", "--modality", "visible"]) == 2
    assert "no images" in capsys.readouterr().err
    folder = _crop_folder(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    url = f"http://127.0.0.1:{port}"
    assert main(["ingest", str(folder), "--camera", "1", "--modality", "visible", "--url", url]) == 2
    assert "cannot reach" in capsys.readouterr().err


def test_serve_refuses_a_gallery_of_another_model(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    from clipmc.gallery import open_gallery

    monkeypatch.setenv("CLIPMC_CACHE", str(tmp_path / "cache"))  # --backend auto may export ONNX

    open_gallery(tmp_path / "g", 80, "clipmc-tiny.wffffffffffff.288x144-bicubic-clipnorm").close()
    code = main(["serve", "--weights", str(tiny_checkpoint), "--gallery", str(tmp_path / "g"), "--port", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("clipmc serve: error:")]
    assert "embedding_version" in line and "--gallery" in line


def test_serve_offline_openai_weights_is_one_line(tmp_path, monkeypatch, capsys):
    from open_clip import pretrained

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    # The hub looks reachable but the download fails: the error still ends the command in one line.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("clipmc.model.factory._reachable", lambda *a, **k: True)
    monkeypatch.setattr("clipmc.model.factory._cached_hub_file", lambda *a, **k: None)
    monkeypatch.setattr(pretrained, "download_pretrained", offline)
    code = main(["serve", "--weights", "openai", "--gallery", str(tmp_path / "g")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("clipmc serve: error:")]
    assert "--weights" in line and "network is unreachable" in line
    assert not (tmp_path / "g").exists()  # nothing was created


def test_serve_bad_settings(capsys, monkeypatch):
    monkeypatch.setenv("CLIPMC_MAX_BATCH", "-3")
    assert main(["serve"]) == 2
    assert "max_batch" in capsys.readouterr().err


def test_serve_subprocess_binds_loopback_without_keys(tmp_path, tiny_checkpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPMC_")}
    env["CLIPMC_CACHE"] = str(tmp_path / "cache")  # the default back-end (auto) exports ONNX there
    cmd = [sys.executable, "-m", "clipmc.cli", "serve", "--weights", str(tiny_checkpoint)]
    cmd += ["--gallery", str(tmp_path / "g"), "--host", "0.0.0.0", "--port", str(port), "--log-json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.25)
        assert httpx.get(f"http://127.0.0.1:{port}/gallery/stats").json()["count"] == 0  # auth off
        # The default --backend auto on this host: ONNX Runtime fp32 on the CPU when no CUDA GPU is seen.
        embedder = httpx.get(f"http://127.0.0.1:{port}/readyz").json()["embedder"]
        if embedder["selection"]["reason"].startswith("CPU host"):
            assert (embedder["backend"], embedder["device"], embedder["precision"]) == ("onnxruntime", "cpu", "fp32")
        assert embedder["selection"]["backend"] == embedder["backend"]
        assert embedder["selection"]["requested"] == "auto/auto/auto"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    err = proc.stderr.read()
    assert proc.returncode in (0, -signal.SIGTERM), err  # uvicorn re-raises the signal once it has shut down
    assert "Application shutdown complete" in err
    assert "binds 127.0.0.1 instead of 0.0.0.0" in err and "auth is OFF" in err
    assert '"level": "warning"' in err  # JSON lines
    assert (tmp_path / "g" / "gallery.sqlite3").is_file()
