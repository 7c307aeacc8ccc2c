"""Shared fixtures: a tiny CLIP-MC (same code, small widths) and small synthetic inputs."""

from __future__ import annotations

import logging
import os

import pytest
import torch

# Nothing in the tests may reach the network: make any hub access fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SYNTH_SIZE = (32, 16)  # (H, W) of the images in the synth_trees fixture


@pytest.fixture(autouse=True)
def _root_log_handlers_restored():
    """`clipmc serve` (run in-process by CLI tests) points the root logger at the test's captured stderr at
    INFO; put the handlers and level back afterwards, or the next test logs into a closed capture
    ("Logging error") or gets INFO lines in its stderr."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    root.setLevel(level)
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
    for handler in before:
        if handler not in root.handlers:
            root.addHandler(handler)


@pytest.fixture(scope="session")
def tiny_model():
    from clipmc.model import build_model

    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    """A saved tiny checkpoint whose MC head is switched on (alpha != 0), so modality matters."""
    from clipmc.model import build_model, save_checkpoint

    torch.manual_seed(1)
    model = build_model("tiny")
    with torch.no_grad():
        model.mc.alpha.fill_(0.7)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(model, path, note="test fixture")
    return path


@pytest.fixture(scope="session")
def synth_trees(tmp_path_factory):
    """Small synthetic datasets in the SYSU-MM01, RegDB and LLCM layouts, written once per session.

    Read-only: a test that breaks a tree copies it first.
    """
    from clipmc.model.synth import generate

    out = {}
    for layout, ids in (("sysu", 12), ("regdb", 10), ("llcm", 12)):
        root = tmp_path_factory.mktemp(f"synth-{layout}")
        generate(layout, root, ids, seed=4, images_per_camera=2, size=SYNTH_SIZE, progress=False)
        out[layout] = root
    return out


def random_images(n: int, h: int = 288, w: int = 144, seed: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(n, 3, h, w, generator=g)
