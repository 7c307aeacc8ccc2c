#!/usr/bin/env bash
# GPU embedding benchmark in one run, under 10 minutes (issue 15, goal 5): ViT-B/16 at 288 x 144,
# torch fp32, fp16 and bf16 (autocast) eager at batch 1..256, torch.compile(mode="reduce-overhead",
# i.e. CUDA graphs) for fp16 at the small batches where launch overhead dominates, FLOPs per image
# counted by torch (~30 GFLOP) so the table shows achieved TFLOP/s against the device's peak, and the
# fp16 / bf16 vectors' parity with fp32 (cosine, top-10 agreement on synthetic crops).
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # default OUT_DIR: $OUT, else benchmarks/results/gpu
#
# Written for a lent GPU box that has PyTorch with CUDA but no TensorRT, onnxruntime-gpu, faiss-gpu or
# package registry: it needs only torch, numpy and open_clip (+ timm, ftfy, regex, safetensors); when
# those are missing and WHEELS names a folder of wheels (pip download ... -d DIR, carried with the
# tree), it installs them from there with --no-index, else it stops and names what is missing. The
# project is put on sys.path through a temporary clipmc/ tree of links, so nothing is installed.
# TensorRT and ONNX Runtime rows need those packages: `python benchmarks/embed.py --device cuda
# --backends torch,onnxruntime,tensorrt` on a full GPU install (the image).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${1:-${OUT:-$ROOT/benchmarks/results/gpu}}
PY=${PYTHON:-python3}
LIMIT_S=${LIMIT_S:-540}   # the whole measurement, so the script ends inside a 10-minute slot
mkdir -p "$OUT_DIR"
log() { printf '%s gpu.sh: %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$OUT_DIR/gpu.log" >&2; }

"$PY" -c 'import torch, sys; assert torch.cuda.is_available(), "torch sees no CUDA GPU"; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), sys.version.split()[0])' \
    | tee -a "$OUT_DIR/gpu.log" || { log "no CUDA GPU visible to torch: nothing to measure"; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv >> "$OUT_DIR/gpu.log" 2>&1 || true

missing=$("$PY" - <<'EOF'
import importlib.util
need = ["numpy", "open_clip", "timm", "safetensors", "ftfy", "regex", "PIL"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
        log "installing from $WHEELS (no index): $missing"
        "$PY" -m pip install --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl >> "$OUT_DIR/gpu.log" 2>&1
    else
        log "missing Python modules: $missing (set WHEELS to a folder of their wheels)"
        exit 3
    fi
fi

# The project on sys.path without installing it: clipmc/ plus links to the folders it maps to clipmc.*.
TREE=$(mktemp -d)
trap 'rm -rf "$TREE"' EXIT
mkdir -p "$TREE/clipmc"
cp -r "$ROOT/clipmc/." "$TREE/clipmc/"
for pkg in model export gallery service; do ln -s "$ROOT/$pkg" "$TREE/clipmc/$pkg"; done
export PYTHONPATH="$TREE${PYTHONPATH:+:$PYTHONPATH}"

log "measuring (limit ${LIMIT_S}s) into $OUT_DIR"
timeout "$LIMIT_S" "$PY" "$ROOT/benchmarks/embed.py" \
    --device cuda --arch vit-b-16 --backends torch --precisions fp32,fp16,bf16 \
    --batch-sizes 1,2,4,8,16,32,64,128,256 \
    --compile reduce-overhead --compile-precisions fp16 --compile-batch-sizes 1,8,32 \
    --flops --parity-images 64 \
    --warmup 3 --min-iters 10 --min-seconds 1.0 --max-iters 200 \
    --out "$OUT_DIR" --name embed-gpu 2>&1 | tee -a "$OUT_DIR/gpu.log"
log "done: $OUT_DIR/embed-gpu.md"
