# syntax=docker/dockerfile:1
#
# The `quorumvm` binary (every CLI command, the coordinator and the custodian) in a small Debian
# image, running as an unprivileged user. docker-compose.yml runs it as the local cluster of
# `quorumvm dev`; `bash scripts/check-deploy.sh` lints this file and validates that one.
#
#   docker build -t quorumvm .
#   docker run --rm quorumvm --help
#
# Needs BuildKit (the default builder since Docker 23, and always with `docker compose build`):
# the build keeps cargo's registry and target directory in cache mounts, so a rebuild after a
# source change recompiles only what changed. The first build compiles wasmtime (with thin LTO):
# count on well over five minutes on two cores.

# The runtime's base image, and where its binary comes from: `builder` compiles it here;
# `prebuilt` takes the file `quorumvm` from the build context instead. scripts/check-containers.sh
# builds the runtime image that way (`--target runtime`, the context a directory holding the
# binary and packages/, BASE a Debian made with debootstrap), where no registry is reachable.
ARG BASE=debian:bookworm-slim
ARG BINARY=builder

FROM rust:1.95-bookworm AS builder
WORKDIR /src

# The toolchain, components and wasm targets pinned in rust-toolchain.toml. rustup does not
# install them by itself when RUSTUP_AUTO_INSTALL=0, so ask explicitly (as scripts/setup.sh
# does), and add the target the build cannot do without by name too: some rustup releases
# skip the file's targets when its toolchain is already installed, as it is in this image.
# Its own layer: it changes only with that file.
COPY rust-toolchain.toml ./
RUN rustup toolchain install \
    && rustup target add wasm32-unknown-unknown \
    && rustup show active-toolchain \
    && rustup target list --installed

# The image's gcc builds the SQLite that rusqlite bundles; the build script of guest/artifacts
# runs a nested cargo that builds the evaluator for wasm32-unknown-unknown into target/guests.
# The binary is copied out of the cache mount, which later stages cannot see.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p quorumvm-cli \
    && install -D -m 0755 target/release/quorumvm /out/quorumvm

FROM scratch AS prebuilt
COPY quorumvm /out/quorumvm

FROM ${BINARY} AS binary

FROM ${BASE} AS runtime
LABEL org.opencontainers.image.title="quorumvm" \
      org.opencontainers.image.description="Threshold execution of secret parametric functions" \
      org.opencontainers.image.licenses="Apache-2.0"

# No packages: the binary needs just libc, libm and libgcc_s, which the base image has (SQLite
# is compiled in). /cluster and the mount points of docker-compose.yml's volumes under it are
# created owned by the unprivileged user: Docker and podman copy a mount point's ownership into
# a named volume when they first mount the empty volume there, so the servers can write it.
RUN groupadd --system --gid 10001 quorumvm \
    && useradd --system --uid 10001 --gid quorumvm --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin quorumvm \
    && install -d -o quorumvm -g quorumvm -m 0700 /cluster /cluster/coordinator \
        /cluster/custodian-1 /cluster/custodian-2 /cluster/custodian-3 /cluster/operators \
        /cluster/publisher

COPY --from=binary /out/quorumvm /usr/local/bin/quorumvm
# The example programs, to compile and install from inside a container.
COPY packages/ /usr/local/share/quorumvm/packages/

# quorumvm, by number, so that a runtime can tell it is not root without reading /etc/passwd.
USER 10001:10001
WORKDIR /cluster
# The log filter of the servers (tracing's EnvFilter syntax, e.g. `info,quorumvm_custodian=debug`).
ENV RUST_LOG=info
# The coordinator and the three custodians of docker-compose.yml.
EXPOSE 7100 7101 7102 7103

ENTRYPOINT ["quorumvm"]
CMD ["--help"]
