# syntax=docker/dockerfile:1.7
# StyA2K Serve container image (docs/DEPLOY.md).
#
#   GPU (default):  docker build -t stya2k-serve:cuda .
#   CPU:            docker build --build-arg VARIANT=cpu -t stya2k-serve:cpu .
#
# Layers, from least to most often changed: OS + Python, the locked dependencies (torch from the index
# that matches the variant, then the rest of pyproject.toml's pins), the weights, the code.

ARG VARIANT=cuda
ARG CUDA_BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG CPU_BASE_IMAGE=python:3.11-slim-bookworm

# --- GPU base: NVIDIA's CUDA runtime image; torch's CUDA build from the matching wheel index (the build
# argument TORCH_INDEX_URL overrides it). The default is a plain ENV, not an ENV filled from an ARG: buildah
# reuses a cached `ENV X=${ARG}` layer even when the argument's value changed.
FROM ${CUDA_BASE_IMAGE} AS base-cuda
ENV TORCH_DEFAULT_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# --- CPU base: slim Python; torch's CPU build (no CUDA libraries, a fraction of the size).
FROM ${CPU_BASE_IMAGE} AS base-cpu
ENV TORCH_DEFAULT_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM base-${VARIANT} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# --- The pins, read from pyproject.toml so the image runs exactly the versions the tests ran. A stage of
# its own: the deps stage copies only the extracted list, so an edit elsewhere in pyproject.toml (tool
# settings, test markers) leaves the dependency layers cached. The list gets a fixed mtime because buildah
# keys the COPY --from cache on the file's metadata as well as its content.
FROM base AS requirements
COPY pyproject.toml /tmp/pyproject.toml
# The redis extra too: a replica joins a shared job store (STYA2K_JOBS_STORE=redis://...) with no other image.
RUN python3 -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['redis']))" \
        > /tmp/requirements.txt \
    && grep -q '^torch==' /tmp/requirements.txt \
    && touch -d @0 /tmp/requirements.txt

# --- Dependencies: rebuilt only when the pins change. torch comes first, alone (--no-deps), from the
# variant's index: that index then only has to hold torch itself (a local mirror of one wheel will do,
# docs/DEPLOY.md). The second install takes everything else from PyPI, torch's own dependencies included
# (the installed torch satisfies the `torch==` pin and brings its requirements into the resolution).
FROM base AS deps
# Empty = the variant's default index. Used in the RUN itself, so its value is part of that layer's cache key.
ARG TORCH_INDEX_URL
RUN python3 -m venv /opt/venv
COPY --from=requirements /tmp/requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps --index-url "${TORCH_INDEX_URL:-$TORCH_DEFAULT_INDEX_URL}" "$(grep '^torch==' /tmp/requirements.txt)" \
    && pip install -r /tmp/requirements.txt \
    && pip check
# What a serving image never runs, removed before the venv is copied into the runtime stage: torch's C++
# headers, CMake files and test binaries (no compiler in the image, so torch.compile's C++ path cannot use
# them) and pip itself.
RUN site=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && rm -rf "$site/torch/include" "$site/torch/share/cmake" "$site/torch/test" \
    && find "$site/torch/bin" -mindepth 1 ! -name torch_shm_manager -exec rm -rf {} + \
    && pip uninstall -q -y pip \
    && python3 -c "import torch, fastapi, uvicorn, PIL, av, cv2; print('torch', torch.__version__, 'ffmpeg', av.ffmpeg_version_info)"

# --- Runtime image.
FROM base AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="stya2k-serve" \
      org.opencontainers.image.description="StyA2K arbitrary style transfer HTTP service (${VARIANT})"
RUN useradd --create-home --uid 10001 --user-group stya2k
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
# Weights are baked in and checked against weights/MANIFEST at build time (a corrupt or replaced file
# fails the build); at start the entry point checks them again, or checks a volume mounted over
# /app/weights or the file STYA2K_WEIGHTS names (docs/DEPLOY.md).
COPY weights/ /app/weights/
RUN if [ -f /app/weights/MANIFEST ]; then \
        cd /app/weights && sha256sum --check --strict --ignore-missing MANIFEST; \
    else \
        echo "no weights/MANIFEST: this image needs weights mounted at /app/weights or STYA2K_WEIGHTS"; \
    fi
COPY --chmod=0755 deploy/docker/entrypoint.sh /app/deploy/docker/entrypoint.sh
COPY deploy/docker/healthcheck.py /app/deploy/docker/healthcheck.py
COPY model/ /app/model/
COPY stya2k_client/ /app/stya2k_client/
COPY service/ /app/service/

ENV PYTHONPATH=/app \
    STYA2K_HOST=0.0.0.0 \
    STYA2K_PORT=8000 \
    STYA2K_DRAIN_GRACE_S=5 \
    STYA2K_DRAIN_TIMEOUT_S=30
USER stya2k
EXPOSE 8000
# The service drains on SIGTERM: readiness 503 at once, serving for STYA2K_DRAIN_GRACE_S, then up to
# STYA2K_DRAIN_TIMEOUT_S for in-flight requests. The orchestrator's stop timeout must be longer than
# their sum (docker-compose.yml: stop_grace_period 45s; k8s: terminationGracePeriodSeconds 45).
STOPSIGNAL SIGTERM
# Start period from a measurement (docs/DEPLOY.md): two replicas started together on a shared 2-core CPU host
# (one torch thread each) took up to 183 s with the earlier warm-up, ~20 s with today's; 300 s covers the slowest
# and a torch.compile warm-up (STYA2K_COMPILE). A check that passes ends the start period at once.
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
    CMD ["python3", "/app/deploy/docker/healthcheck.py"]
ENTRYPOINT ["/app/deploy/docker/entrypoint.sh"]
CMD ["python3", "-m", "service"]
