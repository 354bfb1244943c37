"""All configuration in one class: environment variables with the SMMGW_ prefix, or a .env file."""

from decimal import Decimal
from functools import lru_cache
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Dialect = Literal["standard", "smartpanel"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

SMMMIX_API_URL = "https://smmmix.com/api/v1"
# The admin token opens every operator action: long enough that guessing it is hopeless.
MIN_ADMIN_TOKEN_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SMMGW_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = "sqlite+aiosqlite:///./smm-gateway.db"
    upstream_url: str = SMMMIX_API_URL
    upstream_key: str = ""
    # None: on for the SmartPanel family (it decodes every value twice), off for the standard.
    upstream_double_decode: bool | None = None
    # "auto": read from the shape of the upstream's catalog (DESIGN.md, "Dialects").
    upstream_family: Literal["auto", "smartpanel", "standard"] = "auto"
    # Longest link the upstream stores whole; unset: 191 for SmartPanel (varchar(191)), 2048.
    upstream_max_link_length: int | None = Field(None, ge=16, le=2048)
    upstream_connect_timeout_seconds: float = Field(5.0, gt=0)
    upstream_timeout_seconds: float = Field(30.0, gt=0)
    admin_token: str = ""
    # Encrypts the API keys of the providers added with `providers add` (Fernet); unset, a
    # provider with a key cannot be added. The `default` provider's key stays UPSTREAM_KEY.
    secret_key: str = ""
    # How long a dashboard sign-in lasts (from the sign-in, however busy the session).
    dashboard_session_seconds: float = Field(8 * 3600.0, gt=0, le=30 * 24 * 3600.0)
    default_markup_percent: Decimal = Field(Decimal(0), ge=0, le=10_000)
    default_dialect: Dialect = "standard"
    currency: str = Field("USD", min_length=1, max_length=8)
    sync_interval_seconds: float = Field(30.0, gt=0)
    # Off when a separate `smm-gateway worker` process runs the sync instead.
    sync_in_process: bool = True
    services_ttl_seconds: float = Field(600.0, gt=0)
    # How often /metrics' database gauges are read (off the request path; a scrape reads none).
    metrics_refresh_seconds: float = Field(5.0, gt=0)
    rate_limit_per_second: float = Field(20.0, ge=0)
    # Per-key token bucket: `burst` requests at once, refilled at `per_second`; 0 in either = off.
    rate_limit_burst: int = Field(40, ge=0)
    # With a Redis URL the buckets live there, shared by every process and instance.
    redis_url: str = ""
    redis_prefix: str = Field("smmgw:", max_length=64)
    log_level: LogLevel = "INFO"
    log_format: Literal["json", "text"] = "json"
    # 1 in N access lines of requests that went well (errors and refusals: every line); 1: all.
    access_log_sample: int = Field(1, ge=1, le=1_000_000)
    max_body_bytes: int = Field(1_000_000, gt=0)
    max_ids_per_call: int = Field(100, ge=1, le=100)
    # Uvicorn's limits, set on purpose (README.md, "Behind a proxy"): past `concurrency`
    # connections and requests it answers 503; an idle kept-alive connection closes after
    # `keep_alive`; with the h11 parser, a request head larger than `max_header_bytes` is
    # refused (httptools, the faster default, has its own fixed limits).
    http_parser: Literal["httptools", "h11"] = "httptools"
    http_limit_concurrency: int = Field(1000, ge=1)
    http_keep_alive_seconds: int = Field(5, ge=1, le=300)
    http_max_header_bytes: int = Field(16_384, ge=1024, le=1_048_576)
    # Bearer token for /metrics; empty: /metrics is open (keep it off the public network).
    metrics_token: str = ""

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            return "postgresql+asyncpg://" + url.split("://", 1)[1]
        if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
            return "sqlite+aiosqlite://" + url.split("://", 1)[1]
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use a sqlite:/// or postgresql:// URL")
        return url

    @field_validator("admin_token", "metrics_token")
    @classmethod
    def _long_admin_token(cls, token: str) -> str:
        if not token.strip():
            return ""  # unset (or blank): the admin API is off, /metrics open
        if len(token) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"must be at least {MIN_ADMIN_TOKEN_LENGTH} characters (it guards what it opens);"
                " for example: python3 -c 'import secrets; print(secrets.token_hex(32))'"
            )
        return token

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use a redis://, rediss:// or unix:// URL (or leave it empty)")
        return url

    @field_validator("upstream_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url

    @field_validator("default_markup_percent")
    @classmethod
    def _basis_points(cls, value: Decimal) -> Decimal:
        if (value * 100) != (value * 100).to_integral_value():
            raise ValueError("at most 2 decimals")
        return value

    @property
    def default_markup_bp(self) -> int:
        return int(self.default_markup_percent * 100)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


class SettingsError(Exception):
    """A setting is invalid; the message is one line naming it."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"SMMGW_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
