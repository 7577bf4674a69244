#!/usr/bin/env bash
# Regenerate tests/fixtures/adapterhub with AdapterHub's `adapters` library.
#
# `adapters` pins an older `transformers`, so this uses its own virtual environment
# outside the repo (default /tmp/ahvenv; override with AH_VENV).
#
#   bash scripts/make_adapterhub_fixtures.sh            # create venv if needed, generate, verify
#   TORCH_SPEC=2.13.0 AH_VENV=/tmp/ahvenv bash scripts/make_adapterhub_fixtures.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AH_VENV:-/tmp/ahvenv}"
TORCH_SPEC="${TORCH_SPEC:-2.13.0}"
ADAPTERS_VERSION="1.3.0"   # installs transformers 4.57.6 as its dependency
OUT="$ROOT/tests/fixtures/adapterhub"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# torch first: a bare `pip install adapters` would pull a multi-GB CUDA torch.
"$VENV/bin/pip" install -q "torch==${TORCH_SPEC}"
"$VENV/bin/pip" install -q "adapters==${ADAPTERS_VERSION}"

cd "$ROOT"
"$VENV/bin/python" scripts/make_adapterhub_fixtures.py "$OUT"
"$VENV/bin/python" scripts/check_adapterhub_math.py "$OUT"
du -sh "$OUT"
