# syntax=docker/dockerfile:1
# The recsys image: every process of k8s/ runs it (`recsys serve NAME`, the CronJobs' commands).
#
#   docker build -t recsys:0.1.0 .
#
# Docker cannot build on the development machine. The install steps below are therefore the
# very commands `make install` runs (Makefile, target $(STAMP)), with the same pins
# (constraints.txt) and without the `train` and `dev` extras, and non-editable: `make install`
# (so every `make test` run) exercises them. Change them together.
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a virtual environment with the platform and its client, pinned -------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
# What the installs read: the pins, the two projects (README.md is the platform's readme).
COPY constraints.txt pyproject.toml README.md ./
COPY clients/python/ clients/python/
COPY server/ server/
# = make install: `$(BIN)/pip install --quiet --upgrade pip setuptools wheel`, then
#   `$(BIN)/pip install --quiet -c constraints.txt -e clients/python -e '.[cpu,train,dev]'`
#   (here non-editable, serving extra only: FAISS CPU build).
RUN /opt/venv/bin/pip install --quiet --upgrade pip setuptools wheel \
 && /opt/venv/bin/pip install --quiet -c constraints.txt ./clients/python '.[cpu]' \
 && /opt/venv/bin/recsys services

# --- runtime: the interpreter, the venv and the reference model; no compilers, no pip cache ---
FROM ${PYTHON_IMAGE} AS runtime
# A fixed, non-root uid/gid (k8s/ pod securityContext runAsUser/fsGroup 10001).
RUN groupadd --system --gid 10001 recsys \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin recsys \
 && mkdir -p /app /var/lib/recsys \
 && chown 10001:10001 /var/lib/recsys
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The reference ranking model (version 1) and its Triton configuration: rank's in-process ONNX
# fallback can serve it where no shared model repository is mounted (k8s/overlays/dev).
COPY triton_models/ /app/triton_models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
# gRPC (server.port), plaintext health for kubelet probes under mTLS (server.health_port),
# Prometheus /metrics (metrics.port).
EXPOSE 50051 50052 9464
ENTRYPOINT ["recsys"]
CMD ["--help"]
