#!/usr/bin/env bash
# Fresh-machine entry point: set up everything NetScope needs (idempotent, see scripts/setup.sh),
# then run `cargo xtask <task>`. Examples: ./xtask.sh probe   ./xtask.sh test
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec cargo xtask "$@"
