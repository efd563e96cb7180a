#!/usr/bin/env bash
# One-shot, idempotent set-up on a fresh Debian/Ubuntu machine (CPU):
#   * Debian packages for offscreen MuJoCo rendering (EGL via Mesa, OSMesa fallback) and ffmpeg
#   * .venv/ in the repo root with the pinned requirements and this package (editable)
# A second run only checks and returns in a few seconds.
# Never installs the PyPI package named `mimicgen` (an unrelated placeholder).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

need_apt=0
for lib in libEGL.so.1 libOSMesa.so.8 libGL.so.1; do
  ldconfig -p | grep -q "$lib" || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  echo "[setup] installing Debian packages for offscreen rendering"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    libegl1 libgl1 libgles2 libegl-mesa0 libgl1-mesa-dri libosmesa6 libglfw3 >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements.txt setup.py | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing pinned requirements into .venv (first run: a few minutes)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  .venv/bin/pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import torch, robosuite, mujoco, zarr; print('[setup] ok: torch', torch.__version__, '| robosuite', robosuite.__version__, '| mujoco', mujoco.__version__, '| zarr', zarr.__version__)" 2>&1 | grep -v WARNING || true
