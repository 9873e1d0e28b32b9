#!/usr/bin/env bash
# Set up, then run the default experiment (clue-mi run) on the embedded model, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/clue-mi run "$@"
