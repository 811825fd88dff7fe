"""The settings every upstream engine shares, as written in a route entry's `options`.

Each engine's own options (`ArkOptions`, `EvolinkOptions`) extend these with their defaults and
extra fields. The key can come from the environment (`api_key_env`), so configs need not hold it.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class UpstreamOptions(BaseModel):
    """Settings shared by every upstream engine; one set per route entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(
        description="API root, e.g. https://ark.ap-southeast.bytepluses.com/api/v3"
    )
    api_key: SecretStr = Field(description="The upstream key; sent only as a bearer token")
    upstream_model: str = Field(min_length=1, description="The model id the upstream knows")
    reported_model: str | None = Field(
        default=None, description="The model name our tasks report; the upstream id if unset"
    )
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    request_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Read/write timeout of one API call (create, query)"
    )
    download_timeout_seconds: float = Field(default=120.0, gt=0)
    poll_initial_seconds: float = Field(default=2.0, gt=0)
    poll_max_seconds: float = Field(default=15.0, gt=0)
    poll_backoff: float = Field(default=1.5, ge=1.0)
    max_wait_seconds: float = Field(
        default=3600.0, gt=0, description="Give up (and cancel upstream) this long after submit"
    )
    max_poll_errors: int = Field(
        default=20, ge=1, description="Consecutive 5xx/429/network errors while polling"
    )
    max_malformed_responses: int = Field(default=3, ge=1)
    max_not_found: int = Field(
        default=3, ge=1, description="Consecutive 404s on a task query before it counts as lost"
    )
    create_rate_limit_retries: int = Field(
        default=2, ge=0, description="Create retries after a 429 (safe: nothing was created)"
    )
    max_retry_after_seconds: float = Field(default=60.0, ge=0)
    max_video_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    download_attempts: int = Field(default=3, ge=1)
    video_url_allow_loopback: bool = Field(
        default=False,
        description="Let the video URL the upstream hands back point at loopback (tests only)",
    )
    estimate_base_seconds: float = Field(default=45.0, ge=0)
    estimate_seconds_per_video_second: float = Field(default=24.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _key_from_environment(cls, data: Any) -> Any:
        """`api_key_env: NAME` reads the key from the environment, so configs need not hold it."""
        if isinstance(data, dict) and "api_key_env" in data:
            data = dict(data)
            name = data.pop("api_key_env")
            if "api_key" not in data:
                value = os.environ.get(str(name))
                if not value:
                    raise ValueError(f"environment variable {name} (api_key_env) is not set")
                data["api_key"] = value
        return data
