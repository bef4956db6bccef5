# syntax=docker/dockerfile:1
# wsingress: one image for the ingress controller (`serve`), the sidecar (`serve --upstream`)
# and the echo server (`echo`).
#   docker build -t ghcr.io/wsingress/wsingress:0.1.0 .

ARG RUST_VERSION=1.95

# ---- build ------------------------------------------------------------------------------
# Debian bookworm, like the runtime image below, so the binary links against the same glibc.
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src

# 1. Dependencies only: the manifests plus empty targets, so this layer is rebuilt only when
#    Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/wsbench.rs \
    && cargo build --release --locked --bin wsingress \
    && rm -rf src benches target/release/deps/wsingress-* target/release/deps/libwsingress-* \
        target/release/.fingerprint/wsingress-* target/release/wsingress

# 2. The crate itself.
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin wsingress \
    && install -D -m 0755 target/release/wsingress /out/wsingress

# ---- run --------------------------------------------------------------------------------
# distroless cc: glibc, libgcc, CA certificates and tzdata; no shell, no package manager.
# The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="wsingress" \
      org.opencontainers.image.description="A Kubernetes ingress controller and sidecar proxy built for WebSocket traffic first" \
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
