"""Stable OMOP row ids derived from FHIR logical ids.

A row id is the first 63 bits of BLAKE2b over the parts (resource type, logical id, component index, ...), so
the same resource always lands on the same row (idempotent upserts), ids fit OMOP's BIGINT columns and stay
positive, and no id counter has to be coordinated between writers. Collisions need ~3e9 rows for a 50% chance
per table (birthday bound on 2^63), which the DQ check `duplicate_row_id` would surface.
"""

from __future__ import annotations

import hashlib

_MASK = (1 << 63) - 1


def omop_id(*parts: object) -> int:
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") & _MASK or 1


def person_id(person_key: str) -> int:
    """The OMOP person_id of a pseudonymous person (the Kafka key / Patient.id)."""
    return omop_id("Patient", person_key)
