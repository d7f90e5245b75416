# tta-server image: the server on the bundled CIFAR-10 model, as a non-root user.
#
#   docker build -t tta-server .                                    # CPU (default)
#   docker build -t tta-server:cuda --build-arg VARIANT=cuda .      # CUDA torch + onnxruntime-gpu
#   docker run -p 8000:8000 -e TTA_DEFAULT_ADAPTER=tent tta-server
#
# Every server setting is a TTA_* environment variable (tta-server serve --help lists them).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG VARIANT=cpu
# torch first and pinned: a bare requirement would pull whatever build the index offers
ARG TORCH_CPU="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
ARG TORCH_CUDA="torch==2.13.0"
# a private package index or mirror, if the build has one (unset: pip's default index)
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
ARG PIP_DEFAULT_TIMEOUT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/tta
ENV PATH=/opt/tta/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY adapters adapters
COPY tta_server tta_server
COPY benchmarks benchmarks
RUN case "$VARIANT" in \
      cpu)  pip install $TORCH_CPU && pip install ".[cpu]" ;; \
      cuda) pip install $TORCH_CUDA && pip install ".[gpu]" ;; \
      *) echo "VARIANT must be cpu or cuda, got $VARIANT" >&2; exit 1 ;; \
    esac \
 && python -c "import tta_server, adapters; adapters.create_source_model()"

FROM ${BASE_IMAGE}
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="tta-server" \
      org.opencontainers.image.description="continual test-time adaptation as a service" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.tta-server.variant="${VARIANT}"
RUN (getent group tta || groupadd --gid 10001 tta) \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/tta --shell /usr/sbin/nologin tta \
 && mkdir -p /var/lib/tta/snapshots && chown -R tta:tta /var/lib/tta
COPY --from=build /opt/tta /opt/tta
ENV PATH=/opt/tta/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TTA_HOST=0.0.0.0 \
    TTA_PORT=8000 \
    TTA_SNAPSHOT_DIR=/var/lib/tta/snapshots \
    TTA_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/tta
EXPOSE 8000
VOLUME ["/var/lib/tta/snapshots"]
# liveness only: readiness (model loaded, snapshots restored) is the orchestrator's probe
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('TTA_PORT', '8000')}/v2/health/live\", timeout=4)"]
ENTRYPOINT ["tta-server", "serve"]
