"""Retrieval accuracy per runtime: the same checkpoint through torch, ONNX Runtime fp32 and ONNX Runtime
INT8 (dynamic quantisation), evaluated with the standard protocol driver (../shared/PROTOCOLS.md rules).

Parity (cosine per vector) says how close the vectors are; this says what the difference costs in
R1 / mAP, which is what a CPU-only user choosing INT8 wants to know.

    python benchmarks/runtime_accuracy.py --checkpoint runs/synth/best --dataset sysu \\
        --data-root data/synth-sysu --trials 0,1,2 --out benchmarks/results

Writes runtime-accuracy.json and runtime-accuracy.md under --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks.runtime_accuracy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", default="sysu")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--setting", default=None, help="protocol setting (default: the dataset's first)")
    parser.add_argument("--trials", default="0,1,2")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from clipmc.export import create_embedder
    from clipmc.export.onnx_export import export_onnx
    from clipmc.export.quantize import quantize_int8
    from clipmc.export.runtime_torch import TorchEmbedder
    from clipmc.export.weights import load_model_weights
    from clipmc.model.data import load_dataset
    from clipmc.model.preprocess import resize_crop
    from clipmc.model.protocols import evaluate

    dataset = load_dataset(args.dataset, args.data_root)
    setting = args.setting or next(iter(dataset.settings))
    trials = [int(t) for t in args.trials.split(",")]
    model, version = load_model_weights(args.checkpoint)  # loaded and hashed once, for both uses
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "model.onnx", embedding_version=version)
        int8 = quantize_int8(fp32, Path(tmp) / "model-int8.onnx")
        runtimes = {
            "torch fp32": TorchEmbedder(model, embedding_version=version),
            "onnxruntime fp32": create_embedder("onnxruntime", str(fp32)),
            "onnxruntime int8": create_embedder("onnxruntime", str(int8)),
        }
        rows, features = {}, {}
        for name, embedder in runtimes.items():
            size = tuple(embedder.image_size)

            def extract(records, embedder=embedder, size=size):
                crops = np.stack([resize_crop(r.path, size) for r in records])
                return embedder.embed(crops, np.array([r.modality for r in records]))

            result = evaluate(dataset, extract, settings=[setting], trials=trials, progress=False)
            rows[name] = result.settings[setting].mean
            query, _ = dataset.query_gallery(setting, trials[0])
            features[name] = extract(query[:200])
            log.info("%s: %s", name, rows[name])
    reference = features["torch fp32"]
    cosine = {name: float(np.min(np.sum(f * reference, axis=1))) for name, f in features.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "checkpoint": args.checkpoint, "dataset": dataset.name, "root": str(dataset.root), "setting": setting,
        "trials": trials, "rules": "../shared/PROTOCOLS.md", "machine": platform.processor() or platform.machine(),
    }  # fmt: skip
    (out / "runtime-accuracy.json").write_text(json.dumps({**meta, "metrics": rows, "min_cosine": cosine}, indent=2))
    lines = [
        f"Retrieval per runtime: {dataset.name} {setting}, trials {trials} ({meta['rules']} rules); "
        f"checkpoint {args.checkpoint}.",
        "",
        "| runtime | R1 | R5 | mAP | mINP | min cosine to torch (200 queries) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in rows.items():
        metrics = " | ".join(f"{m[k]:.2f}" for k in ("R1", "R5", "mAP", "mINP"))
        lines.append(f"| {name} | {metrics} | {cosine[name]:.6f} |")
    (out / "runtime-accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
