"""The image's Python environment, rebuilt as far as this machine allows (no Docker engine, no GPU).

Two halves of what `docker build` does in its builder stage, each checked for real:

1. ``pip install -r docker/requirements.txt`` must resolve. pip resolves the exact set for the image's
   platform (CPython of the base image, manylinux x86_64) against PyPI with ``--dry-run --report``:
   only metadata is fetched, so this proves that every pin exists as a wheel for that platform and
   that the pins are mutually consistent, without downloading several GB of CUDA wheels. The report
   is then checked: every pin resolved as written, the CPU twins of the GPU builds are not pulled in
   by anything, and each module the code imports comes from a resolved distribution. Needs PyPI;
   skipped with the reason when it is unreachable. (TensorRT comes from the base image and its
   Python wheels live on pypi.nvidia.com, which this machine cannot reach: the Dockerfile asserts
   TensorRT 10 at build time instead.)

2. ``pip install --no-deps /src`` (the project, from the build context) must give a working `clipmc`.
   The test copies exactly the files .dockerignore admits, builds the wheel from that copy, installs it
   without dependencies into a fresh virtual environment, and runs the entry points there. Installing
   torch and the rest again would take minutes and GBs, so the fresh environment reaches the already
   installed third-party packages through a .pth line naming this environment's site-packages; the
   project itself is imported only from the fresh install (a .pth line does not run the editable-install
   hook found there, and the test checks where every clipmc module was loaded from).

And the container's start-up contract, with the real `clipmc serve` (torch back-end on the CPU, a tiny
checkpoint): docker/entrypoint.sh configured by environment only, docker/healthcheck.py turning healthy
once /readyz is ready, and SIGTERM (what `docker stop` sends) reaching the server because the
entrypoint execs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.test_deploy import (
    BIN,
    ENTRYPOINT,
    FROM_BASE_IMAGE,
    GPU_SUBSTITUTES,
    HEALTHCHECK,
    REQUIREMENTS,
    ROOT,
    SHIPPED_MODULES,
    TEST_KEY,
    build_context,
    image_python,
    image_requirements,
    imported_modules,
    module_providers,
    pinned_version,
)

#: Ubuntu 24.04 (the base image) has glibc 2.39: wheels tagged manylinux_2_5 .. manylinux_2_39 install.
IMAGE_GLIBC_MINOR = 39


def _pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=15) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.timeout(900)
def test_image_requirements_resolve_for_the_image_platform(tmp_path: Path) -> None:
    if not _pypi_reachable():
        pytest.skip("PyPI (https://pypi.org) is not reachable from this machine: cannot resolve the image's set")
    python = image_python()
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(5, IMAGE_GLIBC_MINOR + 1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    cmd += ["--report", str(report), "--only-binary=:all:"]
    cmd += ["--python-version", python, "--implementation", "cp", "--abi", "cp" + python.replace(".", "")]
    for platform in platforms:
        cmd += ["--platform", platform]
    cmd += ["-r", str(REQUIREMENTS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, f"the image's requirements do not resolve for CPython {python}:\n{proc.stderr[-4000:]}"

    resolved = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    for name, req in image_requirements().items():
        assert resolved.get(name) == pinned_version(req), f"{req} resolved to {resolved.get(name)}"
    for cpu in GPU_SUBSTITUTES:
        assert canonicalize_name(cpu) not in resolved, f"something pulls in {cpu} beside {GPU_SUBSTITUTES[cpu]}"

    providers = module_providers()
    for module, files in imported_modules().items():
        if module in FROM_BASE_IMAGE:
            continue
        assert providers.get(module, set()) & set(resolved), f"{module} ({sorted(files)}) is not in the image"


def _run(cmd: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.timeout(600)
def test_project_from_the_build_context_installs_and_runs(tmp_path: Path) -> None:
    # 1. the build context, as .dockerignore admits it
    context = tmp_path / "context"
    for rel in build_context():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)

    # 2. the project's wheel, built from that copy only (no network: this environment's setuptools)
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels), "."],
        cwd=context,
    )
    (wheel,) = wheels.glob("clipmc-*.whl")

    # 3. a fresh environment with the project installed without dependencies, as in the Dockerfile
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    vpython = venv / "bin" / "python"
    site = Path(
        _run([str(vpython), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip()
    )
    (site / "_deploy_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(vpython), "install", "--no-deps", "--quiet", str(wheel)]
    _run(install, cwd=tmp_path)

    # 4. the image's entry points, run from outside the source tree
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPMC_")}
    env["PYTHONNOUSERSITE"] = "1"
    help_text = _run([str(venv / "bin" / "clipmc"), "--help"], cwd=tmp_path, env=env)
    for command in ("serve", "ingest", "export", "gallery", "info"):
        assert re.search(rf"\b{command}\b", help_text), f"clipmc --help lacks {command}"
    serve_help = _run([str(venv / "bin" / "clipmc"), "serve", "--help"], cwd=tmp_path, env=env)
    assert "--engine-dir" in serve_help and "--gallery-backend" in serve_help
    probe = (
        "import importlib, importlib.resources, json, sys\n"
        f"mods = {[*SHIPPED_MODULES, 'clipmc.service.app', 'clipmc.service.commands', 'clipmc.export.runtime_trt']!r}\n"
        "files = {m: importlib.import_module(m).__file__ for m in mods}\n"
        "static = importlib.resources.files('clipmc.service') / 'static'\n"
        "print(json.dumps({'files': files, 'static': sorted(p.name for p in static.iterdir())}))\n"
    )
    out = json.loads(_run([str(vpython), "-c", probe], cwd=tmp_path, env=env))
    for module, path in out["files"].items():
        assert Path(path).is_relative_to(venv), f"{module} was imported from {path}, not the fresh install"
    assert {"index.html", "app.js", "style.css"} <= set(out["static"]), out["static"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_entrypoint_serves_until_the_healthcheck_turns_healthy(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",  # the real clipmc
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "CLIPMC_WEIGHTS": str(tiny_checkpoint),
        "CLIPMC_BACKEND": "torch",
        "CLIPMC_DEVICE": "cpu",
        "CLIPMC_BATCH_SIZES": "1,2",
        "CLIPMC_MAX_BATCH": "2",
        "CLIPMC_GALLERY": str(tmp_path / "data" / "gallery"),
        "CLIPMC_HOST": "127.0.0.1",
        "CLIPMC_PORT": str(port),
        "CLIPMC_API_KEYS": f"{TEST_KEY}:admin",
        "CLIPMC_LOG_JSON": "true",
    }

    def healthy() -> bool:
        probe = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=30)
        return probe.returncode == 0

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    proc = subprocess.Popen(
        ["/bin/sh", str(ENTRYPOINT)], env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not healthy():
            assert proc.poll() is None, "the service exited before it was ready"
            assert time.monotonic() < deadline, "the container never turned healthy"
            time.sleep(0.5)
        base = f"http://127.0.0.1:{port}"
        with opener.open(base + "/readyz", timeout=10) as response:
            assert json.loads(response.read())["status"] == "ready"
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(base + "/gallery/stats", timeout=10)
        assert refused.value.code == 401  # keys are on
        request = urllib.request.Request(base + "/gallery/stats", headers={"Authorization": f"Bearer {TEST_KEY}"})
        with opener.open(request, timeout=10) as response:
            assert json.loads(response.read())["count"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)  # docker stop; reaches the server only if the entrypoint exec'd it
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            err = ""
    assert err, "SIGTERM did not stop the server within 30 s: the entrypoint must exec clipmc"
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err, err[-3000:]
    assert (tmp_path / "data" / "gallery" / "gallery.sqlite3").is_file()
