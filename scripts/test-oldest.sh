#!/usr/bin/env bash
# The same suite against the oldest supported transformers (requirements/oldest.txt), in its own
# environment (.venv-oldest). CI runs it after scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENE_VENV=.venv-oldest VENE_LOCK=requirements/oldest.txt bash scripts/test.sh "$@"
