# handgen GPU worker: CUDA 13 runtime, Python 3.11, the pinned stack, EGL for headless OpenGL.
# Build:  docker build -t handgen-worker .
# Run:    docker run --gpus all -e PREFECT_API_URL=http://SERVER:4200/api -v /data:/data handgen-worker
FROM nvidia/cuda:13.0.0-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    HANDGEN_ROOT=/opt/handgen \
    HANDGEN_DATA=/opt/handgen-data \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    PATH=/opt/venv/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libegl1 libgl1 libgles2 libglvnd0 \
       libegl-mesa0 libgl1-mesa-dri libglib2.0-0 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/handgen
COPY pyproject.toml constraints.txt requirements-data.txt README.md ./
COPY pipeline/ pipeline/
COPY renderers/ renderers/
COPY captioning/ captioning/
COPY generators/ generators/
COPY sinks/ sinks/
COPY flows/ flows/
COPY evaluation/ evaluation/
RUN python3.11 -m venv /opt/venv \
    && pip install --no-cache-dir -c constraints.txt . \
    && pip install --no-cache-dir --no-deps -r requirements-data.txt \
    && python -c "from pipeline.tagging import ensure_clip_vocab, ensure_nltk_tagger; ensure_nltk_tagger(); ensure_clip_vocab()"
COPY prefect.yaml ./
COPY presets/ presets/

# A Prefect worker for the gpu pool; flow runs use this checkout ($HANDGEN_ROOT, see prefect.yaml).
ENTRYPOINT ["prefect", "worker", "start", "--pool", "gpu", "--type", "process"]
