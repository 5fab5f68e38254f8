#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, property and end-to-end tests), then the browser
# demo's tests in headless Chromium against `quorumvm web` (screenshots in target/web-artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --locked
# The browser tests (and CI's container check after them) run target/debug/quorumvm, which
# `cargo test` has just built for the CLI's end-to-end tests. A separate `cargo build -p
# quorumvm-cli` would resolve other features (no dev-dependencies: turmoil's tokio and indexmap
# features, the `planted-bugs` code that only the tests' own environment variables switch on)
# and so compile wasmtime and most of the tree a second time: about 7 of CI's minutes.
sh web/build.sh
node --test web/tests/
