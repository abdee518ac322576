"""Topic registry: the logical topics of DESIGN.md and their creation on the configured cluster."""

from __future__ import annotations

from dataclasses import dataclass

from careloop.settings import TOPIC_NAMES, Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    purpose: str


PURPOSES = {
    "fhir": "de-identified FHIR resources, one resource a message",
    "dicom": "de-identified DICOM metadata (DICOM JSON model) plus object-store URI and SHA-256, never pixels",
    "outcomes": "labels and feedback linked to predictions",
    "predictions": "served predictions",
    "alerts": "monitoring alerts and triggers",
    "deadletter": "rejected events: stage, error class, human-readable reason, vault reference",
}


def registry(settings: Settings) -> list[TopicSpec]:
    return [TopicSpec(settings.topic(n), settings.topic_partitions, PURPOSES[n]) for n in TOPIC_NAMES]


def ensure_topics(settings: Settings, bootstrap: str | None = None) -> list[str]:
    """Create any missing topic of the registry; returns the names that were created."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from careloop.errors import BrokerError
    from careloop.kafka import client_config, resolve_bootstrap

    boot = bootstrap or resolve_bootstrap(settings)
    admin = AdminClient(client_config(settings, boot))
    try:
        existing = set(admin.list_topics(timeout=10).topics)
    except KafkaException as err:
        raise BrokerError(f"cannot connect to Kafka at {boot}: {err}") from err
    missing = [t for t in registry(settings) if t.name not in existing]
    created = []
    futures = (
        admin.create_topics([NewTopic(s.name, s.partitions, 1) for s in missing], operation_timeout=30)
        if missing
        else {}
    )
    for name, fut in futures.items():
        try:
            fut.result(timeout=30)
            created.append(name)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"creating topic {name} failed: {err}") from err
    return created
