# Shared by the guide's scripts: read up to N positional arguments (stopping at the first
# --flag), leave the rest in EXTRA for the CLI.  Usage: take_positional N "$@"
take_positional() {
  local n=$1; shift
  POS=()
  while [ ${#POS[@]} -lt "$n" ] && [ $# -gt 0 ] && [[ "$1" != --* ]]; do POS+=("$1"); shift; done
  EXTRA=("$@")
}
HEADPLAST=${HEADPLAST:-headplast}
