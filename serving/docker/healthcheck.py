"""Container health check for TorchServe: GET /ping with the current inference key.

TorchServe 0.12 guards /ping with the inference key from key_file.json, and that key
expires (token_expiration_min, 60 min by default). When the file's key has expired
the check refreshes it with the non-expiring API key, the same call the gateway
makes, so an idle but healthy server is never reported as down.
Exit status 0 = healthy, 1 = not (Docker HEALTHCHECK and Kubernetes exec probes).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

KEY_FILE = Path(os.environ.get("TS_KEY_FILE", "/home/model-server/tokens/key_file.json"))
INFERENCE_URL = os.environ.get("TS_HEALTH_INFERENCE_URL", "http://127.0.0.1:8085")
MANAGEMENT_URL = os.environ.get("TS_HEALTH_MANAGEMENT_URL", "http://127.0.0.1:8086")
TIMEOUT_S = 4


def get(url: str, key: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def expired(entry: dict) -> bool:
    # TorchServe writes nanosecond precision ("...T09:06:15.504787410Z"); keep microseconds.
    stamp = entry["expiration time"].rstrip("Z")
    whole, _, fraction = stamp.partition(".")
    when = datetime.fromisoformat(f"{whole}.{fraction[:6] or '0'}").replace(tzinfo=UTC)
    return when <= datetime.now(UTC)


def inference_key() -> str:
    keys = json.loads(KEY_FILE.read_text())
    if expired(keys["inference"]):
        status, body = get(f"{MANAGEMENT_URL}/token?type=inference", keys["API"]["key"])
        if status != 200:
            raise RuntimeError(f"token refresh answered {status}: {body[:200]!r}")
        keys = json.loads(KEY_FILE.read_text())
    return keys["inference"]["key"]


def main() -> int:
    try:
        status, body = get(f"{INFERENCE_URL}/ping", inference_key())
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        print(f"unhealthy: {err}", file=sys.stderr)
        return 1
    if status == 200 and json.loads(body).get("status") == "Healthy":
        return 0
    print(f"unhealthy: /ping answered {status}: {body[:200]!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
