"""The security part of every Kafka client's settings, built from ``kafka:`` in one place: librdkafka
properties for confluent-kafka clients, and credentials for the Faust (aiokafka) app.

Passwords are read here, when a client is built, from the environment variable or file the config
names, never from the config itself; they go into the client's settings and nowhere else (no log
line, no metric, no exception message)."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Any

from pipeline.config_kafka import KafkaConfig


class KafkaSecurityError(Exception):
    """Security settings that cannot be used (a missing password or file); names the key, never a secret."""


def _secret(env_key: str, env_name: str, file_key: str, file_path: str | None) -> str:
    if file_path:
        try:
            value = Path(file_path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise KafkaSecurityError(f"kafka.{file_key}: cannot read {file_path}: {exc.strerror or exc}") from None
        if not value:
            raise KafkaSecurityError(f"kafka.{file_key}: {file_path} is empty")
        return value
    value = os.environ.get(env_name, "")
    if not value:
        raise KafkaSecurityError(
            f"kafka.{env_key}: the environment variable {env_name} is not set (or put the secret in a "
            f"file named by kafka.{file_key})"
        )
    return value


def sasl_password(kafka: KafkaConfig) -> str:
    return _secret("sasl_password_env", kafka.sasl_password_env, "sasl_password_file", kafka.sasl_password_file)


def _ssl_key_password(kafka: KafkaConfig) -> str | None:
    # an unencrypted key needs none: only asked for when configured
    if not kafka.ssl_key_password_file and not os.environ.get(kafka.ssl_key_password_env):
        return None
    return _secret(
        "ssl_key_password_env", kafka.ssl_key_password_env, "ssl_key_password_file", kafka.ssl_key_password_file
    )


def _readable(key: str, path: str | None) -> str | None:
    # librdkafka's own message for a missing file is "ssl.ca.location failed: …"; say which key
    if path and not os.access(path, os.R_OK):
        raise KafkaSecurityError(f"kafka.{key}: cannot read {path}")
    return path


def librdkafka(kafka: KafkaConfig) -> dict[str, Any]:
    """The librdkafka properties for ``kafka``'s security settings (empty for PLAINTEXT)."""
    if kafka.security_protocol == "PLAINTEXT":
        return {}
    conf: dict[str, Any] = {"security.protocol": kafka.security_protocol.lower()}
    if kafka.uses_sasl:
        conf["sasl.mechanism"] = kafka.sasl_mechanism
        conf["sasl.username"] = kafka.sasl_username
        conf["sasl.password"] = sasl_password(kafka)
    if kafka.uses_tls:
        if ca := _readable("ssl_ca_location", kafka.ssl_ca_location):
            conf["ssl.ca.location"] = ca
        if cert := _readable("ssl_certificate_location", kafka.ssl_certificate_location):
            conf["ssl.certificate.location"] = cert
            conf["ssl.key.location"] = _readable("ssl_key_location", kafka.ssl_key_location)
            if (key_password := _ssl_key_password(kafka)) is not None:
                conf["ssl.key.password"] = key_password
    return conf


def ssl_context(kafka: KafkaConfig) -> ssl.SSLContext:
    """A TLS context with the same CA and client certificate as the librdkafka clients (for aiokafka)."""
    context = ssl.create_default_context(cafile=_readable("ssl_ca_location", kafka.ssl_ca_location))
    if kafka.ssl_certificate_location:
        context.load_cert_chain(
            _readable("ssl_certificate_location", kafka.ssl_certificate_location),
            _readable("ssl_key_location", kafka.ssl_key_location),
            _ssl_key_password(kafka),
        )
    return context


def faust_credentials(kafka: KafkaConfig) -> Any:
    """``broker_credentials`` for ``faust.App`` (None for PLAINTEXT)."""
    import faust

    if kafka.security_protocol == "PLAINTEXT":
        return None
    context = ssl_context(kafka) if kafka.uses_tls else None
    if not kafka.uses_sasl:
        return faust.SSLCredentials(context)
    # SASL_SSL or SASL_PLAINTEXT: faust takes which from whether there is an ssl_context
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=sasl_password(kafka),
        ssl_context=context,
        mechanism=kafka.sasl_mechanism,
    )


class KafkaRefused(KafkaSecurityError):
    """The broker answered but refused this client: bad credentials, a TLS failure, or a protocol
    that does not match the listener. Retrying does not help, so the caller stops at once."""


# librdkafka's words for the failures that are about security, not about a broker being away
_TLS_FAILURE = "SSL handshake failed"
# a plaintext client on a TLS/SASL listener: the broker hangs up on the very first request
_PLAINTEXT_ON_SECURE = "in state APIVERSION_QUERY"
_PLAINTEXT_ON_SECURE_REPEATS = 3


class RefusalWatch:
    """``error_cb`` and ``logger`` for a client, remembering whether the broker refused it (and why)
    so a caller can tell "refused" from "not there yet". Log lines go on to the ``tailsift.kafka``
    logger as usual."""

    def __init__(self, kafka: KafkaConfig) -> None:
        self.kafka = kafka
        self._reason: str | None = None
        self._hangups = 0
        self._log = logging.getLogger("tailsift.kafka")

    def settings(self) -> dict[str, Any]:
        return {"error_cb": self._on_error, "logger": self}

    # confluent-kafka calls logger.log(level, fmt, *args) from its own threads
    def log(self, level: int, msg: str, *args: Any) -> None:
        self._note(str(args[-1]) if args else msg)  # the message without the facility and client name
        self._log.log(level, msg, *args)

    def _on_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._AUTHENTICATION:
            self._reason = self._reason or f"authentication failed: {err.str()}"
        self._note(err.str())

    def _note(self, text: str) -> None:
        if self._reason:
            return
        if "SASL authentication error" in text or "Authentication failed" in text:
            self._reason = f"authentication failed: {text}"
        elif _TLS_FAILURE in text:
            self._reason = f"TLS handshake failed: {text}"
        elif _PLAINTEXT_ON_SECURE in text and "closed by peer" in text:
            self._hangups += 1
            if self._hangups >= _PLAINTEXT_ON_SECURE_REPEATS:
                self._reason = (
                    f"the broker closed the connection at the first request, as a TLS or SASL listener does to "
                    f"a {self.kafka.security_protocol} client ({text})"
                )

    def refusal(self) -> str | None:
        """Why the broker refused the client, with the keys to check; None if it did not."""
        if self._reason is None:
            return None
        k = self.kafka
        if self._reason.startswith("authentication"):
            hint = (
                f"check kafka.sasl_username ({k.sasl_username}), kafka.sasl_mechanism ({k.sasl_mechanism}) "
                f"and the password in {k.sasl_password_file or '$' + k.sasl_password_env}"
            )
        elif self._reason.startswith("TLS"):
            hint = (
                "check kafka.security_protocol and kafka.ssl_ca_location (the CA that signed the broker's certificate)"
            )
        else:
            hint = f"check kafka.security_protocol ({k.security_protocol}) against the listener's"
        return f"Kafka at {k.bootstrap_servers} refused the connection — {self._reason}; {hint}"
