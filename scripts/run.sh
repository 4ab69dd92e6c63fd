#!/usr/bin/env bash
# Install (if needed) and run the main job on the embedded model (SmolLM2-135M-Instruct).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# ROME causal trace of "The Eiffel Tower ..." -> " Paris": writes out/trace/trace.png + trace.json
# and prints where each panel peaks (extra arguments go to `vene trace`, e.g. --samples 3).
.venv/bin/vene trace "The Eiffel Tower is located in the city of" --answer " Paris" --out out/trace "$@"
