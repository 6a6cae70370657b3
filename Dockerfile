# syntax=docker/dockerfile:1
# Ferrocore's container image: `ferrocore serve` as a non-root user, data in the volume
# /var/lib/ferrocore. Build and run: see docs/install.md. This file has not been built on the
# machines Ferrocore is developed on (no Docker engine runs there).
#
#   docker build -t ferrocore .
#   docker run -d --name ferrocore -p 8080:8080 -p 8081:8081 -p 8883:8883 \
#       -v ferrocore-data:/var/lib/ferrocore -e FERROCORE_TLS_NAMES=iot.example.com ferrocore

# --- Build ----------------------------------------------------------------------------------------
FROM rust:bookworm AS builder
WORKDIR /src
COPY . .
# BuildKit cache mounts keep the registry and compiled dependencies between builds, so a change to
# Ferrocore's own code recompiles only that. No debug info: the release profile's line tables
# would add some 150 MB to the binary.
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ferrocore \
    && cp target/release/ferrocore /usr/local/bin/ferrocore

# --- Run ------------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: the system roots, for sinks and clients talking to https:// and TLS servers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ferrocore \
    && useradd --system --uid 10001 --gid ferrocore --home-dir /var/lib/ferrocore \
        --no-create-home --shell /usr/sbin/nologin ferrocore \
    && install -d -o ferrocore -g ferrocore -m 0700 /var/lib/ferrocore
COPY --from=builder /usr/local/bin/ferrocore /usr/bin/ferrocore

# In a container the listeners face the container's network, not loopback; override any of these
# with `docker run -e`. Every setting: docs/configuration.md, `ferrocore serve --help`.
# NO_COLOR: plain log lines for `docker logs`.
ENV FERROCORE_DATA_DIR=/var/lib/ferrocore \
    NO_COLOR=1 \
    FERROCORE_HTTP=0.0.0.0:8080 \
    FERROCORE_GRPC=0.0.0.0:8081 \
    FERROCORE_MQTTS=0.0.0.0:8883
VOLUME ["/var/lib/ferrocore"]
WORKDIR /var/lib/ferrocore
# REST API, HTTP device bridge, /healthz and /metrics; gRPC; MQTT over TLS.
EXPOSE 8080 8081 8883
USER 10001:10001
ENTRYPOINT ["ferrocore"]
CMD ["serve"]
