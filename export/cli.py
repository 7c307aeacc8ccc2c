"""`clipmc export onnx|tensorrt` and `clipmc verify` (DESIGN.md section 6).

Heavy imports (torch, onnx, tensorrt) happen inside the commands so that `clipmc --help` stays fast.
Errors the user can fix are raised as ValueError with a one-line message; the main CLI prints them and
exits with code 2. `clipmc verify` exits 1 when parity fails.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class ExportCLIError(ValueError):
    """A problem with the command's arguments or inputs, printed as one line."""


def register(sub: argparse._SubParsersAction) -> None:
    p_export = sub.add_parser("export", help="export a checkpoint to ONNX, or build a TensorRT engine from ONNX")
    targets = p_export.add_subparsers(dest="export_target", metavar="TARGET", required=True)

    p_onnx = targets.add_parser("onnx", help="the inference path as one ONNX graph (image, modality -> embedding)")
    p_onnx.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint directory, 'openai' (zero-shot CLIP ViT-B/16) or a local open_clip ViT-B-16 weights file",
    )
    p_onnx.add_argument("--out", required=True, type=Path, help="output .onnx file")
    p_onnx.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18; default 18)")
    p_onnx.add_argument(
        "--int8",
        action="store_true",
        help="also write a dynamically quantised INT8 model for CPU-only hosts (OUT with .int8.onnx)",
    )
    p_onnx.set_defaults(func=cmd_export_onnx)

    p_trt = targets.add_parser("tensorrt", help="build (or reuse from the cache) a TensorRT 10 engine from ONNX")
    p_trt.add_argument("--onnx", required=True, type=Path, help="an ONNX file written by `clipmc export onnx`")
    p_trt.add_argument("--out", required=True, type=Path, help="engine cache directory")
    p_trt.add_argument("--fp16", action="store_true", help="FP16 (LayerNorm, softmax, normalisation stay fp32)")
    p_trt.add_argument(
        "--batch-sizes", default="1,8,32,128", help="micro-batch sizes; the profile is min/middle/max (1,8,32,128)"
    )
    p_trt.add_argument("--device", default="cuda", help="CUDA device (cuda or cuda:N)")
    p_trt.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT workspace memory pool (GiB)")
    p_trt.set_defaults(func=cmd_export_tensorrt)

    p_verify = sub.add_parser("verify", help="parity of ONNX Runtime / TensorRT against the torch checkpoint")
    p_verify.add_argument("--checkpoint", required=True, help="checkpoint directory, or 'openai'")
    p_verify.add_argument("--onnx", type=Path, help="ONNX file to check (with ONNX Runtime)")
    p_verify.add_argument("--engine", type=Path, help="TensorRT engine to check (needs TensorRT and a GPU)")
    p_verify.add_argument("--images", type=Path, help="a folder of crops to check on, as well as random ones")
    p_verify.add_argument("--n", type=int, default=32, help="number of random crops (default 32)")
    p_verify.add_argument("--k", type=int, default=5, help="top-k for the ranking check (default 5)")
    p_verify.add_argument("--device", default="cpu", help="device of the torch reference (cpu, cuda)")
    p_verify.add_argument(
        "--ort-device", default="cpu", help="ONNX Runtime device: cpu, cuda or tensorrt (execution provider)"
    )
    p_verify.add_argument("--json", type=Path, help="also write the report as JSON to this file ('-': stdout)")
    p_verify.set_defaults(func=cmd_verify)

    p_embed = sub.add_parser("embed", help="embed a folder of crops into an .npz of vectors (your own images)")
    p_embed.add_argument("directory", type=Path, help="folder of crops (searched recursively)")
    p_embed.add_argument("--modality", required=True, help="infrared or visible (every crop of the folder)")
    p_embed.add_argument("--weights", required=True, help="checkpoint directory, 'openai', .onnx or .engine")
    p_embed.add_argument("--out", required=True, type=Path, help="output .npz (features, paths, modality, version)")
    p_embed.add_argument("--backend", default="auto", help="auto (default), torch, onnxruntime or tensorrt")
    p_embed.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p_embed.add_argument("--batch-size", type=int, default=32)
    p_embed.set_defaults(func=cmd_embed)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    from .base import EmbedderError, normalize_batch_sizes

    try:
        return normalize_batch_sizes([t for t in text.split(",") if t.strip()])
    except EmbedderError as exc:
        raise ExportCLIError(f"--batch-sizes must be comma-separated positive integers, got {text!r}") from exc


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from .onnx_export import export_onnx

    if args.out.suffix != ".onnx":  # before loading (and hashing) the weights
        raise ExportCLIError(f"--out {args.out}: expected a .onnx file name")
    model, version = _load(args.checkpoint)
    path = export_onnx(model, args.out, opset=args.opset, embedding_version=version)
    print(f"wrote {path} ({version}, opset {args.opset}, {path.stat().st_size / 1e6:.1f} MB)")
    if args.int8:
        from .quantize import quantize_int8

        q = quantize_int8(path, path.with_suffix(".int8.onnx"))
        print(f"wrote {q} (INT8 dynamic quantisation, {q.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_export_tensorrt(args: argparse.Namespace) -> int:
    from .tensorrt_build import build_engine

    if not args.onnx.is_file():
        raise ExportCLIError(f"--onnx {args.onnx}: file not found")
    engine = build_engine(
        args.onnx,
        args.out,
        precision="fp16" if args.fp16 else "fp32",
        batch_sizes=parse_batch_sizes(args.batch_sizes),
        device=args.device,
        workspace_gb=args.workspace_gb,
    )
    print(f"engine {engine} (sidecar {engine.with_suffix('.json').name})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .factory import create_embedder
    from .runtime_torch import TorchEmbedder
    from .verify import parity_report

    if args.onnx is None and args.engine is None:
        raise ExportCLIError("nothing to verify: give --onnx and/or --engine")
    if args.images is not None and not args.images.is_dir():
        raise ExportCLIError(f"--images {args.images}: not a directory")
    if args.n < 4:
        raise ExportCLIError("--n must be at least 4 (half queries, half gallery)")
    model, version = _load(args.checkpoint)
    if str(args.device).startswith("cuda"):
        import torch

        # The reference must be true fp32: no TF32 in cuDNN convolutions or matmuls.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    reference = TorchEmbedder(model, device=args.device, batch_sizes=(8, 32), embedding_version=version)
    candidates = {}
    if args.onnx is not None:
        candidates[f"onnxruntime/{args.ort_device}"] = create_embedder(
            "onnxruntime", args.onnx, device=args.ort_device, batch_sizes=(8, 32)
        )
    if args.engine is not None:
        engine = create_embedder("tensorrt", args.engine, device="cuda" if args.device == "cpu" else args.device)
        candidates[f"tensorrt/{engine.precision}"] = engine
    report = parity_report(reference, candidates, n_random=args.n, images_dir=args.images, k=args.k)
    print(report.table())
    if args.json is not None:
        text = json.dumps(report.to_dict(), indent=2)
        if str(args.json) == "-":
            print(text)
        else:
            args.json.write_text(text + "\n", encoding="utf-8")
    return 0 if report.passed else 1


def _load(weights: str):
    """(model, embedding_version); load failures become one-line errors."""
    from clipmc.model.factory import PretrainedWeightsError

    from .weights import load_model_weights

    try:
        return load_model_weights(weights)
    except PretrainedWeightsError as exc:
        raise ExportCLIError(" ".join(str(exc).split())) from exc


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from clipmc.contract import IMAGE_SUFFIXES, ModalityError, parse_modality

    from .extractor import FeatureExtractor

    if not args.directory.is_dir():
        raise ExportCLIError(f"{args.directory}: not a directory")
    if args.out.suffix != ".npz":
        raise ExportCLIError(f"--out {args.out}: use a .npz file name")
    try:
        code = parse_modality(args.modality, "--modality")
    except ModalityError as exc:
        raise ExportCLIError(str(exc)) from None
    if args.batch_size < 1:
        raise ExportCLIError("--batch-size must be at least 1")
    files = sorted(p for p in args.directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ExportCLIError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {args.directory}")
    extract = FeatureExtractor(args.weights, args.backend, args.device, batch_size=args.batch_size)
    chunks = []
    with tqdm(total=len(files), desc="embed", unit="crop", disable=None) as bar:
        for start in range(0, len(files), args.batch_size):
            batch = files[start : start + args.batch_size]
            chunks.append(extract(batch, code))
            bar.update(len(batch))
    features = np.concatenate(chunks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    paths = np.array([p.relative_to(args.directory).as_posix() for p in files])
    with open(args.out, "wb") as f:
        np.savez(f, features=features, paths=paths, modality=np.full(len(files), code, np.int64),
                 embedding_version=np.array(extract.embedding_version))  # fmt: skip
    extract.close()
    print(f"wrote {args.out}: {features.shape[0]} x {features.shape[1]} ({extract.embedding_version})")
    return 0
