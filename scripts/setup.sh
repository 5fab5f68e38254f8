#!/usr/bin/env bash
# Installs what a fresh machine lacks; safe to run again (each step checks first).
set -euo pipefail
cd "$(dirname "$0")/.."

# The pinned toolchain and the wasm targets named in rust-toolchain.toml.
rustup toolchain install >/dev/null

# The browser demo: the wasm-bindgen CLI of the exact version web/wasm pins, Debian's Chromium
# for the end-to-end page tests, and the page tests' npm packages.
if ! wasm-bindgen --version 2>/dev/null | grep -q ' 0.2.129$'; then
    cargo install wasm-bindgen-cli --version 0.2.129 --locked
fi
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
        echo "scripts/setup.sh: the page tests need Chromium: sudo apt-get install chromium" >&2
        exit 1
    fi
fi
(cd web && npm ci --no-audit --no-fund --loglevel=error)
