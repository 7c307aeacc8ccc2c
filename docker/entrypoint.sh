#!/bin/sh
# Entry point of the clipmc image. With no arguments, or `serve ...`, it checks what usually goes wrong in
# a deployment (weights not mounted, a cache or gallery volume the service cannot write) and says so in
# one line before `exec clipmc serve`; any other arguments run that clipmc command unchanged:
#
#   docker run IMAGE                                   -> clipmc serve
#   docker run IMAGE export onnx --checkpoint /weights/best --out /cache/model.onnx
#   docker run IMAGE gallery stats /data/gallery
#
# On the first start with the tensorrt back-end, `clipmc serve` itself exports the checkpoint to ONNX and
# builds the FP16 engine into CLIPMC_ENGINE_DIR under the cache's file lock (export.create_embedder);
# later starts, and other replicas sharing the volume, load the cached engine.
set -eu

die() {
    printf 'clipmc-entrypoint: error: %s\n' "$*" >&2
    exit 2
}

note() {
    printf 'clipmc-entrypoint: %s\n' "$*" >&2
}

# has_flag NAME ARGS...: true when the serve command line sets --NAME itself (it then overrides the
# CLIPMC_* variable that the checks below read, so they leave it to clipmc).
has_flag() {
    name=$1
    shift
    for arg in "$@"; do
        case $arg in
            "--$name" | "--$name="*) return 0 ;;
        esac
    done
    return 1
}

# writable_dir DIR WHAT: create DIR if needed and make sure this user can write in it.
writable_dir() {
    if ! mkdir -p "$1" 2>/dev/null || [ ! -w "$1" ]; then
        die "$2 $1 is not writable by uid $(id -u). Mount a named volume there, or chown the host folder to uid $(id -u) (the image's clipmc user)."
    fi
}

check_serve() {
    if ! has_flag weights "$@" && ! has_flag config "$@"; then
        weights=${CLIPMC_WEIGHTS:-openai}
        if [ "$weights" != "openai" ] && [ ! -e "$weights" ]; then
            die "weights not found at $weights (CLIPMC_WEIGHTS). Put the trained checkpoint directory (model.safetensors and config.json) in the host folder mounted at /weights (CLIPMC_WEIGHTS_DIR in .env, default ./weights) and set CLIPMC_WEIGHTS to its path inside the container, e.g. /weights/best."
        fi
    fi
    backend=${CLIPMC_BACKEND:-auto}
    if [ "$backend" = "tensorrt" ] && [ -n "${CLIPMC_ENGINE_DIR:-}" ] && ! has_flag engine-dir "$@" && ! has_flag backend "$@"; then
        writable_dir "$CLIPMC_ENGINE_DIR" "the engine cache"
        if ls "$CLIPMC_ENGINE_DIR"/*.engine > /dev/null 2>&1; then
            note "engine cache $CLIPMC_ENGINE_DIR: a cached engine for this model, GPU and TensorRT version is reused; otherwise one is built now."
        else
            note "no TensorRT engine in $CLIPMC_ENGINE_DIR yet: this first start exports the model to ONNX and builds the FP16 engine (several minutes; other replicas wait on the build lock). /readyz answers once it is loaded."
        fi
    fi
    if [ "${CLIPMC_GALLERY_BACKEND:-faiss}" = "faiss" ] && [ -n "${CLIPMC_GALLERY:-}" ] && ! has_flag gallery "$@" && ! has_flag gallery-backend "$@"; then
        writable_dir "$CLIPMC_GALLERY" "the gallery directory"
    fi
    if [ -z "${CLIPMC_API_KEYS:-}" ] && [ -z "${CLIPMC_CONFIG:-}" ] && ! has_flag config "$@"; then
        note "CLIPMC_API_KEYS is not set: the service will listen on 127.0.0.1 inside the container only, which a published port cannot reach. Set keys in .env (see docker/env.example)."
    fi
}

if [ "$#" -eq 0 ]; then
    set -- serve
fi
if [ "$1" = "serve" ]; then
    shift
    check_serve "$@"
    exec clipmc serve "$@"
fi
exec clipmc "$@"
