# The production image: CUDA runtime, non-root, weights fetched and verified at build time.
#   docker build -t u2net-service .
#   docker build --build-arg U2NET_WEIGHTS_SHA256=<sha256> -t u2net-service .   (pin the weights)
# The torch wheel pinned in requirements.txt (2.13.0) brings its own CUDA 13.0 libraries (cuDNN,
# cuBLAS, ...) as pip packages, so the image needs no CUDA toolkit: the `base` flavour adds only
# the NVIDIA runtime hooks and `NVIDIA_REQUIRE_CUDA=cuda>=13.0`, so a host driver too old for the
# wheel refuses to start the container instead of leaving torch to fall back to the CPU silently.
# A `runtime` image of another CUDA version would add ~2 GB of unused, mismatched libraries.
# Keep the CUDA major here equal to the torch wheel's (tests/test_server.py checks it).
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Unpinned: the Ubuntu archive drops superseded versions, so pins would break rebuilds; the base
# image's tag pins the release.
# g++ and the Python headers: torch.compile (inductor) builds its CPU kernels with them when the
# service runs centred bf16 on a CPU with AMX (U2NET_COMPILE); without them it runs eagerly.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ \
       ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
COPY requirements.txt pyproject.toml ./
RUN pip install -r requirements.txt
COPY . .
RUN pip install --no-deps -e .

ARG U2NET_MODEL=u2net_human_seg
# The authors publish no checksum; pin the SHA-256 you trust here (bgremove prints it on download).
ARG U2NET_WEIGHTS_SHA256=
ENV U2NET_MODEL=${U2NET_MODEL} \
    U2NET_MODELS_DIR=/app/saved_models \
    OpenClone_OpenCloneFS=/OpenCloneFS \
    HOST=0.0.0.0 \
    PORT=5002

# Download, verify (checksum when known or pinned, and a strict load), or fail the build.
RUN bgremove download "${U2NET_MODEL}" --quiet \
        ${U2NET_WEIGHTS_SHA256:+--sha256 "${U2NET_WEIGHTS_SHA256}"}

# The ONNX export cache (CPU deployments) must be writable by the service user. USER is numeric
# so that Kubernetes' runAsNonRoot can verify it (a name it cannot resolve is refused).
RUN groupadd --system --gid 10001 u2net \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app u2net \
    && mkdir -p /OpenCloneFS /app/saved_models/.cache \
    && chown 10001:10001 /OpenCloneFS /app/saved_models/.cache
USER 10001:10001

EXPOSE 5002
# start-period: a CPU host with AMX compiles bf16 at the first start (about 2.5 minutes on 2 cores;
# later starts read U2NET_CACHE_DIR, a volume in docker-compose.yml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('PORT', '5002'), timeout=4)"]

CMD ["gunicorn", "-c", "gunicorn_conf.py"]
