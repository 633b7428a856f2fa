#!/usr/bin/env bash
# One replica: TorchServe, then the gateway once TorchServe has written its keys.
# The archive comes from the service spec: MODEL_VERSION (and MODEL_NAME, default yolo) name
# <name>_v<version>.mar in the model store; MODELS="a=a_v1.0.mar b=b_v2.0.mar" serves several.
# SIGTERM: the gateway drains (not ready at once, answers what it has, exits when done), and
# only then is TorchServe stopped. If either process dies, the other is stopped and the
# replica exits non-zero, so Swarm replaces it.
set -euo pipefail

name=${MODEL_NAME:-yolo}
if [[ -z ${MODELS:-} && -z ${MODEL_VERSION:-} ]]; then
    echo "replica: set MODEL_VERSION (the archive version to serve, e.g. 1.0) or MODELS in the service spec" >&2
    exit 2
fi
models=${MODELS:-${name}=${name}_v${MODEL_VERSION}.mar}
store=/home/model-server/model-store
for model in ${models}; do
    archive=${model#*=}
    if [[ ! -r ${store}/${archive} ]]; then
        echo "replica: ${store}/${archive} is missing or unreadable: package it with scripts/package_mar.sh" >&2
        exit 2
    fi
done
key_file=${GATEWAY_TS_KEY_FILE}
rm -f "${key_file}"

# Its own session, so stopping it reaches the launcher and the Java frontend it starts.
# shellcheck disable=SC2086
setsid torchserve --start --foreground --ncs --model-store "${store}" \
    --ts-config /home/model-server/config.properties --models ${models} &
ts=$!
gw=""

stop() {
    trap '' TERM INT
    echo "replica: stopping: the gateway drains first, then TorchServe" >&2
    if [[ -n ${gw} ]]; then
        kill -TERM "${gw}" 2>/dev/null || true
        wait "${gw}" || true
    fi
    kill -TERM -- "-${ts}" 2>/dev/null || true
    wait "${ts}" || true
    exit 0
}
trap stop TERM INT

for _ in $(seq 600); do
    [[ -s ${key_file} ]] && break
    if ! kill -0 "${ts}" 2>/dev/null; then
        echo "replica: TorchServe exited before writing its keys" >&2
        exit 1
    fi
    sleep 0.2
done

python -m gateway.serve --host 0.0.0.0 --port 8000 &
gw=$!
status=0
wait -n "${ts}" "${gw}" || status=$?
echo "replica: $(kill -0 "${gw}" 2>/dev/null && echo TorchServe || echo the gateway) exited (${status}); stopping" >&2
trap '' TERM INT
kill -TERM "${gw}" 2>/dev/null || true
kill -TERM -- "-${ts}" 2>/dev/null || true
wait || true
exit 1
