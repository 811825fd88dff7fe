"""Configuration: one pydantic-settings object, built once at start and passed down.

Values come from `OPENDANCE_*` environment variables (nested with `__`, e.g.
`OPENDANCE_PRICES__DOUBAO-SEEDANCE-1.0-PRO-FAST__1080P`) and from an optional TOML or JSON
config file named by `OPENDANCE_CONFIG` (or `opendance serve --config`). Environment wins.
"""

from __future__ import annotations

import json
import os
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_MODEL = "doubao-seedance-1.0-pro-fast"

#: Service tiers in the order they are served: a `flex` task runs only when no `default` task of
#: its model waits (Ark's tiers; the index in this tuple is the task's stored `tier`).
SERVICE_TIERS = ("default", "flex")

#: The range of a task's deadline (`execution_expires_after`), in seconds from creation: Ark's.
DEADLINE_MIN_SECONDS = 3600
DEADLINE_MAX_SECONDS = 259200


class RouteEngine(BaseModel):
    """One engine behind a public model name: its kind and the options that kind understands."""

    engine: str = Field(description="Engine kind: sandbox, diffusers, ark, evolink.")
    options: dict[str, Any] = Field(default_factory=dict)


class Route(BaseModel):
    """Which engine(s) serve a public model name. More than one engine means failover, in order."""

    engines: list[RouteEngine] = Field(min_length=1)


def _default_routes() -> dict[str, Route]:
    return {DEFAULT_MODEL: Route(engines=[RouteEngine(engine="sandbox")])}


def _default_prices() -> dict[str, dict[str, Decimal]]:
    # Credits per second of video, per quality. 5 s at 1080p = 8 credits, as in the contract.
    return {
        DEFAULT_MODEL: {"480p": Decimal("0.6"), "720p": Decimal("1.0"), "1080p": Decimal("1.6")}
    }


class Settings(BaseSettings):
    """Every setting of the server, worker and CLI."""

    model_config = SettingsConfigDict(
        env_prefix="OPENDANCE_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Field(
        default_factory=lambda: Path.home() / ".opendance",
        description="Where the SQLite database, results and secrets live.",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in data_dir."
    )
    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str | None = Field(
        default=None, description="Absolute base for result URLs; default http://host:port."
    )
    workers: int = Field(default=2, ge=0, description="In-process worker threads (0: none).")
    dispatch: Literal["local", "procrastinate"] = Field(
        default="local",
        description="local: worker threads claim from the database. procrastinate: API "
        "processes defer jobs, `opendance worker` processes run them (PostgreSQL only).",
    )
    shutdown_grace_seconds: float = Field(
        default=600.0, ge=0, description="On SIGTERM, how long running tasks may finish."
    )
    result_ttl_seconds: int = Field(default=86400, ge=60)
    storage_url: str | None = Field(
        default=None,
        description="Where results and uploads live: empty for data_dir, or s3://bucket/prefix "
        "(credentials from the standard AWS chain).",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="The S3 API of a non-AWS service (MinIO, Ceph, R2, ...)."
    )
    result_urls: Literal["proxy", "redirect", "presigned"] = Field(
        default="proxy",
        description="Result URLs: opendance's signed URL streaming the object (proxy), the same "
        "URL redirecting to a presigned bucket URL (redirect), or the presigned URL (presigned).",
    )
    url_signing_secret: SecretStr | None = Field(
        default=None, description="HMAC key for result URLs; default: generated in data_dir."
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A processing task whose worker is silent this long is re-queued.",
    )
    max_attempts: int = Field(default=3, ge=1, description="Attempts before a task fails for good.")
    poll_interval_seconds: float = Field(default=0.5, gt=0)
    sweep_interval_seconds: float = Field(default=60.0, gt=0)
    max_queued_tasks: int = Field(default=10000, ge=1, description="503 beyond this many pending.")
    first_key_credits: int = Field(default=1000, ge=0)
    routes: dict[str, Route] = Field(default_factory=_default_routes)
    prices: dict[str, dict[str, Decimal]] = Field(default_factory=_default_prices)
    group_price_multipliers: dict[str, Decimal] = Field(default_factory=dict)
    image_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    image_max_pixels: int = Field(default=36_000_000, ge=1)
    image_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    image_total_timeout_seconds: float = Field(
        default=20.0, gt=0, description="Deadline for a whole image download."
    )
    # Test and local-development only: lets callbacks and image URLs reach loopback.
    allow_loopback_for_tests: bool = False
    extra_ca_file: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="413 above this.")
    rate_limit_create: str = Field(
        default="120/minute", description="Creates per key (limits syntax)."
    )
    rate_limit_read: str = Field(default="3000/minute", description="Other requests per key.")
    rate_limit_storage_url: str = Field(
        default="memory://", description="limits storage: memory:// (one process) or redis://..."
    )
    max_active_tasks_per_key: int = Field(
        default=100, ge=1, description="Pending + processing tasks a key may have (429 beyond)."
    )
    idempotency_ttl_seconds: int = Field(default=86400, ge=60)
    fair_share_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Share of each model's queue per key group (default 1 each): a group with "
        "weight 2 gets twice the GPU time of a weight-1 group while both have tasks waiting.",
    )
    flex_price_ratio: Decimal = Field(
        default=Decimal("0.5"),
        gt=0,
        le=1,
        description="The price of a flex-tier task, as a fraction of the default tier's "
        "(rounded up to whole credits).",
    )
    execution_expires_after: dict[str, int] = Field(
        default_factory=dict,
        description="Server default deadline per tier, in seconds from creation, for tasks "
        "that do not set one: a task not started by then ends expired, refunded.",
    )

    @field_validator("fair_share_weights")
    @classmethod
    def _positive_weights(cls, value: dict[str, float]) -> dict[str, float]:
        for group, weight in value.items():
            if not weight > 0:
                raise ValueError(f"fair_share_weights[{group!r}] must be above 0")
        return value

    @field_validator("execution_expires_after")
    @classmethod
    def _deadline_range(cls, value: dict[str, int]) -> dict[str, int]:
        for tier, seconds in value.items():
            if tier not in SERVICE_TIERS:
                raise ValueError(
                    f"execution_expires_after: unknown tier {tier!r} (tiers: "
                    + ", ".join(SERVICE_TIERS)
                    + ")"
                )
            if not DEADLINE_MIN_SECONDS <= seconds <= DEADLINE_MAX_SECONDS:
                raise ValueError(
                    f"execution_expires_after[{tier!r}] must be {DEADLINE_MIN_SECONDS}.."
                    f"{DEADLINE_MAX_SECONDS} seconds"
                )
        return value

    @field_validator("storage_url")
    @classmethod
    def _known_store(cls, value: str | None) -> str | None:
        if value and not (value.startswith("s3://") and len(value) > len("s3://")):
            raise ValueError("storage_url must be s3://bucket/prefix, or empty for data_dir")
        return value or None

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'opendance.db'}"

    @property
    def base_url(self) -> str:
        base = self.public_base_url or f"http://{self.host}:{self.port}"
        return base.rstrip("/")

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the TOML/JSON file named by OPENDANCE_CONFIG, if any."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("OPENDANCE_CONFIG")
        if not path:
            return {}
        return load_config_file(Path(path))


def load_config_file(path: Path) -> dict[str, Any]:
    """Parse a config file (TOML or JSON by extension)."""
    text = path.read_text()
    if path.suffix == ".json":
        data: dict[str, Any] = json.loads(text)
        return data
    return tomllib.loads(text)
