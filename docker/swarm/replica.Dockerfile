# One replica of the Swarm stack (docker/swarm/stack.yml): TorchServe and the gateway in one
# container, as in the Kubernetes pod, sharing TorchServe's key file. Built FROM the TorchServe
# image (serving/Dockerfile), so it reuses that image's layers; build from the repository root:
#   docker build -f serving/Dockerfile -t yolo-swarm/torchserve:local .
#   docker build -f docker/swarm/replica.Dockerfile -t yolo-swarm/replica:local .
ARG TORCHSERVE_IMAGE=yolo-swarm/torchserve:local
# hadolint ignore=DL3006
FROM ${TORCHSERVE_IMAGE}

USER 0
# The gateway's own imports (gateway/Dockerfile's list; torch, numpy and pillow are there already).
COPY requirements.txt /tmp/requirements.lock
RUN pip install --no-cache-dir -c /tmp/requirements.lock \
        fastapi uvicorn httpx python-multipart pillow pillow-heif prometheus-client pydantic-settings redis numpy pyyaml \
    && rm /tmp/requirements.lock
WORKDIR /app
COPY gateway/ gateway/
COPY serving/yolo_contract.py serving/yolo_files.py serving/
COPY drift/__init__.py drift/detector.py drift/calibrate.py drift/
COPY docker/swarm/replica-entrypoint.sh /usr/local/bin/replica-entrypoint.sh

# TorchServe listens on loopback only: the gateway beside it is its one client. The gateway
# is what the balancer reaches, on 8000.
ENV PYTHONPATH=/app \
    OMP_NUM_THREADS=1 \
    TS_INFERENCE_ADDRESS=http://127.0.0.1:8085 \
    TS_MANAGEMENT_ADDRESS=http://127.0.0.1:8086 \
    TS_METRICS_ADDRESS=http://127.0.0.1:8082 \
    GATEWAY_TS_INFERENCE_URL=http://127.0.0.1:8085 \
    GATEWAY_TS_MANAGEMENT_URL=http://127.0.0.1:8086 \
    GATEWAY_TS_KEY_FILE=/home/model-server/tokens/key_file.json \
    GATEWAY_STATE_STORE=/home/model-server/tokens/state.db \
    GATEWAY_SPOOL_DIR=/tmp \
    GATEWAY_SHUTDOWN_DRAIN_S=3

USER 1000:1000
WORKDIR /home/model-server/tokens
EXPOSE 8000
# Readiness: the gateway answers /health 200 only while TorchServe has a READY worker for the
# default model and the gateway is not draining.
HEALTHCHECK --interval=5s --timeout=4s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"]
# No -g: SIGTERM goes to the entrypoint alone, which drains the gateway before stopping TorchServe.
ENTRYPOINT ["tini", "--", "/usr/local/bin/replica-entrypoint.sh"]
