#!/usr/bin/env bash
# Analyse and plot a LoRA run: bash scripts/make_plots_lora.sh [seed=1] [task=RTE] [r=8] [extra...]
set -euo pipefail
source "$(dirname "$0")/_args.sh"
take_positional 3 "$@"
$HEADPLAST plot --seed "${POS[0]:-1}" --task "${POS[1]:-RTE}" --method-label "LoRA_r${POS[2]:-8}" "${EXTRA[@]}"
