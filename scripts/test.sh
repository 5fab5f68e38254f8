#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, property and end-to-end tests), then the browser
# demo's tests in headless Chromium against `quorumvm web` (screenshots in target/web-artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --locked
cargo build --locked -p quorumvm-cli
sh web/build.sh
node --test web/tests/
