# One image for every role: `qtask api`, `qtask worker`, `qtask poller` (and `qtask serve`).
# Build args make the base image and the package source overridable, as an air-gapped site
# needs: PYTHON_IMAGE (default python:3.12-slim) and a local wheelhouse/ (see its README).
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL
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
