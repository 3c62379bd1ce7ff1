"""The ``kafka:`` section: where the cluster is, and how every client the project creates talks to it
(security protocol, SASL, TLS). Secrets are never config values: a password is read from an
environment variable or a file when a client is built (``pipeline.kafka.security``), so it cannot be
printed by ``tailsift config check``, logged with the config or kept in a repr."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.config_base import Strict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

# keys people reach for that would put a secret into the YAML: refused with where it goes instead
_SECRET_KEYS = {
    "sasl_password": "set it in the environment variable kafka.sasl_password_env names "
    "(default TAILSIFT_KAFKA_PASSWORD) or in a file named by kafka.sasl_password_file",
    "ssl_key_password": "set it in the environment variable kafka.ssl_key_password_env names "
    "(default TAILSIFT_KAFKA_SSL_KEY_PASSWORD) or in a file named by kafka.ssl_key_password_file",
}


class KafkaConfig(Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = Field("tailsift", description="consumer group of the job; also the Faust app id")
    session_timeout_ms: int = Field(10_000, ge=1_000, le=600_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100, le=60_000)
    # the job's producer sends a partition's batch once it is this old (librdkafka linger.ms).
    # Nothing it writes is read before the interval's commit or write (which sends what is left at
    # once), so waiting costs no latency; a 5 ms linger had librdkafka's broker thread wake and scan
    # every partition 200 times a second, 2-3x the thread's CPU at 50 ms (README Performance).
    # At most 500: a committed read time allows 1 s for a producer's linger
    linger_ms: int = Field(50, ge=0, le=500, description="the job producer's linger.ms")
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = Field(None, description="required with SASL_PLAINTEXT / SASL_SSL")
    sasl_username: str | None = None
    sasl_password_env: str = Field(
        "TAILSIFT_KAFKA_PASSWORD", min_length=1, description="environment variable holding the SASL password"
    )
    sasl_password_file: str | None = Field(None, description="file holding the SASL password (wins over the env)")
    ssl_ca_location: str | None = Field(None, description="PEM CA bundle; unset = the system's CA store")
    ssl_certificate_location: str | None = Field(None, description="PEM client certificate (mutual TLS)")
    ssl_key_location: str | None = Field(None, description="PEM client private key (mutual TLS)")
    ssl_key_password_env: str = Field("TAILSIFT_KAFKA_SSL_KEY_PASSWORD", min_length=1)
    ssl_key_password_file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_secrets_in_yaml(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, where in _SECRET_KEYS.items():
                if key in data:
                    raise ValueError(f"kafka.{key}: secrets are not read from the config file; {where}")
        return data

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> KafkaConfig:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be smaller than session_timeout_ms")
        return self

    @model_validator(mode="after")
    def _security_consistent(self) -> KafkaConfig:
        p = self.security_protocol
        if self.uses_sasl:
            missing = [k for k in ("sasl_mechanism", "sasl_username") if not getattr(self, k)]
            if missing:
                raise ValueError(f"kafka.security_protocol {p} needs " + " and ".join(f"kafka.{k}" for k in missing))
        else:
            stray = [k for k in ("sasl_mechanism", "sasl_username", "sasl_password_file") if getattr(self, k)]
            if stray:
                raise ValueError(
                    f"kafka.{stray[0]} is set but kafka.security_protocol is {p}: SASL is used only with "
                    "SASL_PLAINTEXT or SASL_SSL"
                )
        tls = ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location", "ssl_key_password_file")
        if not self.uses_tls:
            stray = [k for k in tls if getattr(self, k)]
            if stray:
                raise ValueError(
                    f"kafka.{stray[0]} is set but kafka.security_protocol is {p}: TLS settings apply only "
                    "to SSL or SASL_SSL"
                )
        if bool(self.ssl_certificate_location) != bool(self.ssl_key_location):
            raise ValueError("kafka.ssl_certificate_location and kafka.ssl_key_location go together (mutual TLS)")
        return self

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol.endswith("SSL")
