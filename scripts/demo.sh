#!/usr/bin/env bash
# The main job: installs what the demo needs and a fresh machine lacks (the pinned toolchain and
# its wasm targets, from rust-toolchain.toml), then runs `quorumvm demo` (release build). The
# test suite's extra tools (the wasm-bindgen CLI, Chromium, the page tests' npm packages) are
# scripts/setup.sh's.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup toolchain install >/dev/null
cargo run --locked --release -p quorumvm-cli -- demo "$@"
