# Consul from Debian's package, for machines where hashicorp/consul cannot
# be pulled; scripts/base-images tags it portolan/consul:<its version>. The
# same command line (`agent -dev ...`) works with this image and with the
# official one.
FROM debian:trixie-slim
ARG VERSION
LABEL org.opencontainers.image.title="Consul from Debian's consul package" \
      org.opencontainers.image.version="${VERSION}"
COPY consul /usr/local/bin/consul
RUN mkdir -p /consul/data /consul/config
EXPOSE 8500 8600/udp 8600/tcp
ENTRYPOINT ["consul"]
CMD ["agent", "-dev", "-client", "0.0.0.0"]
