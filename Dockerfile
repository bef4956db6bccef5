# syntax=docker/dockerfile:1.7@sha256:a57df69d0ea827fb7266491f2813635de6f17269be881f696fbfdf2d83dda33e
# wsingress: one image for the ingress controller (`serve`), the sidecar (`serve --upstream`),
# the echo server (`echo`) and the probe client (`client`, used by `helm test`).
#
#   docker build -t wsingress:dev .                                        # this machine's platform
#   docker buildx build --platform linux/amd64,linux/arm64 -t REPO:TAG .   # both, cross-compiled
#
# The build stage runs on the build machine's own platform ($BUILDPLATFORM) and cross-compiles
# for $TARGETPLATFORM, so an arm64 image needs no emulation. Base images are pinned by the
# digest of their multi-arch index; refresh both together with
#   docker buildx imagetools inspect docker.io/library/rust:1.95-bookworm
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
# (.github/workflows/release.yml checks that each pin still names an index with both platforms).

ARG BUILD_IMAGE=docker.io/library/rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

# ---- build ------------------------------------------------------------------------------
# Debian bookworm, like the distroless runtime, so the binary links against the same glibc.
FROM --platform=$BUILDPLATFORM ${BUILD_IMAGE} AS build
ARG TARGETARCH
WORKDIR /src

# The Rust target and, when it differs from the build machine's, the cross C toolchain (ring
# compiles C) and libc. Debian's packages are not version-pinned: they come from the pinned
# base image's release and take its security updates.
# hadolint ignore=DL3008
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt,sharing=locked \
    set -eu; \
    case "$TARGETARCH" in \
        amd64) triple=x86_64-unknown-linux-gnu; gcc="gcc-x86-64-linux-gnu" ;; \
        arm64) triple=aarch64-unknown-linux-gnu; gcc="gcc-aarch64-linux-gnu" ;; \
        *) echo "unsupported TARGETARCH '$TARGETARCH' (amd64, arm64)" >&2; exit 1 ;; \
    esac; \
    if [ "$(dpkg --print-architecture)" != "$TARGETARCH" ]; then \
        rm -f /etc/apt/apt.conf.d/docker-clean; \
        apt-get update; \
        apt-get install -y --no-install-recommends "$gcc" "libc6-dev-$TARGETARCH-cross"; \
    fi; \
    rustup target add "$triple"; \
    echo "$triple" > /rust-target

# Both linkers are named the same on either build machine (Debian ships the native one under
# its triple too); cc-rs reads CC_<triple> for ring's C code.
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols

COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# The registry and the target folder live in BuildKit cache mounts (one target per
# architecture), so a rebuild compiles only what changed.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=wsingress-target-${TARGETARCH},sharing=locked \
    triple="$(cat /rust-target)" \
    && cargo build --release --locked --target "$triple" --bin wsingress \
    && install -D -m 0755 "target/$triple/release/wsingress" /out/wsingress

# ---- run --------------------------------------------------------------------------------
# distroless cc: glibc, libgcc, CA certificates and tzdata; no shell, no package manager.
# The :nonroot tag runs as uid/gid 65532.
FROM ${RUNTIME_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/wsingress/wsingress
LABEL org.opencontainers.image.title="wsingress" \
      org.opencontainers.image.description="A Kubernetes ingress controller and sidecar proxy built for WebSocket traffic first" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=build /out/wsingress /usr/local/bin/wsingress
USER 65532:65532
# Proxy and admin (/metrics, /healthz, /readyz, /routes).
EXPOSE 8080 9090
ENTRYPOINT ["wsingress"]
CMD ["serve"]
