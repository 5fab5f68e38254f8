#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, property and end-to-end tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --locked
