# The image the Kubernetes manifests run (deploy/kubernetes, docs/distributed.md):
# `loadgen` as the entrypoint, the project and its runtime dependencies only (no
# test extras), as a non-root user. Built nowhere yet: see docs/distributed.md.
#   docker build -t REGISTRY/jitp-loadgen:0.1.0 .
# Python 3.11 on Debian 12: the interpreter and OpenSSL the tests and
# docs/benchmarks.md ran on.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY loadgen ./loadgen
# Our wheel first, then everything from wheels only: the final stage has no
# compiler, and a dependency without a wheel for this Python should fail here.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/loadgen \
    && /opt/loadgen/bin/pip install --only-binary=:all: /wheels/*.whl

FROM python:3.11-slim-bookworm
# Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
ARG UID=10001
RUN groupadd --gid "${UID}" loadgen \
    && useradd --uid "${UID}" --gid "${UID}" --create-home --shell /usr/sbin/nologin loadgen
COPY --from=build /opt/loadgen /opt/loadgen
ENV PATH=/opt/loadgen/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/loadgen
# The Prometheus metrics port the manifests use (--metrics-port 9464).
EXPOSE 9464
ENTRYPOINT ["loadgen"]
CMD ["--help"]
