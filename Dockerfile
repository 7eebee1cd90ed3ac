# syntax=docker/dockerfile:1
# microdcs station image: the `microdcs` binary alone on a minimal runtime.
#
#   docker build -t microdcs:latest .          (or: podman build / buildah bud)
#   docker run --rm microdcs:latest config check
#
# Build stage: Rust 1.95 on Debian bookworm, release build of the binary with
# the locked dependency versions.
FROM docker.io/library/rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io index, downloaded crates and compiled
# dependencies between builds (BuildKit; recent buildah and podman too).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin microdcs \
    && install -D -m 0755 target/release/microdcs /out/microdcs

# Runtime stage: distroless "cc" (glibc and libgcc, which the binary links
# dynamically; no shell, no package manager), running as a non-root user.
# The numeric uid matches runAsUser in deploy/; Kubernetes may override it.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/microdcs /usr/local/bin/microdcs
USER 10001:10001
# Health, readiness and metrics when APP_HTTP_PORT=8080 (as in deploy/).
EXPOSE 8080
ENTRYPOINT ["microdcs"]
CMD ["run"]
