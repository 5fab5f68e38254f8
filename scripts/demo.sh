#!/usr/bin/env bash
# The main job: installs what a fresh machine lacks, then runs `quorumvm demo` (release build).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo run --locked --release -p quorumvm-cli -- demo "$@"
