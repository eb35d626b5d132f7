# syntax=docker/dockerfile:1
# rnnlab serving image: FastAPI + the committed weights, CPU PyTorch by default.
#
#   docker build -t rnnlab:cpu .                                  # CPU wheels (small)
#   docker build --build-arg TORCH_INDEX=https://pypi.org/simple -t rnnlab:cuda .
#
# The CUDA variant needs no CUDA base image: PyPI's Linux torch wheels carry the CUDA runtime
# (nvidia-* packages), so the host needs only the NVIDIA driver and container toolkit. Another
# wheel index (https://download.pytorch.org/whl/cu126, ...) works the same way.
# Settings come from the environment: RNNLAB_* (app/settings.py) and UVICORN_* (server flags).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with the runtime dependencies only -------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY pyproject.toml .
# pyproject.toml is the one source of the pins: torch/torchvision come from TORCH_INDEX (CPU-only
# wheels by default, ~0.7 GB installed instead of ~5 GB with the CUDA libraries), the rest from PyPI.
# torch/include (C++ headers, only for building extensions) is dropped.
RUN python -m venv /opt/venv \
 && python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
torch = [d for d in deps if d.split('=')[0].strip() in ('torch', 'torchvision')]; \
open('torch.txt', 'w').write('\n'.join(torch)); \
open('requirements.txt', 'w').write('\n'.join(d for d in deps if d not in torch))" \
 && pip install --index-url "${TORCH_INDEX}" -r torch.txt \
 && pip install -r requirements.txt \
 && rm -rf /opt/venv/lib/python3.11/site-packages/torch/include \
 && python -c "import torch, fastapi, PIL, safetensors; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---- runtime: the venv, the service code and the weights; no compilers, no pip cache ----------
FROM ${PYTHON_IMAGE} AS runtime
ARG RNNLAB_UID=10001
# A system account (no password aging, no lastlog/faillog entries) above Debian's system range
# (SYS_UID_MAX 999) so it cannot collide with the host's system users; -K raises the limit for
# this one call, which silences useradd's "uid 10001 is greater than SYS_UID_MAX" warning.
RUN groupadd --system --gid "${RNNLAB_UID}" rnnlab \
 && useradd --system -K SYS_UID_MAX="${RNNLAB_UID}" --uid "${RNNLAB_UID}" --gid rnnlab \
            --home-dir /srv/rnnlab --no-create-home --shell /usr/sbin/nologin rnnlab
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv/rnnlab
# Code and weights stay root-owned and read-only to the service user.
COPY app/ app/
COPY models/*.py models/
COPY models/weights/ models/weights/
COPY static/ static/
# Compile once at build time: the container's filesystem is read-only at run time.
RUN /opt/venv/bin/python -m compileall -q app models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UVICORN_HOST=0.0.0.0 \
    UVICORN_PORT=8000 \
    UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN=20 \
    RNNLAB_LOG_FORMAT=json
# Numeric, so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER ${RNNLAB_UID}:${RNNLAB_UID}
EXPOSE 8000
# 200 once every model is loaded; urllib raises (exit 1) on 503 or no answer. No curl needed.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('UVICORN_PORT', '8000') + '/readyz', timeout=2)"]
# uvicorn workers on SO_REUSEPORT sockets (app/serve.py); WEB_CONCURRENCY sets how many (1 here,
# compose runs 2 per 2-CPU replica). Scale out with more containers (docs/serving.md).
ENTRYPOINT ["python", "-m", "app.serve"]
