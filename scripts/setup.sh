#!/usr/bin/env bash
# Installs what a fresh machine lacks; safe to run again (each step checks first).
set -euo pipefail
cd "$(dirname "$0")/.."

# The pinned toolchain and the wasm targets named in rust-toolchain.toml.
rustup toolchain install >/dev/null
