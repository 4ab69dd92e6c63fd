#!/usr/bin/env bash
# Build the docs site with `mkdocs build --strict` (any warning fails): rendered tutorials, the
# API reference from the docstrings, the guides. Offline. Usage:
#   bash scripts/docs.sh                 # build into site/
#   bash scripts/docs.sh --site-dir DIR  # build elsewhere (the test does this)
#   bash scripts/docs.sh serve           # a local preview
#   VENE_DOCS_EXECUTE=1 bash scripts/docs.sh   # also execute the tutorials (nbclient) and show
#                                        # their printed output on the pages (minutes; CI runs
#                                        # the tutorials separately, in tests/test_tutorials.py)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENE_VENV:-.venv}
PY="$VENV/bin/python"
[ -x "$PY" ] || PY=python
export NO_MKDOCS_2_WARNING=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "serve" ]; then
  shift
  exec "$PY" -m mkdocs serve "$@"
fi
exec "$PY" -m mkdocs build --strict "$@"
