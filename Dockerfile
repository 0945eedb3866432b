# syntax=docker/dockerfile:1
# The billing worker and CLI: `billing worker` (default) and `billing migrate` in production.
# Build from the repository root:  docker build -t xingchen-billing:0.1.0 .
# No embedded broker (`embedded` extra) and no test tools (`test` extra) in this image.
# Nothing secret is baked in: BILLING_CLICKHOUSE (with its password) and BILLING_KAFKA come from
# the environment at run time (deploy/docker-compose.yml, deploy/k8s/).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
# A C compiler in this stage only: setup.py compiles the per-record path with mypyc. Not pinned
# (DL3008): Debian's gcc in the base image's release is what CPython's headers there expect.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /app
# Dependencies first, from pyproject.toml alone (a stub package stands in for the code), so this
# layer is rebuilt only when the dependencies change. Every dependency has a manylinux wheel for
# CPython 3.11.
# The install is editable on purpose: pipeline/ finds schemas/ (DDL, price catalog, record
# schemas) next to itself (Path(__file__).parent.parent), which a site-packages install would lose.
COPY pyproject.toml README.md ./
RUN mkdir pipeline && touch pipeline/__init__.py \
    && pip install -e . \
    && rm -rf pipeline
# Then the code, and the compiled core beside it (pipeline/core/*.so, pipeline/batch/*.so, /app/pipeline_core__mypyc*.so).
# The image refuses to build when the core did not compile: a worker on the Python sources runs,
# but at about two thirds of the speed (docs/performance.md).
COPY setup.py ./
COPY pipeline/ /app/pipeline/
COPY schemas/ /app/schemas/
RUN pip install --no-deps -e . \
    && python -c "import sys, pipeline; print('core:', pipeline.CORE_BUILD.label); sys.exit(0 if pipeline.CORE_BUILD.compiled else 1)"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="xingchen-billing" \
      org.opencontainers.image.description="Usage metering and hourly billing worker (Kafka + Faust + ClickHouse)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BILLING_DATA_DIR=/var/lib/billing \
    BILLING_API_HOST=0.0.0.0 \
    BILLING_API_PORT=8080
RUN groupadd --system --gid 10001 billing \
    && useradd --system --uid 10001 --gid billing --home-dir /var/lib/billing --shell /usr/sbin/nologin billing \
    && install -d -o billing -g billing -m 0750 /var/lib/billing
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# The code stays root-owned and read-only for the service user; it writes only to
# /var/lib/billing (its data dir, and Faust's working files in the current directory).
USER 10001:10001
WORKDIR /var/lib/billing
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BILLING_API_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["billing"]
CMD ["worker"]
