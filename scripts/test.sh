#!/usr/bin/env bash
# Set up, then lint, format-check, type-check and run the whole test suite (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check clue_mi tests benchmarks scripts
.venv/bin/ruff format --check clue_mi tests benchmarks scripts
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
