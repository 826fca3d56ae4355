"""Configuration from the environment, one object per service (pydantic-settings).

Defaults work on the local runtime (`./dev up`); every field is a documented variable in the
README. `TOPIC_PREFIX` exists for test isolation only: production uses the contract's names.
"""

from datetime import timedelta
from typing import Literal, Self

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        description="PostgreSQL URL; each service works in its own schema of that database",
    )
    db_schema: str | None = Field(None, description="schema of this service (default: its name)")
    topic_prefix: str = Field("", description="prefix of every topic and consumer group (tests)")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, description="port of /health (and of the service's API)")
    batch_max_records: int = Field(500, ge=1, description="records handled per transaction")
    outbox_poll_ms: int = Field(1000, ge=10, description="relay poll period when not woken")
    outbox_batch_records: int = Field(500, ge=1, description="records the relay publishes per round")
    inbox_retention_days: int = Field(30, ge=0, description="forget accepted ids after this many days (0: never)")
    max_clock_skew: timedelta = Field(
        timedelta(minutes=5), description="an event whose time is later than the clock plus this is time-futur"
    )
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: str | None = Field(None, description="OTLP/HTTP endpoint when otel_exporter=otlp")
    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: str = "INFO"
    # Start and stay (services/common/runtime/startup.py).
    startup_timeout_seconds: float = Field(
        120, gt=0, description="wait this long for Kafka and PostgreSQL at start, then exit non-zero"
    )
    unhealthy_exit_seconds: float = Field(
        300, ge=0, description="exit with code 1 once Kafka or PostgreSQL has been unreachable this long (0: never)"
    )

    @classmethod
    def of(cls, settings: "ServiceSettings") -> Self:
        """`settings` as this service's own class: a shared ServiceSettings (what the tests make)
        completed with the service's own fields, from the environment or their defaults."""
        return settings if isinstance(settings, cls) else cls(**vars(settings))

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def unprefixed(self, topic: str) -> str:
        return topic.removeprefix(self.topic_prefix)
