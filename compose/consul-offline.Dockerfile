# Used only where hashicorp/consul cannot be pulled: the same command line
# (`agent -dev ...`) works with this image and with the official one.
FROM debian:trixie-slim
COPY consul /usr/local/bin/consul
RUN mkdir -p /consul/data /consul/config
EXPOSE 8500 8600/udp 8600/tcp
ENTRYPOINT ["consul"]
CMD ["agent", "-dev", "-client", "0.0.0.0"]
