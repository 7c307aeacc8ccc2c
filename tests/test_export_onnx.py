"""ONNX export and the ONNX Runtime back-end (DESIGN.md section 6), tiny configuration.

Inputs are fresh random tensors on every run (no fixed seed): the parity gate must hold for any input,
not for one lucky draw.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from clipmc.export import EmbedderError, create_embedder
from clipmc.export.base import ExportError
from clipmc.export.graph import read_onnx_metadata
from clipmc.export.onnx_export import export_onnx, export_onnx_cached
from clipmc.model import load_checkpoint
from clipmc.model.checkpoint import read_checkpoint_config
from clipmc.model.preprocess import PreprocessConfig, normalize


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("export-cache")


@pytest.fixture(scope="module")
def exported(cache_dir, tiny_checkpoint):
    """(onnx path, reference torch model): the tiny checkpoint exported once per module, through the
    same export cache that create_embedder uses for a checkpoint."""
    path = export_onnx_cached(tiny_checkpoint, cache_dir)
    return path, load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def session(exported):
    return ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _torch_embed(model, x: np.ndarray, m: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.embed(torch.from_numpy(x), torch.from_numpy(m)).numpy()


def test_graph_interface(exported, tiny_checkpoint):
    path, _ = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17

    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    inputs = {i.name: i for i in proto.graph.input}
    assert list(inputs) == ["image", "modality"]
    assert [o.name for o in proto.graph.output] == ["embedding"]
    assert inputs["image"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inputs["modality"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    image, modality, embedding = dims(inputs["image"]), dims(inputs["modality"]), dims(proto.graph.output[0])
    batch = image[0]
    assert isinstance(batch, str) and batch  # symbolic, shared by all three
    assert image == [batch, 3, 288, 144]
    assert modality == [batch]
    assert embedding == [batch, 80]

    meta = {p.key: p.value for p in proto.metadata_props}
    cfg = read_checkpoint_config(tiny_checkpoint)
    assert meta["embedding_version"] == cfg["embedding_version"]
    assert json.loads(meta["preprocessing"]) == json.loads(json.dumps(PreprocessConfig().to_dict()))
    assert int(meta["opset"]) == opset and int(meta["embedding_dim"]) == 80
    assert meta["architecture"] == "tiny"
    parsed = read_onnx_metadata(path)
    assert parsed["image_size"] == (288, 144) and parsed["embedding_dim"] == 80


def test_constants_folded_and_no_token_table(exported):
    proto = onnx.load(str(exported[0]))
    inits = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    assert not [name for name, shape in inits.items() if 49408 in shape], "token table leaked into the graph"
    assert not any("token_embedding" in name for name in inits)
    constant = set(inits)
    for node in proto.graph.node:
        inputs = [i for i in node.input if i]
        assert not (inputs and all(i in constant for i in inputs)), f"unfolded {node.op_type} on constants"


@pytest.mark.parametrize("batch", [1, 13])
@pytest.mark.parametrize("modality", ["visible", "infrared", "mixed"])
def test_onnxruntime_parity(exported, session, batch, modality):
    _, model = exported
    x = np.random.default_rng().standard_normal((batch, 3, 288, 144)).astype(np.float32)
    if modality == "mixed":
        m = np.arange(batch, dtype=np.int64) % 2
        np.random.default_rng().shuffle(m)
    else:
        m = np.full(batch, int(modality == "infrared"), np.int64)
    ref = _torch_embed(model, x, m)
    got = session.run(["embedding"], {"image": x, "modality": m})[0]
    assert got.shape == (batch, 80) and got.dtype == np.float32
    cos = _cosine(ref, got)
    assert cos.min() >= 0.99999, cos


def test_modality_matters_in_the_graph(session):
    """The exported graph keeps the modality input live (MC is on in the fixture checkpoint)."""
    x = np.random.default_rng().standard_normal((2, 3, 288, 144)).astype(np.float32)
    vis = session.run(None, {"image": x, "modality": np.zeros(2, np.int64)})[0]
    ir = session.run(None, {"image": x, "modality": np.ones(2, np.int64)})[0]
    assert np.abs(vis - ir).max() > 1e-4


def test_onnxruntime_embedder_matches_torch_ranking(exported, tiny_checkpoint):
    """Torch and ONNX Runtime back-ends: same vectors (to 1e-5 cosine) and the same top-5 on a gallery."""
    from clipmc.export.verify import random_crops, topk_agreement

    path, _ = exported
    ort_emb = create_embedder("onnxruntime", path, batch_sizes=(1, 8))
    torch_emb = create_embedder("torch", tiny_checkpoint, batch_sizes=(1, 8))
    assert ort_emb.backend == "onnxruntime" and ort_emb.device == "cpu"
    assert ort_emb.embedding_version == torch_emb.embedding_version
    assert ort_emb.embedding_dim == torch_emb.embedding_dim == 80
    assert ort_emb.image_size == (288, 144) and ort_emb.batch_sizes == (1, 8)

    gallery, queries = random_crops(24, (288, 144)), random_crops(6, (288, 144))
    g_mod, q_mod = np.zeros(24, np.int64), np.ones(6, np.int64)
    ref_q, ref_g = torch_emb.embed(queries, q_mod), torch_emb.embed(gallery, g_mod)
    got_q, got_g = ort_emb.embed(queries, q_mod), ort_emb.embed(gallery, g_mod)
    assert _cosine(ref_g, got_g).min() >= 0.99999
    report = topk_agreement(ref_q, ref_g, got_q, got_g, k=5)
    assert report["identical"], report


def test_onnxruntime_uint8_and_float_inputs_agree(exported):
    emb = create_embedder("onnxruntime", exported[0])
    crops = np.random.default_rng().integers(0, 256, (3, 288, 144, 3), dtype=np.uint8)
    np.testing.assert_array_equal(emb.embed(crops, [0, 1, 0]), emb.embed(normalize(crops), [0, 1, 0]))
    emb.warmup()


def test_checkpoint_through_the_export_cache(exported, cache_dir, tiny_checkpoint, monkeypatch):
    """create_embedder('onnxruntime', checkpoint) reuses the file the cache already holds, without
    loading (and hashing) the checkpoint's weights: its config.json names the version."""
    import clipmc.model.checkpoint

    def no_load(*args, **kwargs):
        raise AssertionError("a cache hit must not load the checkpoint weights")

    path, _ = exported
    assert [p.name for p in cache_dir.glob("*.onnx")] == [path.name]
    stamp = path.stat().st_mtime_ns
    monkeypatch.setattr(clipmc.model.checkpoint, "load_checkpoint", no_load)
    emb = create_embedder("onnxruntime", tiny_checkpoint, engine_dir=cache_dir)
    assert path.stat().st_mtime_ns == stamp
    assert emb.embedding_version in path.name and emb.onnx_path == path


def test_unreadable_cache_entry_is_exported_again(tiny_checkpoint, tmp_path):
    """A cache file that is not a readable CLIP-MC export (a crash of an older writer, a stray file) is
    replaced by a fresh export rather than handed to the runtime."""
    version = read_checkpoint_config(tiny_checkpoint)["embedding_version"]
    stale = tmp_path / f"{version}.onnx"
    stale.write_bytes(b"truncated")
    path = export_onnx_cached(tiny_checkpoint, tmp_path)
    assert path == stale
    assert read_onnx_metadata(path)["embedding_version"] == version


def test_refuses_opset_below_18(tiny_model, tmp_path):
    with pytest.raises(ExportError, match="opset 16"):
        export_onnx(tiny_model, tmp_path / "x.onnx", opset=16)


def test_foreign_onnx_file_is_a_clear_error(tmp_path):
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    foreign = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    with pytest.raises(EmbedderError, match="not a CLIP-MC export"):
        create_embedder("onnxruntime", foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(EmbedderError, match="not a readable ONNX model"):
        create_embedder("onnxruntime", garbage)
    with pytest.raises(EmbedderError, match="tensorrt back-end"):
        create_embedder("onnxruntime", _touch(tmp_path / "x.engine"))


def _touch(path):
    path.write_bytes(b"")
    return path


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu is installed here"
)
def test_missing_gpu_provider_names_the_extra(exported):
    with pytest.raises(EmbedderError, match=r"CUDAExecutionProvider.*clipmc\[gpu\]"):
        create_embedder("onnxruntime", exported[0], device="cuda")
    with pytest.raises(EmbedderError, match="TensorrtExecutionProvider"):
        create_embedder("onnxruntime", exported[0], device="tensorrt")
    with pytest.raises(EmbedderError, match="only through the TensorRT execution provider"):
        create_embedder("onnxruntime", exported[0], precision="fp16")
    with pytest.raises(EmbedderError, match="unknown onnxruntime device"):
        create_embedder("onnxruntime", exported[0], device="tpu")


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available(),
    reason="needs onnxruntime-gpu and a CUDA GPU",
)
def test_onnxruntime_cuda_parity(exported):
    path, model = exported
    emb = create_embedder("onnxruntime", path, device="cuda")
    x = np.random.default_rng().standard_normal((13, 3, 288, 144)).astype(np.float32)
    m = np.arange(13, dtype=np.int64) % 2
    assert _cosine(_torch_embed(model, x, m), emb.embed(x, m)).min() >= 0.99999


@pytest.mark.skipif(
    "TensorrtExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available(),
    reason="needs onnxruntime-gpu with the TensorRT execution provider and a CUDA GPU",
)
def test_onnxruntime_tensorrt_fp16_parity(exported, tmp_path):
    path, model = exported
    emb = create_embedder("onnxruntime", path, device="tensorrt", precision="fp16", engine_dir=tmp_path)
    x = np.random.default_rng().standard_normal((13, 3, 288, 144)).astype(np.float32)
    m = np.arange(13, dtype=np.int64) % 2
    assert _cosine(_torch_embed(model, x, m), emb.embed(x, m)).min() >= 0.999
