#!/usr/bin/env bash
# Analyse and plot a run: bash scripts/make_plots.sh [seed=1] [task=RTE] [method=FFT|LoRA_r8] [extra...]
set -euo pipefail
source "$(dirname "$0")/_args.sh"
take_positional 3 "$@"
$HEADPLAST plot --seed "${POS[0]:-1}" --task "${POS[1]:-RTE}" --method-label "${POS[2]:-FFT}" "${EXTRA[@]}"
