# The Swarm stack's balancer: Debian bookworm's haproxy (2.6) on the same base image as the
# gateway (python:3.11.11-slim-bookworm, or make compose-test's local stand-in). Build from the
# repository root:  docker build -f docker/swarm/haproxy.Dockerfile -t yolo-swarm/haproxy:local .
FROM python:3.11.11-slim-bookworm

# Debian drops superseded package versions from its mirrors; the release is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
COPY docker/swarm/haproxy.cfg /usr/local/etc/haproxy/haproxy.cfg

EXPOSE 8000 8443
# Starts as root to read the operator's certificate (a Docker secret, mode 0400), then drops to
# the haproxy user (global `user`/`group`). SIGUSR1 (the stack's stop_signal) stops it softly.
HEALTHCHECK --interval=5s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8404/ready', timeout=2)"]
ENTRYPOINT ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
