# One image for every role: `qtask api`, `qtask worker`, `qtask poller` (and `qtask serve`).
# Build args make the base image and the package source overridable, as an air-gapped site
# needs: PYTHON_IMAGE (default python:3.12-slim) and a local wheelhouse/ (see its README).
# AER_PACKAGE swaps the simulator's distribution: `--build-arg AER_PACKAGE=qiskit-aer-gpu` (CUDA
# 12; `qiskit-aer-gpu-cu11` for CUDA 11) ships the same `qiskit_aer` module with the GPU device,
# so it replaces qiskit-aer rather than sitting beside it; run the image with `--gpus all`.
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL
ARG AER_PACKAGE=qiskit-aer
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY wheelhouse/ /wheelhouse/
RUN python3 -m venv /opt/qtask
# Wheels only: the final image needs no compiler, and this stage does not either.
RUN set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then src="--no-index --find-links /wheelhouse"; \
    else src=""; fi; \
    /opt/qtask/bin/pip install $src --only-binary=:all: --upgrade setuptools wheel
COPY pyproject.toml README.md ./
COPY src ./src
# The server extra: plain `.` is the client only (httpx, rich).
RUN set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then src="--no-index --find-links /wheelhouse"; \
    else src=""; fi; \
    /opt/qtask/bin/pip install $src --prefer-binary --no-build-isolation ".[server]" \
    && /opt/qtask/bin/pip uninstall -y setuptools wheel
# The GPU variant: the same version of qiskit_aer from the other distribution.
RUN set -eu; \
    if [ "$AER_PACKAGE" != qiskit-aer ]; then \
        if ls /wheelhouse/*.whl >/dev/null 2>&1; then src="--no-index --find-links /wheelhouse"; \
        else src=""; fi; \
        version=$(/opt/qtask/bin/python -c "import importlib.metadata as m; print(m.version('qiskit-aer'))"); \
        /opt/qtask/bin/pip uninstall -y qiskit-aer; \
        /opt/qtask/bin/pip install $src --only-binary=:all: "$AER_PACKAGE==$version"; \
    fi

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 qtask
COPY --from=build /opt/qtask /opt/qtask
ENV PATH=/opt/qtask/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OMP_WAIT_POLICY=passive \
    QTASK_SERVER__HOST=0.0.0.0 \
    QTASK_STORAGE__DATA_DIR=/home/qtask/data
USER qtask
WORKDIR /home/qtask
EXPOSE 8000 8001
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=5 \
    CMD ["python3", "-c", "import sys, urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
CMD ["qtask", "api"]
