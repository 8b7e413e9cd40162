#!/usr/bin/env bash
# Train LoRA: bash scripts/run_lora.sh [seed=1] [task=RTE] [r=8] [alpha=16] [extra CLI flags...]
set -euo pipefail
source "$(dirname "$0")/_args.sh"
take_positional 4 "$@"
$HEADPLAST train --method lora --seed "${POS[0]:-1}" --task "${POS[1]:-RTE}" \
  --lora-r "${POS[2]:-8}" --lora-alpha "${POS[3]:-16}" "${EXTRA[@]}"
