# auditrail's container image: built in a Rust stage, run from Debian slim
# as an unprivileged user. `docker compose up` (docker-compose.yml) builds it;
# alone: `docker build -t auditrail .`

# The workspace's rust-version (Cargo.toml); a test keeps them equal.
ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# The full Debian image has what the bundled librdkafka needs (a C and C++
# compiler, make, perl); nothing else is installed.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p auditrail --bin auditrail \
    && cp target/release/auditrail /usr/local/bin/auditrail

FROM debian:bookworm-slim AS runtime
# ca-certificates: https sinks and OIDC issuers; curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
# A fixed uid, so volumes and the demo's key file (deploy/gen-certs.sh) can
# be given to it.
RUN groupadd --system --gid 10001 auditrail \
    && useradd --system --uid 10001 --gid auditrail --home-dir /var/lib/auditrail \
       --shell /usr/sbin/nologin auditrail \
    && mkdir -p /var/lib/auditrail /etc/auditrail \
    && chown auditrail:auditrail /var/lib/auditrail
COPY --from=builder /usr/local/bin/auditrail /usr/local/bin/auditrail
COPY deploy/container.toml /etc/auditrail/auditrail.toml
USER auditrail:auditrail
WORKDIR /var/lib/auditrail
# The spool: acknowledged events live here until every sink has them.
# Losing this volume loses what the sinks do not hold yet.
VOLUME ["/var/lib/auditrail"]
# OTLP/gRPC, OTLP/HTTP, the admin API (search page, queries, /healthz), and
# metrics_addr (/metrics for Prometheus, when the config sets it).
EXPOSE 4317 4318 8686 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8686/healthz"]
# serve stops cleanly on SIGTERM (docker stop): it finishes the requests in
# flight and flushes the spool.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/auditrail"]
CMD ["serve", "--config", "/etc/auditrail/auditrail.toml"]
