#!/usr/bin/env bash
# The demo tests under the lowest transformers that pyproject.toml allows (a 4.x: its CLIPTextModel names weights
# `text_model.*`, which the demo loader must remap), in a second virtual environment next to `make test`'s.
# pip picks the newest diffusers that installs with it (diffusers >= 0.40 needs huggingface-hub >= 1, which no
# transformers 4.x accepts). Env: PYTHON, TORCH_PIN (default torch==2.13.0), TORCH_ARGS (e.g. an --index-url).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${LOWEST_VENV:-.venv-lowest}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
lowest=$(sed -n 's/^ *"transformers>=\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)
if [ -z "$lowest" ]; then
    echo "ci_lowest_transformers: no \"transformers>=X.Y\" requirement found in pyproject.toml" >&2
    exit 1
fi
pin="transformers~=${lowest%.*}.${lowest#*.}.0"  # 4.48 -> ~=4.48.0: the newest patch release of the lowest minor
[[ "$lowest" == *.*.* ]] && pin="transformers==$lowest"
stamp="$VENV/.installed-$(cksum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # shellcheck disable=SC2086  # TORCH_ARGS is a list of pip arguments
    "$VENV/bin/python" -m pip install -q ${TORCH_ARGS:-} "$TORCH_PIN"
    "$VENV/bin/python" -m pip install -q -e . pytest "$pin"  # the demo tests need nothing of the test extra
    touch "$stamp"
fi
"$VENV/bin/python" -c 'import diffusers, torch, transformers; print(f"lowest: transformers {transformers.__version__}, diffusers {diffusers.__version__}, torch {torch.__version__}")'
"$VENV/bin/python" -m pytest -o addopts= -q -p no:cacheprovider tests/test_demo.py tests/test_train_hardening.py
