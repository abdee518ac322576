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
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from careloop.kafka import client_config, resolve_bootstrap

    admin = KafkaAdminClient(**client_config(settings, bootstrap or resolve_bootstrap(settings)))
    try:
        existing = set(admin.list_topics())
        missing = [t for t in registry(settings) if t.name not in existing]
        created = []
        for spec in missing:
            try:
                admin.create_topics([NewTopic(spec.name, spec.partitions, 1)])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()
