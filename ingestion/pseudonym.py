"""Keyed pseudonyms (HMAC-SHA256 with the deployment's pseudonymization key), shared by FHIR and DICOM.

Everything downstream of the gateway sees only these: the same input always maps to the same pseudonym within a
deployment, and nobody without the key can reverse or even test a guess.
"""

from __future__ import annotations

import hashlib
import hmac

from careloop.settings import Settings


class Pseudonymizer:
    """Deterministic keyed tokens for persons, resource ids, identifiers, DICOM UIDs and date offsets."""

    def __init__(self, key: bytes, *, max_shift_days: int = 365) -> None:
        if len(key) < 16:
            raise ValueError("pseudonymization key must be at least 16 bytes")
        self._key = key
        self.max_shift_days = max_shift_days

    @classmethod
    def from_settings(cls, settings: Settings) -> Pseudonymizer:
        from careloop.secrets import load_key

        return cls(load_key(settings, "pseudonym"))

    def digest(self, namespace: str, value: str) -> bytes:
        return hmac.new(self._key, f"{namespace}\x1f{value}".encode(), hashlib.sha256).digest()

    def token(self, namespace: str, value: str, length: int = 24) -> str:
        return self.digest(namespace, value).hex()[:length]

    def person(self, patient_key: str) -> str:
        """The pseudonymous person id: Kafka key, FHIR Patient.id downstream, OMOP person_source_value."""
        return "p" + self.token("person", patient_key.strip())

    def resource_id(self, resource_type: str, logical_id: str) -> str:
        """Pseudonymous FHIR logical id (valid FHIR id: [A-Za-z0-9-.]{1,64})."""
        return self.token(f"resource:{resource_type}", logical_id)

    def identifier(self, system: str | None, value: str) -> str:
        return self.token(f"identifier:{system or ''}", value.strip())

    def uid(self, uid: str) -> str:
        """A DICOM UID under the UUID-derived root 2.25 (PS3.5 B.2), stable per input UID, at most 64 chars."""
        return "2.25." + str(int.from_bytes(self.digest("dicom-uid", uid.strip())[:16], "big"))

    def date_shift_days(self, person: str) -> int:
        """One per-person offset in [-max, -1] ∪ [1, max] days, shared by all FHIR and DICOM dates of that person."""
        n = int.from_bytes(self.digest("date-shift", person)[:8], "big")
        magnitude = 1 + n % self.max_shift_days
        return magnitude if (n >> 32) & 1 else -magnitude
