# One image for every role: `qtask api`, `qtask worker`, `qtask poller` (and `qtask serve`);
# with `--build-arg QTASK_EXTRAS=server,mesh` also `qtask coordinator` and `qtask node` (the
# mesh: py-libp2p's fastecdsa has no wheel, so that build compiles it with gcc and libgmp-dev
# in the build stage, and the final stage gets only libgmp10; docker-compose.mesh.yml).
# Build args make the base image and the package source overridable, as an air-gapped site
# needs: PYTHON_IMAGE (default python:3.12-slim) and a local wheelhouse/ (see its README).
# AER_PACKAGE swaps the simulator's distribution: `--build-arg AER_PACKAGE=qiskit-aer-gpu` (CUDA
# 12; `qiskit-aer-gpu-cu11` for CUDA 11) ships the same `qiskit_aer` module with the GPU device,
# so it replaces qiskit-aer rather than sitting beside it; run the image with `--gpus all`.
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL
ARG AER_PACKAGE=qiskit-aer
ARG QTASK_EXTRAS=server
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY wheelhouse/ /wheelhouse/
RUN python3 -m venv /opt/qtask
# Wheels only, except the mesh's fastecdsa (an sdist): its compiler and headers stay in this
# stage. Python.h comes with the python image; Debian's own python3 needs python3-dev for it.
RUN set -eu; \
    case ",$QTASK_EXTRAS," in *,mesh,*) \
        dev="gcc libc6-dev libgmp-dev"; \
        python3 -c 'import os, sysconfig; os.stat(sysconfig.get_paths()["include"] + "/Python.h")' \
            2>/dev/null || dev="$dev python3-dev"; \
        apt-get update && apt-get install -y --no-install-recommends $dev \
        && rm -rf /var/lib/apt/lists/*;; \
    esac
RUN set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then src="--no-index --find-links /wheelhouse"; \
    else src=""; fi; \
    /opt/qtask/bin/pip install $src --only-binary=:all: --upgrade setuptools wheel
# The dependencies first, named by pyproject.toml alone (the server extra: plain `.` is the
# client only, httpx and rich; and mesh when asked for): a change to src/ reuses this layer
# instead of installing Qiskit, Aer and the rest again.
COPY pyproject.toml ./
RUN set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then src="--no-index --find-links /wheelhouse"; \
    else src=""; fi; \
    python3 -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + [d for e in sys.argv[1].split(",") \
for d in p["optional-dependencies"][e]]))' "$QTASK_EXTRAS" > /tmp/requirements.txt; \
    /opt/qtask/bin/pip install $src --prefer-binary --no-build-isolation -r /tmp/requirements.txt
COPY README.md ./
COPY src ./src
RUN set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then src="--no-index --find-links /wheelhouse"; \
    else src=""; fi; \
    /opt/qtask/bin/pip install $src --no-deps --no-build-isolation ".[$QTASK_EXTRAS]" \
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
# data/ exists and is the user's, so a volume mounted there is writable (docker-compose.mesh.yml).
RUN useradd --create-home --uid 10001 qtask && install -d -o qtask -g qtask /home/qtask/data
COPY --from=build /opt/qtask /opt/qtask
# fastecdsa (the mesh) links libgmp at run time.
RUN set -eu; \
    if ls -d /opt/qtask/lib/python3*/site-packages/fastecdsa >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends libgmp10 \
        && rm -rf /var/lib/apt/lists/*; \
    fi
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
