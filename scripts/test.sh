#!/usr/bin/env bash
# Install (if needed) and run the offline test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# -m "" also runs the tests marked slow (they use the embedded SmolLM2; ~30 s on a fresh machine)
.venv/bin/python -m pytest -q -p no:cacheprovider -m "" "$@"
