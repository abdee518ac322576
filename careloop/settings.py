"""Deployment settings: `CARELOOP_*` environment variables, then `careloop.toml`, then defaults.

Every piece of state lives below `home`, so a test or demo that points `CARELOOP_HOME` at a temporary folder is
fully isolated from any other run.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from careloop.errors import ConfigError

TOPIC_NAMES = ("fhir", "dicom", "outcomes", "predictions", "alerts", "deadletter")


class Settings(BaseSettings):
    """All of careloop's configuration; secrets are *not* here (see `careloop.secrets`)."""

    model_config = SettingsConfigDict(
        env_prefix="CARELOOP_",
        toml_file=os.environ.get("CARELOOP_CONFIG", "careloop.toml"),
        extra="forbid",
    )

    home: Path = Field(Path(".careloop"), description="folder that holds all state")
    kafka_bootstrap: str | None = Field(None, description="use this Kafka cluster instead of the local broker")
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    broker_port: int = Field(0, ge=0, le=65535, description="local broker port; 0 picks a free port")
    broker_start_timeout_s: float = Field(15.0, gt=0)
    topic_prefix: str = "careloop."
    topic_partitions: int = Field(4, ge=1, le=256)
    max_message_bytes: int = Field(5 * 1024 * 1024, ge=1024)
    site: str = "default-site"
    object_store_url: str | None = Field(None, description="fsspec URL for de-identified DICOM (default home/objects)")
    log_level: str = "INFO"
    feature_online_redis: str | None = Field(None, description="Redis connection string for Feast's online store")
    feature_registry_sql: str | None = Field(None, description="SQLAlchemy URL of a Feast SQL registry")
    dask_scheduler_address: str | None = Field(None, description="dask.distributed scheduler for feature backfills")
    # ingestion (issue 3): de-identification and gateway limits
    deid_shift_dates: bool = Field(True, description="shift every date of a patient by one per-person offset")
    deid_keep_zip3: bool = Field(False, description="keep the 3-digit ZIP of addresses (else addresses are dropped)")
    deid_keep_state: bool = Field(False, description="keep the state/region of addresses")
    gateway_port: int = Field(8080, ge=0, le=65535)
    gateway_max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest Bundle/resource/STOW body")
    gateway_max_line_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest NDJSON line in $import")
    ingest_workers: int | None = Field(None, ge=0, le=64, description="ingestion worker processes for large inputs "
                                       "(None: one per CPU; 0: everything in-process)")  # fmt: skip

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_kafka_safe(cls, v: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(v) <= allowed:
            raise ValueError("may only contain letters, digits, '.', '_' and '-'")
        return v

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        if v.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return v.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    # -- derived paths -------------------------------------------------------------------------------------------
    @cached_property
    def home_dir(self) -> Path:
        path = self.home.expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def path(self, *parts: str, mkdir: bool = True) -> Path:
        """A folder below home, created on first use."""
        p = self.home_dir.joinpath(*parts)
        if mkdir:
            p.mkdir(parents=True, exist_ok=True)
        return p

    def topic(self, name: str) -> str:
        """Full Kafka topic name for one of the logical topics of DESIGN.md."""
        if name not in TOPIC_NAMES:
            raise ConfigError(f"unknown topic {name!r}; known: {', '.join(TOPIC_NAMES)}")
        return f"{self.topic_prefix}{name}"


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "settings"
    env = f"CARELOOP_{loc.upper()}"
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"invalid setting {loc} [{env} or careloop.toml]: {first['msg']}{shown}"


def load_settings(**overrides: Any) -> Settings:
    """Settings, or one `ConfigError` line that names the bad setting."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None
    except (OSError, ValueError) as err:  # unreadable or malformed careloop.toml
        raise ConfigError(f"cannot read careloop.toml: {err}") from None
