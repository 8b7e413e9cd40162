#!/usr/bin/env bash
# Measure a LoRA run: bash scripts/measure_lora.sh [seed=1] [task=RTE] [r=8] [extra CLI flags...]
set -euo pipefail
source "$(dirname "$0")/_args.sh"
take_positional 3 "$@"
$HEADPLAST measure --method lora --seed "${POS[0]:-1}" --task "${POS[1]:-RTE}" --lora-r "${POS[2]:-8}" "${EXTRA[@]}"
