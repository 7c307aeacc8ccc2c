"""clipmc.FeatureExtractor and `clipmc embed`: the one preprocessing contract on the user's own crops."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.service_fixtures import crop_array, encode, ingest_multipart, live_server, settings_for


@pytest.fixture(scope="module")
def extractor(tiny_checkpoint):
    import clipmc

    return clipmc.FeatureExtractor(tiny_checkpoint, backend="torch", device="cpu", precision="fp32", batch_size=4)


@pytest.fixture
def crop_file(tmp_path):
    path = tmp_path / "crops" / "a.png"
    path.parent.mkdir()
    path.write_bytes(encode(crop_array(3, 1, size=(100, 40))))
    return path


def test_every_input_kind_gives_the_same_vector(extractor, crop_file):
    data = crop_file.read_bytes()
    pil = Image.open(io.BytesIO(data))
    array = np.asarray(pil.convert("RGB"))
    vectors = extractor([str(crop_file), crop_file, data, pil, array], modality="infrared")
    assert vectors.shape == (5, extractor.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for v in vectors[1:]:
        np.testing.assert_allclose(v, vectors[0], atol=1e-6)
    single = extractor(crop_file, "ir")  # one crop, any spelling of the modality
    np.testing.assert_allclose(single[0], vectors[0], atol=1e-6)


def test_modality_per_crop_and_clear_errors(extractor, crop_file):
    both = extractor([crop_file, crop_file], modality=["visible", 1])
    np.testing.assert_allclose(both[0], extractor(crop_file, 0)[0], atol=1e-6)
    np.testing.assert_allclose(both[1], extractor(crop_file, "infrared")[0], atol=1e-6)
    assert not np.allclose(both[0], both[1])  # the modality changes the vector (MC is on in the fixture)
    from clipmc.export import EmbedderError

    with pytest.raises(EmbedderError, match="modalities for 2 crops"):
        extractor([crop_file, crop_file], modality=["visible"])
    with pytest.raises(EmbedderError, match="accepted"):
        extractor(crop_file, modality="daylight")
    assert extractor([], "visible").shape == (0, extractor.dim)


def test_the_service_stores_the_same_vector_for_the_same_file(tmp_path, extractor, crop_file):
    """Ingest the file over HTTP, then read the stored vector: it equals the extractor's."""
    from clipmc.gallery import open_gallery
    from clipmc.service.app import create_app

    settings = settings_for(tmp_path)
    with live_server(create_app(settings, embedder=extractor.embedder)) as srv, srv.client() as c:
        r = ingest_multipart(c, [(crop_file.read_bytes(), {"modality": "visible", "camera": "1"})])
        assert r.status_code == 200, r.text
        item_id = r.json()["ids"][0]
    with open_gallery(settings.gallery) as gallery:
        stored = gallery.get(item_id).vector
    np.testing.assert_allclose(stored, extractor(crop_file, "visible")[0], atol=1e-6)


def test_embed_cli_writes_npz(tmp_path, tiny_checkpoint, crop_file, capsys):
    from clipmc.cli import main

    (crop_file.parent / "sub").mkdir()
    (crop_file.parent / "sub" / "b.jpg").write_bytes(encode(crop_array(4, 2), "JPEG"))
    (crop_file.parent / "notes.txt").write_text("not an image")
    out = tmp_path / "feats.npz"
    args = ["embed", str(crop_file.parent), "--modality", "infrared", "--weights", str(tiny_checkpoint),
            "--backend", "torch", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    data = np.load(out)
    assert data["features"].shape[0] == 2 and list(data["paths"]) == ["a.png", "sub/b.jpg"]
    assert (data["modality"] == 1).all() and str(data["embedding_version"]).startswith("clipmc-")
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [({"--modality": "daylight"}, "accepted"), ({"--out": "x.csv"}, ".npz"), ({"dir": "missing"}, "not a directory")],
)
def test_embed_cli_bad_arguments_are_one_line(tmp_path, tiny_checkpoint, crop_file, capsys, change, message):
    from clipmc.cli import main

    opts = {"--modality": "infrared", "--out": str(tmp_path / "f.npz")}
    opts.update({k: v if k != "--out" else str(tmp_path / v) for k, v in change.items() if k != "dir"})
    directory = str(tmp_path / change["dir"]) if "dir" in change else str(crop_file.parent)
    args = ["embed", directory, "--weights", str(tiny_checkpoint), "--backend", "torch", "--device", "cpu"]
    for k, v in opts.items():
        args += [k, v]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
