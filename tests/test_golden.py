"""Golden vectors (issue 10 item 5): the tiny model, its weights fixed by a seed, embeds one fixed
synthetic crop (through the real preprocessing) to stored vectors, to 1e-5.

A change to the inference code that alters the vectors fails here unless it also bumps
`clipmc.model.version.INFERENCE_REVISION` (which changes every embedding_version, so galleries and
engine caches built with the old code are refused) and regenerates the file:

    .venv/bin/python -m tests.test_golden
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch

from clipmc.model import build_model
from clipmc.model.clipmc import CLIPMC
from clipmc.model.preprocess import PreprocessConfig, preprocess
from clipmc.model.version import INFERENCE_REVISION

GOLDEN = Path(__file__).with_name("golden_tiny.json")
SEED = 1234
ALPHA = 0.5  # MC switched on, so the text side and the compensation reach the vector


def golden_model() -> CLIPMC:
    """The tiny model with every floating-point weight drawn from a generator seeded by (SEED, its name):
    the weights do not depend on the order in which modules are constructed, only on the graph."""
    model = build_model("tiny").eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.endswith("token_norm"):
                continue
            g = torch.Generator().manual_seed(SEED * 1_000_003 + zlib.crc32(name.encode()))
            tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)
        model.mc.alpha.fill_(ALPHA)
    return model


def golden_crop() -> np.ndarray:
    """A fixed 150 x 70 RGB crop: gradients and stripes, no randomness, no file."""
    y, x = np.mgrid[0:150, 0:70].astype(np.float64)
    r = 255 * y / 149
    g = 127.5 + 127.5 * np.sin(x / 5.0)
    b = 255 * ((x + y) % 40 < 20)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def golden_vectors() -> dict[str, list[float]]:
    model = golden_model()
    h, w = model.config.image_size
    image = torch.from_numpy(preprocess(golden_crop(), PreprocessConfig(height=h, width=w)))[None]
    with torch.no_grad():
        return {
            name: model.embed(image, torch.tensor([code]))[0].tolist()
            for name, code in (("visible", 0), ("infrared", 1))
        }


def test_golden_vectors_match_the_stored_ones_for_this_revision():
    stored = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert stored["inference_revision"] == INFERENCE_REVISION, (
        f"INFERENCE_REVISION is {INFERENCE_REVISION} but {GOLDEN.name} was written for revision "
        f"{stored['inference_revision']}: regenerate it (python -m tests.test_golden) with the bump"
    )
    got = golden_vectors()
    for name, vector in stored["vectors"].items():
        np.testing.assert_allclose(
            got[name], vector, atol=1e-5, rtol=0,
            err_msg=f"the {name} golden vector changed without a new INFERENCE_REVISION (model/version.py)",
        )  # fmt: skip
    # The two modalities give different vectors: the compensation really is in the graph.
    assert np.abs(np.subtract(got["visible"], got["infrared"])).max() > 1e-4


def test_embedding_version_carries_the_inference_revision(tiny_model):
    assert f".r{INFERENCE_REVISION}.w" in tiny_model.embedding_version


if __name__ == "__main__":
    GOLDEN.write_text(
        json.dumps({"inference_revision": INFERENCE_REVISION, "model": "tiny", "seed": SEED, "alpha": ALPHA,
                    "vectors": golden_vectors()}, indent=1) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    print(f"wrote {GOLDEN}")
