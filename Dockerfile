# syntax=docker/dockerfile:1
#
# The clipmc re-identification service for a GPU host: TensorRT FP16 engine, FAISS or Milvus gallery.
#
#   docker build -t clipmc:0.1.0 .          # or: docker compose build
#
# Two stages on the same NVIDIA base. The builder makes a virtual environment in /opt/venv from the
# pinned docker/requirements.txt (torch with its CUDA 13 libraries, onnxruntime-gpu, faiss-gpu-cuvs: see the
# notes there) and installs the project into it without dependencies. The runtime stage copies only
# that venv: no apt lists, pip cache, source tree or build tools. TensorRT (the C++ libraries, trtexec
# and the Python bindings) comes from the base image; the venv sees the base's `tensorrt` module through
# --system-site-packages, and every other package is installed into the venv with --ignore-installed,
# so the venv holds exactly the set that tests/test_deploy_env.py resolves, whatever the base ships.
#
# The base pins TensorRT 10 (the TensorRT 10 API only, DESIGN.md section 6), Ubuntu 24.04 and Python 3.12.
# Its CUDA and the CUDA 13 build of torch need an NVIDIA driver R580 or newer on the host.
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.11-py3

FROM ${BASE_IMAGE} AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# python3-venv: Ubuntu splits ensurepip out of the interpreter. The base tag pins the distribution and
# the archive keeps only the current patch of the package, so its version is not pinned here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# CI resolves docker/requirements.txt for this Python (tests/test_deploy_env.py): fail here if the base differs.
RUN python3 -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' \
    && python3 -m venv --system-site-packages /opt/venv \
    && /opt/venv/bin/python -m pip install --upgrade "pip>=24.2"

# Dependencies first: this layer is rebuilt only when the pinned set changes, not on every code change.
COPY docker/requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/python -m pip install --ignore-installed -r /tmp/requirements.txt

COPY pyproject.toml README.md /src/
COPY clipmc /src/clipmc
COPY model /src/model
COPY export /src/export
COPY gallery /src/gallery
COPY service /src/service
RUN /opt/venv/bin/python -m pip install --no-deps /src \
    && /opt/venv/bin/python -c "import tensorrt as trt; v = trt.__version__; assert v.split('.')[0] == '10', f'TensorRT 10 expected in the base image, found {v}'; print('TensorRT', v)" \
    && /opt/venv/bin/clipmc --help > /dev/null \
    && /opt/venv/bin/python -c "import clipmc.export, clipmc.gallery, clipmc.model, clipmc.service.app; import faiss, onnxruntime, torch; from cuda.bindings import runtime; assert hasattr(faiss, 'GpuIndexCagra'), 'faiss-gpu-cuvs expected'"

FROM ${BASE_IMAGE} AS runtime

ARG CLIPMC_UID=10001
LABEL org.opencontainers.image.title="clipmc" \
      org.opencontainers.image.description="CLIP-MC visible-infrared person re-identification service" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed non-root user. The mount points exist and belong to it, so that named volumes mounted there
# start out owned by it (Docker copies the ownership of an image directory into a new named volume).
RUN groupadd --system --gid "${CLIPMC_UID}" clipmc \
    && useradd --system --uid "${CLIPMC_UID}" --gid clipmc --create-home --home-dir /home/clipmc \
       --shell /usr/sbin/nologin clipmc \
    && mkdir -p /weights /cache /data \
    && chown clipmc:clipmc /cache /data

COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/clipmc-entrypoint
COPY --chmod=0644 docker/healthcheck.py /usr/local/lib/clipmc/healthcheck.py

# Defaults for a GPU host; docker-compose.yml and `docker run -e` override them. CLIPMC_API_KEYS has no
# default on purpose: without keys the service binds 127.0.0.1 only (unreachable through a published port).
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CLIPMC_BACKEND=tensorrt \
    CLIPMC_DEVICE=cuda \
    CLIPMC_PRECISION=fp16 \
    CLIPMC_WEIGHTS=/weights/best \
    CLIPMC_ENGINE_DIR=/cache/engines \
    CLIPMC_CACHE=/cache/clipmc \
    CLIPMC_GALLERY=/data/gallery \
    CLIPMC_HOST=0.0.0.0 \
    CLIPMC_PORT=8000 \
    CLIPMC_LOG_JSON=true

USER ${CLIPMC_UID}:${CLIPMC_UID}
WORKDIR /home/clipmc
VOLUME ["/cache", "/data"]
EXPOSE 8000

# /readyz answers 200 once the engine is loaded and warmed up and the gallery is open. The first start
# exports ONNX and builds the engine before the server listens (minutes), hence the long start period;
# start-interval probes often during it so that the container turns healthy soon after.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30m --start-interval=10s --retries=3 \
    CMD ["/opt/venv/bin/python", "/usr/local/lib/clipmc/healthcheck.py"]

ENTRYPOINT ["/usr/local/bin/clipmc-entrypoint"]
CMD ["serve"]
