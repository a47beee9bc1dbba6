#!/usr/bin/env bash
# Install PruneTune, its pinned dev stack and its extras (ray, serve, onnx, timm, peers, llm: their tests
# run in CI) into ./.venv
# (idempotent).
# torch goes first, so that torch-pruning does not pull another torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$PIP install -c constraints.txt torch torchvision
$PIP install -c constraints.txt -e ".[dev,ray,serve,onnx,timm,peers,llm]"
