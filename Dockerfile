# One build for the three images of the stack, the same online and offline.
# Build stages start from debian:trixie-slim (pulled, or made by
# scripts/base-images where no registry is reachable); Rust and HAProxy come
# from Debian's packages, so building needs no toolchain on the host. The
# images themselves start FROM scratch and hold only their programs, the
# shared libraries those load (found by ldd: scripts/rootfs), CA
# certificates, tini and the users they run as: no shell, no package manager.
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
    cargo build --release --locked --bin registrator --bin docker-door --bin haproxy-sync --bin haproxy-keeper \
       --bin demo-service \
 && cp target/release/registrator target/release/docker-door target/release/haproxy-sync \
       target/release/haproxy-keeper target/release/demo-service /usr/local/bin/
# docker-door shares registrator's image: run with `entrypoint: [tini, --, docker-door]`
# it holds the Docker socket and lets registrator read, nothing more.
RUN scripts/rootfs /fs/registrator /usr/local/bin/registrator /usr/local/bin/docker-door \
 && scripts/rootfs /fs/hello /usr/local/bin/demo-service \
 && scripts/rootfs /fs/haproxy-sync /usr/local/bin/haproxy-sync /usr/local/bin/haproxy-keeper

# What every image holds besides its programs.
FROM debian:trixie-slim AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN mkdir -p /fs/etc/ssl/certs /fs/usr/bin /fs/tmp \
 && cp /etc/ssl/certs/ca-certificates.crt /fs/etc/ssl/certs/ \
 && cp /usr/bin/tini-static /fs/usr/bin/tini \
 && chmod 1777 /fs/tmp \
 && printf '%s\n' 'root:x:0:0:root:/root:/usr/sbin/nologin' \
      'hello:x:10001:10001::/nonexistent:/usr/sbin/nologin' \
      'haproxy:x:10002:10002::/nonexistent:/usr/sbin/nologin' >/fs/etc/passwd \
 && printf '%s\n' 'root:x:0:' 'hello:x:10001:' 'haproxy:x:10002:' >/fs/etc/group \
 && printf '%s\n' 'hosts: files dns' >/fs/etc/nsswitch.conf

# HAProxy from Debian (trixie: 3.0 LTS), with the libraries it loads.
FROM debian:trixie-slim AS haproxy-bin
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/rootfs /usr/local/bin/rootfs
RUN rootfs /fs /usr/sbin/haproxy \
 && mkdir -p /state/var/lib/haproxy-sync /state/var/run/haproxy-sync

FROM scratch AS registrator
COPY --from=base /fs/ /
COPY --from=builder /fs/registrator/ /
ENV PATH=/usr/local/bin:/usr/bin:/usr/sbin
# Root, as Go Registrator: only root can open the Docker socket it is given.
ENTRYPOINT ["tini", "--", "registrator"]

FROM scratch AS hello
COPY --from=base /fs/ /
COPY --from=builder /fs/hello/ /
ENV PATH=/usr/local/bin:/usr/bin:/usr/sbin
# Not root: Docker lets containers bind ports below 1024 without it.
USER 10001:10001
ENV LISTEN=0.0.0.0:80
EXPOSE 80
ENTRYPOINT ["tini", "--", "demo-service"]

FROM scratch AS haproxy
COPY --from=base /fs/ /
COPY --from=haproxy-bin /fs/ /
COPY --from=builder /fs/haproxy-sync/ /
COPY --from=haproxy-bin --chown=10002:10002 /state/ /
COPY haproxy/haproxy.cfg.hbs /etc/haproxy-sync/haproxy.cfg.hbs
ENV PATH=/usr/local/bin:/usr/bin:/usr/sbin
USER 10002:10002
EXPOSE 80 443 1936
# haproxy-keeper runs HAProxy and haproxy-sync side by side and restarts
# either if it dies: a crash of haproxy-sync never takes HAProxy down.
# tini reaps HAProxy's old workers and forwards signals to the keeper.
ENTRYPOINT ["tini", "--", "haproxy-keeper"]
