"""Export the inference path of any registered architecture as one ONNX graph (DESIGN.md sections 3,
6 and 12).

Graph: the architecture's inputs (`image` float32 [N, 3, H, W], `modality` int64 [N], and `camera`
int64 [N] where the method needs it) in, `embedding` float32 [N, D] out; only N is dynamic. The graph
is the registry's inference graph of the model (model.registry), and its metadata carries the
checkpoint's embedding contract: dimension, input size, normalisation and input names. Everything
that does not depend on the image (for CLIP-MC the prompt word embeddings, the MCL contexts with their
running-mean MLP, the causal mask) is folded into constants, so neither a tokenizer nor the 49408-row
token table is in the file; CSDN's graph holds the image path only.

Why the dynamo exporter (`torch.onnx.export(..., dynamo=True)`): both exporters of torch 2.15 give
fp32 parity to ~1e-7 on this model, but the TorchScript exporter (`dynamo=False`, deprecated) leaves
the embedding axis symbolic ("Divembedding_dim_1" instead of D) and a graph three times larger
(~1000 nodes on the tiny configuration, 320 `Constant` and 48 `Shape` nodes of shape arithmetic),
whereas the dynamo exporter gives static non-batch axes and ~300 nodes. Its torchlib emits opset 18
natively; asking it for opset 17 silently keeps 18 when the version converter fails, so opsets below
18 are refused here rather than mislabelled (DESIGN.md asks for >= 17). Its built-in optimiser skips
large constants and multi-output nodes (the `Split` of `nn.MultiheadAttention`'s packed projection),
so `fold_constants` below finishes the job.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipmc.contract import atomic_write

from .base import ExportError, default_cache_dir
from .graph import METADATA_FORMAT, OUTPUT_NAME, onnx_opset, read_onnx_metadata

if TYPE_CHECKING:
    import onnx

    from clipmc.model.registry import EmbeddingModel

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
MIN_OPSET = 18
_MAX_BATCH = 4096  # upper bound the exporter records for the dynamic batch axis


def export_onnx(
    model: EmbeddingModel,
    out: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    embedding_version: str | None = None,
    check: bool = True,
) -> Path:
    """Export `model.embed` to `out` (written atomically) and return the path.

    `check` runs `onnx.checker` (full check, with shape inference) and a 2-image parity check against
    torch with ONNX Runtime, so a broken export never reaches a deployment.
    """
    import torch

    if opset < MIN_OPSET:
        raise ExportError(
            f"opset {opset} is not supported: the exporter emits opset >= {MIN_OPSET} (TensorRT 10 and "
            f"ONNX Runtime >= 1.14 read it); use --opset {DEFAULT_OPSET}"
        )
    out = Path(out)
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        # Export traces an fp32 CPU copy: the caller's model (perhaps serving on a GPU) stays where it is.
        model = copy.deepcopy(model).to("cpu", torch.float32)
    was_training = model.training
    model.eval()
    try:
        return _export(model, out, opset, embedding_version, check)
    finally:
        model.train(was_training)


def example_inputs(
    names: tuple[str, ...], image_size: tuple[int, int], n: int = 2, cameras: int = 1
) -> tuple[Any, ...]:
    """Random example tensors for the graph's inputs, in order (modality alternates 0, 1; camera runs
    over the `cameras` rows of the model's camera embedding)."""
    import torch

    h, w = image_size
    table = {
        "image": lambda: torch.randn(n, 3, h, w),
        "modality": lambda: torch.arange(n, dtype=torch.int64) % 2,
        "camera": lambda: torch.arange(n, dtype=torch.int64) % cameras,
    }
    return tuple(table[name]() for name in names)


def _export(model: EmbeddingModel, out: Path, opset: int, embedding_version: str | None, check: bool) -> Path:
    import onnx
    import torch

    from clipmc.model.registry import architecture_of
    from clipmc.model.version import preprocess_config

    arch = architecture_of(model)
    version = embedding_version or model.embedding_version
    h, w = model.config.image_size
    graph = arch.inference_graph(model).eval()
    # Batch 2, not 1: torch.export specialises a dimension whose example size is 0 or 1.
    example = tuple(torch.zeros_like(t) for t in example_inputs(arch.inputs, (h, w)))
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    log.info("exporting %s (%s) to ONNX opset %d", model.config.name, version, opset)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad(), _quiet("onnxscript", "onnx_ir"):
        warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used.*")
        program = torch.onnx.export(
            graph,
            example,
            None,
            input_names=list(arch.inputs),
            output_names=[OUTPUT_NAME],
            dynamic_shapes={name: {0: batch} for name in arch.inputs},
            opset_version=opset,
            dynamo=True,
            optimize=False,  # fold_constants runs the same optimiser without its size limits
            verbose=False,
        )
    log.info("traced in %.1fs; folding constants", time.perf_counter() - t0)
    proto = fold_constants(program.model)
    got_opset = onnx_opset(proto)
    if got_opset != opset:
        raise ExportError(f"the exporter produced opset {got_opset}, not the requested {opset}")
    metadata = {
        "format": METADATA_FORMAT,
        "embedding_version": version,
        "embedding_dim": str(model.embedding_dim),
        "architecture": model.config.name,
        "family": arch.family,
        "input_names": json.dumps(list(arch.inputs)),
        "architecture_config": json.dumps(model.config.to_dict(), sort_keys=True),
        "image_size": json.dumps([h, w]),
        "preprocessing": json.dumps(preprocess_config(model.config).to_dict(), sort_keys=True),
        "opset": str(got_opset),
        "inputs": "image float32 [N,3,H,W] (model.preprocess.normalize); modality int64 [N] (0 visible, 1 infrared)"
        + ("; camera int64 [N] (the checkpoint's camera index)" if "camera" in arch.inputs else ""),
        "output": "embedding float32 [N,D], L2-normalised; similarity is the dot product",
    }
    onnx.helper.set_model_props(proto, metadata)
    proto.producer_name, proto.doc_string = "clipmc", f"{arch.family} embedding graph ({arch.summary})"
    if check:
        onnx.checker.check_model(proto, full_check=True)
    _atomic_save(proto, out)
    if check:
        _smoke_parity(model, out)
    log.info("wrote %s (%.1f MB) in %.1fs", out, out.stat().st_size / 1e6, time.perf_counter() - t0)
    return out


def fold_constants(model: Any) -> onnx.ModelProto:
    """Fold every node whose inputs are all constants, then drop what became unused.

    onnxscript's optimiser is run with no size limits (its defaults leave the ViT-B/16 MCL MLP and the
    weight transposes in the graph); the few multi-output nodes it declines (`Split`) are evaluated with
    ONNX's reference evaluator and replaced by initializers.
    """
    import onnx
    import onnxscript.optimizer as oso
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    with _quiet("onnxscript", "onnx_ir"):  # per-initializer INFO lines and "skipping Split" warnings
        oso.optimize(model, input_size_limit=1 << 31, output_size_limit=1 << 31)
    proto = model if isinstance(model, onnx.ModelProto) else _ir_to_proto(model)
    graph = proto.graph
    values = {init.name: init for init in graph.initializer}
    kept, new_inits = [], []
    opset = onnx_opset(proto)
    for node in graph.node:
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        inputs = [i for i in node.input if i]
        if has_subgraph or not inputs or not all(i in values for i in inputs):
            kept.append(node)
            continue
        single = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node],
                "fold",
                [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in inputs],
                [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output],
            ),
            opset_imports=[onnx.helper.make_opsetid("", opset)],
        )
        feeds = {name: numpy_helper.to_array(values[name]) for name in inputs}
        for name, arr in zip(node.output, ReferenceEvaluator(single).run(None, feeds), strict=True):
            values[name] = numpy_helper.from_array(arr, name)
            new_inits.append(values[name])
    if new_inits:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(new_inits)
        log.debug("folded %d more constant tensors", len(new_inits))
    remaining = _ir_from_proto(proto)
    with _quiet("onnxscript", "onnx_ir"):
        oso.remove_unused_nodes(remaining)
    return _ir_to_proto(remaining)


def export_onnx_cached(weights: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Export once per embedding_version into `cache_dir` (under a file lock: concurrent workers
    starting together export once and share the file).

    A checkpoint's version comes from its config.json, so a cache hit loads and hashes no weights;
    zero-shot weights have no such record and are loaded (and hashed once) to name the file."""
    from filelock import FileLock

    from clipmc.model.checkpoint import read_checkpoint_config

    from .weights import load_model_weights, weights_kind

    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    if weights_kind(weights) == "zero-shot":
        model, version = load_model_weights(weights)
    else:
        model, version = None, read_checkpoint_config(weights)["embedding_version"]
    target = directory / f"{version}.onnx"
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            try:
                if read_onnx_metadata(target)["embedding_version"] == version:
                    log.info("reusing exported %s", target)
                    return target
            except ExportError as exc:
                log.warning("re-exporting: %s", exc)
        if model is None:
            model, version = load_model_weights(weights)
        return export_onnx(model, target, embedding_version=version)


# -- helpers ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Raise these loggers to ERROR for the duration (the optimiser logs every folded tensor)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _ir_to_proto(model: Any) -> onnx.ModelProto:
    import onnx_ir as ir

    return ir.serde.serialize_model(model)


def _ir_from_proto(proto: onnx.ModelProto) -> Any:
    import onnx_ir as ir

    return ir.serde.deserialize_model(proto)


def _atomic_save(proto: onnx.ModelProto, out: Path) -> None:
    import onnx

    atomic_write(out, lambda tmp: onnx.save(proto, str(tmp)))


def _smoke_parity(model: EmbeddingModel, path: Path) -> None:
    """Two random images through torch and ONNX Runtime: catches a broken export at export time."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from clipmc.model.cameras import CameraMap
    from clipmc.model.registry import architecture_of

    names = architecture_of(model).inputs
    cameras = CameraMap.from_architecture(model.config.to_dict()).size if "camera" in names else 1
    inputs = example_inputs(names, model.config.image_size, cameras=cameras)
    with torch.no_grad():
        ref = model.embed(*inputs).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    if not np.all(cos >= 0.99999):
        raise ExportError(f"{path}: ONNX Runtime disagrees with torch after export (cosine {cos.min():.6f})")
