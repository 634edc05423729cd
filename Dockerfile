# Two images from one build: `--target broker` and `--target mgmt`. docker-compose.yml builds both;
# docker-compose.cluster.yml also `--target nats`, Debian's nats-server.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p midge-broker -p midge-mgmt -p midge-ctl

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /data --create-home midge
USER midge
WORKDIR /data

FROM runtime AS broker
COPY --from=build /src/target/release/midge-broker /usr/local/bin/midge-broker
COPY deploy/acl.conf /etc/midge/acl.conf
COPY deploy/broker-entrypoint.sh /usr/local/bin/broker-entrypoint.sh
# MQTT on 1883 and over WebSocket on 8083 (/mqtt); with server.crt and server.key mounted in
# /etc/midge/certs, also MQTT/TLS on 8883 and secure WebSocket on 8084 (see broker-entrypoint.sh).
ENV MIDGE_LISTEN=0.0.0.0:1883 MIDGE_WS_LISTEN=0.0.0.0:8083 MIDGE_ACL_FILE=/etc/midge/acl.conf
# Retained messages are kept in /data/store (a volume: they outlive the container).
ENV MIDGE_DATA_DIR=/data
VOLUME /data
EXPOSE 1883 8083 8883 8084
HEALTHCHECK --interval=5s --timeout=4s --retries=5 CMD ["midge-broker", "probe"]
ENTRYPOINT ["broker-entrypoint.sh", "midge-broker"]

FROM runtime AS mgmt
COPY --from=build /src/target/release/midge-mgmt /usr/local/bin/midge-mgmt
COPY --from=build /src/target/release/midge-ctl /usr/local/bin/midge-ctl
# `docker compose exec mgmt midge-ctl ...` reaches the sidecar it runs beside.
ENV MIDGE_MGMT_LISTEN=0.0.0.0:8080 MIDGE_MGMT_DB=/data/midge-mgmt.db MIDGE_CTL_URL=http://127.0.0.1:8080
VOLUME /data
EXPOSE 8080 18083
HEALTHCHECK --interval=5s --timeout=4s --retries=5 CMD ["midge-mgmt", "healthcheck"]
ENTRYPOINT ["midge-mgmt"]

# The NATS server a cluster of brokers joins through (docker-compose.cluster.yml): Debian's package.
FROM debian:bookworm-slim AS nats
RUN apt-get update && apt-get install -y --no-install-recommends nats-server && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10002 --home-dir /data --create-home nats
USER nats
WORKDIR /data
VOLUME /data
EXPOSE 4222 6222
ENTRYPOINT ["nats-server"]
