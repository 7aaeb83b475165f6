# One build for the three images of the stack. Every stage starts from
# debian:trixie-slim (pulled, or made by scripts/base-images where no
# registry is reachable); Rust comes from Debian's packages, so building
# needs no Rust toolchain on the host.
#
#   docker build --target registrator -t portolan/registrator .
#   docker build --target haproxy     -t portolan/haproxy .
#   docker build --target hello       -t portolan/hello .

FROM debian:trixie-slim AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends cargo rustc gcc libc6-dev make ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Extra CAs for networks behind an intercepting proxy (usually none).
COPY compose/ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin registrator --bin haproxy-sync --bin haproxy-keeper --bin demo-service \
 && mkdir -p /out \
 && cp target/release/registrator target/release/haproxy-sync target/release/haproxy-keeper \
       target/release/demo-service /out/

FROM debian:trixie-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM runtime AS registrator
COPY --from=builder /out/registrator /usr/local/bin/registrator
# Reads the Docker socket, mounted read-only; root is needed to open it.
ENTRYPOINT ["tini", "--", "registrator"]

FROM runtime AS hello
COPY --from=builder /out/demo-service /usr/local/bin/demo-service
RUN useradd --system --no-create-home hello
# Not root: Docker lets containers bind ports below 1024 without it.
USER hello
ENV LISTEN=0.0.0.0:80
EXPOSE 80
ENTRYPOINT ["tini", "--", "demo-service"]

FROM runtime AS haproxy
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/haproxy-sync /var/run/haproxy-sync \
 && chown haproxy:haproxy /var/lib/haproxy-sync /var/run/haproxy-sync
COPY --from=builder /out/haproxy-sync /out/haproxy-keeper /usr/local/bin/
COPY haproxy/haproxy.cfg.hbs /etc/haproxy-sync/haproxy.cfg.hbs
USER haproxy
EXPOSE 80 1936
# haproxy-keeper runs HAProxy and haproxy-sync side by side and restarts
# either if it dies: a crash of haproxy-sync never takes HAProxy down.
# tini reaps HAProxy's old workers and forwards signals to the keeper.
ENTRYPOINT ["tini", "--", "haproxy-keeper"]
