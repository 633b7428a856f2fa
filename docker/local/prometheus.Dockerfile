# Local stand-in for prom/prometheus, built by containers/compose_check.py only where Docker
# Hub cannot be reached: Debian bookworm's prometheus package (2.42) on the same local
# Debian base as docker/local/python.Dockerfile. Compose picks it with
# PROMETHEUS_IMAGE=yolo-local/prometheus:bookworm; the flags and paths match the
# official image's, so docker-compose.yml's command and volumes work unchanged.
FROM yolo-local/debian:bookworm
LABEL io.github.yolo-serving.local-stand-in="true"

# Debian drops superseded package versions from its mirrors; the release is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && install -d -o nobody -g nogroup /prometheus

# nobody, as in the official image; the data volume is created owned by it.
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
HEALTHCHECK --interval=15s --timeout=5s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9090/-/ready"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
