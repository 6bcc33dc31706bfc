# syntax=docker/dockerfile:1
#
# The falconerid image: the server, plus the worker that the Kubernetes
# executor copies into every worker pod.
#
#     just image                      # falconeri/falconerid:<version>
#     docker build -t falconeri/falconerid:dev .
#
# - falconerid links libpq (PostgreSQL), so it is built for, and runs on,
#   Debian bookworm with libpq5.
# - falconeri-worker is built static (musl): an init container copies it out
#   of this image into each worker pod, where it runs inside the user's
#   image, whatever libc (or none) that has. Build this image for the
#   architecture of your worker nodes (buildx --platform builds each one
#   natively under emulation, so the musl target follows `uname -m`).
# - The init container runs this image's `cp`, so the runtime stage keeps
#   coreutils; both binaries run as the non-root user 10001.

ARG RUST_VERSION=1.89
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq-dev musl-tools cmake clang \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; \
    musl="$(uname -m)-unknown-linux-musl"; \
    rustup target add "$musl"; \
    cargo build --release --locked -p falconerid; \
    # C dependencies (aws-lc) of the musl build need musl's compiler; the
    # target-specific variable leaves the host build alone.
    env "CC_$(echo "$musl" | tr - _)=musl-gcc" \
        cargo build --release --locked -p falconeri-worker --target "$musl"; \
    mkdir -p /out; \
    cp target/release/falconerid "target/$musl/release/falconeri-worker" /out/; \
    # The worker must not depend on any shared library of this image.
    if ldd /out/falconeri-worker 2>&1 | grep -q '=>'; then \
        echo "falconeri-worker is not static" >&2; exit 1; \
    fi

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq5 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 falconeri \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin falconeri
COPY --from=builder /out/falconerid /out/falconeri-worker /usr/local/bin/
USER 10001:10001
# Local workers (if anyone runs this image with the local executor) and
# their logs go under the working directory.
WORKDIR /tmp
EXPOSE 8089
ENV FALCONERI_LISTEN=0.0.0.0:8089
ENTRYPOINT ["/usr/local/bin/falconerid"]
