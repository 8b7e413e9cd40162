#!/usr/bin/env bash
# Measure an FFT run: bash scripts/measure_mnli.sh [seed=1] [task=RTE] [FFT] [extra CLI flags...]
set -euo pipefail
source "$(dirname "$0")/_args.sh"
take_positional 3 "$@"
$HEADPLAST measure --method fft --seed "${POS[0]:-1}" --task "${POS[1]:-RTE}" "${EXTRA[@]}"
