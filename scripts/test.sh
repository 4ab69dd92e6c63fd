#!/usr/bin/env bash
# Install (if needed) and run the offline test suite in the locked environment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENE_VENV:-.venv}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# -m "" also runs the tests marked slow (they use the embedded SmolLM2)
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "" "$@"
