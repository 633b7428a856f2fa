# The state the replicas share (canary weights, deploy history, drift state, captures' rows,
# answers when GATEWAY_ANSWER_CACHE is redis://): Debian bookworm's redis-server (7.0) on the
# gateway's base image. Build from the repository root:
#   docker build -f docker/swarm/redis.Dockerfile -t yolo-swarm/redis:local .
FROM python:3.11.11-slim-bookworm

# A fixed UID (6379) for the user the package would otherwise create with a random one.
# hadolint ignore=DL3008
RUN groupadd --system --gid 6379 redis \
    && useradd --system --uid 6379 --gid redis --home-dir /var/lib/redis --shell /usr/sbin/nologin redis \
    && apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && install -d -o redis -g redis /data

USER 6379:6379
WORKDIR /data
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=3 CMD ["redis-cli", "ping"]
# Append-only file on the data volume: the history and canary weights survive a restart.
ENTRYPOINT ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data", \
            "--appendonly", "yes", "--save", ""]
