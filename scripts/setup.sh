#!/usr/bin/env bash
# Installs what a fresh machine lacks; safe to run again (each step checks first).
set -euo pipefail
cd "$(dirname "$0")/.."

# The pinned toolchain and the wasm targets named in rust-toolchain.toml.
rustup toolchain install >/dev/null

# The browser demo: the wasm-bindgen CLI of the exact version web/wasm pins, and the page tests'
# npm packages.
if ! wasm-bindgen --version 2>/dev/null | grep -q ' 0.2.129$'; then
    cargo install wasm-bindgen-cli --version 0.2.129 --locked
fi
(cd web && npm ci --no-audit --no-fund --loglevel=error)

# Debian packages: Chromium for the page tests; podman (with runc) and debootstrap for the
# container check (scripts/check-containers.sh); PostgreSQL's server programs, which the tests
# of the coordinator's replicas run in temporary directories of their own (Debian keeps them in
# /usr/lib/postgresql/VERSION/bin; the package's own cluster is not used).
missing=()
for tool in /usr/bin/chromium:chromium /usr/bin/podman:podman /usr/sbin/runc:runc \
    /usr/sbin/debootstrap:debootstrap; do
    [ -x "${tool%%:*}" ] || missing+=("${tool##*:}")
done
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "scripts/setup.sh: needs Debian's ${missing[*]}: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi
