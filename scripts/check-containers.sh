#!/usr/bin/env bash
# Runs docker-compose.yml for real, with podman: builds the runtime image from a quorumvm binary
# built on this machine, starts the compose cluster (podman-compose), runs the demo against it
# from the `tools` service, checks that no server's container can read another party's keys,
# and stops the cluster (removing its volumes).
#
# No registry of images is reachable here, so the base image is a Debian bookworm made with
# debootstrap from the Debian mirror apt uses (kept in podman's storage after the first run),
# and the Dockerfile's runtime stage is built with BINARY=prebuilt, taking the binary from a
# build context that holds only it and packages/. podman runs with runc, cgroupfs and the
# ulimits this machine accepts (a containers.conf of this script's own, in $CONTAINERS_CONF).
#
# Usage: bash scripts/check-containers.sh [BINARY]
#   BINARY defaults to target/release/quorumvm (built if absent); CI passes the dev-profile
#   binary its tests just built, to save a release build of the workspace.
# Needs (scripts/setup.sh installs them): podman, runc, debootstrap, python3 with venv.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=${1:-target/release/quorumvm}
dir=target/containers
project=quorumvm-check
base=localhost/quorumvm-base:bookworm
mkdir -p "$dir"

if [ ! -x "$binary" ]; then
    if [ "$binary" != target/release/quorumvm ]; then
        echo "no executable at $binary" >&2
        exit 1
    fi
    cargo build --release --locked -p quorumvm-cli
fi

export CONTAINERS_CONF=$PWD/$dir/containers.conf
cat > "$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF

# podman-compose, pinned, in a venv of its own (rebuilt when the pin or the Python changes).
venv=$dir/venv
pins="$(python3 --version) podman-compose==1.6.0"
if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check podman-compose==1.6.0
    echo "$pins" > "$venv/.pins"
fi
compose() { "$venv/bin/podman-compose" --project-name "$project" "$@"; }

if ! podman image exists "$base"; then
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
    mirror=${mirror:-http://deb.debian.org/debian}
    echo "== base image: debootstrap --variant=minbase bookworm from $mirror"
    rm -rf "$dir/rootfs"
    debootstrap --variant=minbase bookworm "$dir/rootfs" "$mirror" > "$dir/debootstrap.log"
    tar -C "$dir/rootfs" -c . | podman import - "$base"
    rm -rf "$dir/rootfs"
fi

echo "== image quorumvm:local from $binary"
rm -rf "$dir/context"
mkdir -p "$dir/context"
cp "$binary" "$dir/context/quorumvm"
cp -r packages "$dir/context/packages"
podman build --quiet --file Dockerfile --target runtime \
    --build-arg BASE="$base" --build-arg BINARY=prebuilt \
    --tag quorumvm:local "$dir/context"

cleanup() {
    status=$?
    if [ "$status" -ne 0 ]; then
        compose logs > "$dir/compose.log" 2>&1 || true
        echo "failed; the servers' logs are in $dir/compose.log" >&2
    fi
    compose down --volumes > /dev/null 2>&1 || true
    exit "$status"
}
trap cleanup EXIT
compose down --volumes > /dev/null 2>&1 || true

echo "== podman-compose up"
compose up --detach --no-build

echo "== the demo, from the tools service"
compose --profile tools run --rm tools demo --running /cluster --packages /usr/local/share/quorumvm/packages \
    | tee "$dir/demo.log"
grep -q "^Done\." "$dir/demo.log"

container() { podman ps --filter "label=io.podman.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -n 1; }

# podman runs health checks from systemd timers, and there is no systemd here: run each once.
echo "== the servers' health checks"
for server in coordinator custodian-1 custodian-2 custodian-3; do
    podman healthcheck run "$(container "$server")"
done

# Each server's container lists its own files (so the listing works) and none of another's.
echo "== each server sees its own keys only"
files() { podman exec "$1" find "/cluster/$2" -type f; }
for server in coordinator custodian-1 custodian-2 custodian-3; do
    name=$(container "$server")
    if [ -z "$name" ] || [ -z "$(files "$name" "$server")" ]; then
        echo "$server: no container, or it sees none of its own files" >&2
        exit 1
    fi
    for other in coordinator custodian-1 custodian-2 custodian-3 operators publisher; do
        if [ "$other" != "$server" ] && [ -n "$(files "$name" "$other")" ]; then
            echo "$server's container can read files of $other" >&2
            exit 1
        fi
    done
done
echo "ok -- the compose cluster ran the demo; each server holds only its own files"
