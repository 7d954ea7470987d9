#!/usr/bin/env bash
# The Flower peer benchmark's own environment, then the benchmark (bench/flower_peer.py).
#
#   bash bench/flower_env.sh [--rounds 5] [--repeats 3]     # or: make bench-flower
#
# Flower lives only in bench/.venv-flower (git-ignored), never in pyproject.toml: torch
# 2.13.0 (the local CPU wheel) first, so nothing pulls a CUDA build, then the pinned
# flwr[simulation] (which pins ray), then this repository, editable, so fedhq_sim imports
# there too. The venv is built once and rebuilt when the pin or pyproject.toml changes.
set -euo pipefail

FLWR_VERSION=1.42.0  # newest on PyPI; needs Python >= 3.11, pins ray==2.55.1 for [simulation]
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
VENV="$HERE/.venv-flower"
STAMP="$VENV/.installed-flwr-$FLWR_VERSION"

if [ ! -f "$STAMP" ] || [ "$REPO/pyproject.toml" -nt "$STAMP" ]; then
  "$PYTHON" -m venv "$VENV"
  started=$(date +%s)
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet torch==2.13.0
  "$VENV/bin/pip" install --quiet "flwr[simulation]==$FLWR_VERSION"
  "$VENV/bin/pip" install --quiet -e "$REPO"
  "$VENV/bin/pip" check
  rm -f "$VENV"/.installed-flwr-*
  touch "$STAMP"
  echo "bench/.venv-flower: installed in $(($(date +%s) - started)) s, $(du -sh "$VENV" | cut -f1)" >&2
fi

exec "$VENV/bin/python" "$HERE/flower_peer.py" "$@"
