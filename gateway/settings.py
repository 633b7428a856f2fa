"""Gateway settings, read from ``GATEWAY_*`` environment variables."""

from __future__ import annotations

from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob the gateway has; defaults match the local stack started by ``make up``."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", populate_by_name=True)

    ts_inference_url: str = Field("http://127.0.0.1:8085", description="TorchServe inference API")
    ts_management_url: str = Field("http://127.0.0.1:8086", description="TorchServe management API (server side only)")
    ts_key_file: Path = Field(Path("var/torchserve/key_file.json"), description="TorchServe's token key file")
    default_model: str = Field("yolo", description="the model /predict serves (every model: /models/NAME/predict)")
    api_keys: str = Field("", description="comma-separated API keys for predict routes; empty turns auth off")
    max_upload_bytes: int = Field(6_553_500, gt=0, description="largest accepted image (TorchServe max_request_size)")
    max_batch_files: int = Field(16, gt=0, description="most files in one /predict/batch request")
    upstream_timeout_s: float = Field(30.0, gt=0, description="time allowed for one TorchServe prediction")
    connect_timeout_s: float = Field(2.0, gt=0, description="time allowed to open a connection to TorchServe")
    max_connections: int = Field(64, gt=0, description="pooled connections to TorchServe")
    token_refresh_margin_s: float = Field(300.0, ge=0, description="refresh a TorchServe key this long before expiry")
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 503 busy and 429 too_many_slow_uploads")
    body_timeout_s: float = Field(60.0, gt=0, description="time allowed to receive a request's whole body (then 408)")
    header_timeout_s: float = Field(10.0, gt=0, description="time allowed to send a request's headers (then closed)")
    max_client_connections: int = Field(
        500, gt=0, description="open client connections; past it a new one gets 503 and is closed"
    )
    max_pending_predictions: int = Field(
        100,
        gt=0,
        validation_alias=AliasChoices("GATEWAY_MAX_PENDING_PREDICTIONS", "GATEWAY_MAX_CONCURRENT_UPLOADS"),
        description="requests whose body is complete waiting for or in TorchServe (then 503 busy); "
        "bodies still arriving never count (formerly GATEWAY_MAX_CONCURRENT_UPLOADS)",
    )
    upload_grace_s: float = Field(
        5.0, ge=0, description="time a body may take before its minimum rate and its address's cap apply"
    )
    min_upload_rate: int = Field(
        8192, ge=0, description="bytes/s a body must average once its grace is over (then 408 body_too_slow); 0: off"
    )
    max_slow_uploads_per_address: int = Field(
        20, ge=0, description="uploads from one client address still arriving after the grace (then 429); 0: off"
    )
    upload_buffer_bytes: int = Field(
        256 * 1024, ge=0, description="bytes of an upload held in memory; the rest is spooled to GATEWAY_SPOOL_DIR"
    )
    spool_dir: Path | None = Field(
        None, description="where uploads past the buffer are spooled (a disk, not a tmpfs); default: the system's"
    )
    trusted_proxies: str = Field(
        "", description="comma-separated addresses/networks whose X-Forwarded-For names the client; empty: none"
    )
    rate_limit_per_s: float = Field(
        0.0, ge=0, description="predictions/s per API key (per client address when keys are off); 0: no limit"
    )
    rate_limit_burst: int = Field(10, ge=1, description="predictions a client may send at once above its rate")
    drain_max_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="most unread body read and discarded so a client sees an early answer"
    )
    drain_timeout_s: float = Field(10.0, ge=0, description="most time spent discarding an unread body before answering")
    state_store: str = Field(
        "var/state.db",
        description="the state store (canaries, deploy history): an SQLite file, or redis://HOST:PORT/DB to share it",
    )
    admin_keys: str = Field(
        "", description="comma-separated operator keys (X-Admin-Key) for /admin routes; empty turns them off (403)"
    )

    drift_target_ert: int = Field(
        10_000, gt=0, description="requests between two false drift alarms of a version, per its calibration"
    )
    drift_target_ert_by_model: str = Field(
        "", description="per-model targets, e.g. parts=50000,yolo=20000; others use GATEWAY_DRIFT_TARGET_ERT"
    )
    drift_recent_requests: int = Field(
        5000, ge=0, description="signals of the last requests kept per version for a rebaseline (in memory)"
    )

    answer_cache: str = Field(
        "off",
        description="answer exact repeats (same image, parameters, model and version) from a cache: off, memory "
        "(this process) or redis://HOST:PORT/DB (shared by replicas)",
    )
    answer_cache_ttl_s: int = Field(3600, gt=0, description="seconds an answer is kept in the answer cache")
    answer_cache_entries: int = Field(4096, gt=0, description="most answers the memory answer cache holds (LRU)")

    capture_policy: Path | None = Field(
        None, description="YAML of per-model capture policies (what traffic is kept for labelling); unset: capture off"
    )
    capture_dir: Path = Field(Path("var/captures"), description="where captured images are kept (0600, by sha256)")

    shutdown_drain_s: float = Field(
        0.0,
        ge=0,
        description="on SIGTERM, time /health answers 503 (draining) while requests are still served, "
        "so a balancer stops sending new ones first; 0: stop at once",
    )
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="on SIGTERM, most time in-flight requests get to finish after the drain"
    )

    @field_validator("capture_policy")
    @classmethod
    def _capture_policy(cls, value: Path | None) -> Path | None:
        from gateway.capture.policy import load_policies

        load_policies(value)
        return value

    @field_validator("answer_cache")
    @classmethod
    def _answer_cache(cls, value: str) -> str:
        from gateway.answer_cache import check_location

        return check_location(value)

    @field_validator("drift_target_ert_by_model")
    @classmethod
    def _targets(cls, value: str) -> str:
        _per_model(value)
        return value

    def target_ert(self, model: str) -> int:
        return _per_model(self.drift_target_ert_by_model).get(model, self.drift_target_ert)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in filter(None, (part.strip() for part in value.split(","))):
            try:
                ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an address or network (say 10.0.0.5 or 10.0.0.0/24)") from None
        return value

    @cached_property
    def api_key_set(self) -> frozenset[str]:
        return _keys(self.api_keys)

    @cached_property
    def trusted_proxy_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        return tuple(ip_network(item.strip(), strict=False) for item in self.trusted_proxies.split(",") if item.strip())

    @cached_property
    def admin_key_set(self) -> frozenset[str]:
        return _keys(self.admin_keys)


def _per_model(listed: str) -> dict[str, int]:
    """``name=number,...`` as a dict; ValueError naming the item that is not one."""
    found = {}
    for item in filter(None, (part.strip() for part in listed.split(","))):
        name, _, number = item.partition("=")
        if not name.strip() or not number.strip().isdigit() or int(number) <= 0:
            raise ValueError(f"{item!r} is not MODEL=REQUESTS (say yolo=20000)")
        found[name.strip()] = int(number)
    return found


def _keys(listed: str) -> frozenset[str]:
    return frozenset(key.strip() for key in listed.split(",") if key.strip())
