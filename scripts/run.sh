#!/usr/bin/env bash
# Install (if needed) and run the main job on the embedded model (SmolLM2-135M-Instruct).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python examples/interchange_demo.py "$@"
