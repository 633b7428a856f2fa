"""Gateway settings, read from ``GATEWAY_*`` environment variables."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob the gateway has; defaults match the local stack started by ``make up``."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

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
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 503 answers")
    body_timeout_s: float = Field(60.0, gt=0, description="time allowed to receive a request's whole body (then 408)")
    header_timeout_s: float = Field(10.0, gt=0, description="time allowed to send a request's headers (then closed)")
    max_client_connections: int = Field(
        500, gt=0, description="open client connections; past it a new one gets 503 and is closed"
    )
    max_concurrent_uploads: int = Field(100, gt=0, description="requests with a body handled at once (then 503)")
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

    @cached_property
    def api_key_set(self) -> frozenset[str]:
        return _keys(self.api_keys)

    @cached_property
    def admin_key_set(self) -> frozenset[str]:
        return _keys(self.admin_keys)


def _keys(listed: str) -> frozenset[str]:
    return frozenset(key.strip() for key in listed.split(",") if key.strip())
