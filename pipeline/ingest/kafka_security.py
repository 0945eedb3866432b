"""Kafka client settings for a real cluster: TLS, SASL, timeouts, the idempotent producer.

One place turns the `BILLING_KAFKA_*` settings into the keyword arguments of each client the
product uses, so that managed Kafka services (TLS and SASL/SCRAM or PLAIN) work for every
command: kafka-python's producer and admin client (`billing publish`, `wait`, the topics step),
and Faust's broker credentials (the worker's aiokafka consumer and producer).

The embedded broker (`billing up`) uses none of it: PLAINTEXT on loopback, short consumer
timeouts (Tansu holds a JoinGroup for half the session timeout), no idempotence (Tansu does not
answer InitProducerId). deploy/ sets the production values.
"""

from __future__ import annotations

import ssl
from typing import Any

from pipeline.settings import Settings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSecurityError(ValueError):
    """A security setting that cannot work; a ValueError, so the CLI exits 2 with the reason."""


def _checked(settings: Settings) -> tuple[str, str | None]:
    protocol = (settings.kafka_security_protocol or "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise KafkaSecurityError(f"BILLING_KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(PROTOCOLS)}")
    mechanism = settings.kafka_sasl_mechanism.upper() if settings.kafka_sasl_mechanism else None
    if protocol.startswith("SASL"):
        if mechanism not in MECHANISMS:
            raise KafkaSecurityError(f"BILLING_KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)} with {protocol}")
        if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
            raise KafkaSecurityError(f"{protocol} needs BILLING_KAFKA_SASL_USERNAME and BILLING_KAFKA_SASL_PASSWORD")
    elif mechanism:
        raise KafkaSecurityError(f"BILLING_KAFKA_SASL_MECHANISM={mechanism} needs a SASL_* BILLING_KAFKA_SECURITY_PROTOCOL")
    if settings.kafka_ssl_cafile and "SSL" not in protocol:
        raise KafkaSecurityError("BILLING_KAFKA_SSL_CAFILE needs BILLING_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL")
    return protocol, mechanism


def kafka_python_kwargs(settings: Settings) -> dict[str, Any]:
    """For kafka-python's KafkaProducer / KafkaAdminClient / KafkaConsumer."""
    protocol, mechanism = _checked(settings)
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if "SSL" in protocol and settings.kafka_ssl_cafile:
        kwargs["ssl_cafile"] = settings.kafka_ssl_cafile
    if mechanism:
        kwargs.update(
            sasl_mechanism=mechanism, sasl_plain_username=settings.kafka_sasl_username, sasl_plain_password=settings.kafka_sasl_password
        )
    return kwargs


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the broker's certificate and host name, against the CA file when one is given."""
    return ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)


def faust_credentials(settings: Settings) -> Any:
    """Faust's `broker_credentials` (None for PLAINTEXT): its aiokafka consumer and producer use it."""
    import faust

    protocol, mechanism = _checked(settings)
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings) if "SSL" in protocol else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username, password=settings.kafka_sasl_password, ssl_context=context, mechanism=mechanism
    )


def faust_settings(settings: Settings) -> dict[str, Any]:
    """Faust App keyword arguments for the broker connection (credentials and timeouts)."""
    return {
        "broker_credentials": faust_credentials(settings),
        "broker_session_timeout": settings.kafka_session_timeout_s,
        "broker_heartbeat_interval": settings.kafka_heartbeat_s,
        "broker_rebalance_timeout": max(settings.kafka_session_timeout_s, settings.kafka_rebalance_timeout_s),
        # a JoinGroup may take the whole rebalance timeout: the consumer's requests must outlast it
        "broker_request_timeout": max(
            settings.kafka_request_timeout_s, settings.kafka_rebalance_timeout_s + 5, settings.kafka_session_timeout_s + 5
        ),
        "producer_request_timeout": settings.kafka_request_timeout_s,
        "producer_acks": -1,  # all in-sync replicas (min.insync.replicas on the topic)
        # BILLING_CREATE_TOPICS=0: Faust must not create a topic either (it would, with its defaults)
        "topic_allow_declare": settings.create_topics,
    }


def make_idempotent(app: Any) -> None:
    """Faust passes `enable_idempotence` to aiokafka only inside transactions (exactly_once, which
    does not cover ClickHouse and is not used): set it on this app's producer, so that a retried
    send never writes a status change or violation twice or out of order."""
    producer = app.producer
    original = producer._settings_extra

    def settings_extra() -> dict[str, Any]:
        return {**original(), "enable_idempotence": True, "acks": "all"}

    producer._settings_extra = settings_extra
