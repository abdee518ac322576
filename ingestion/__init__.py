"""Ingestion: the EHR-facing edge. Validate, de-identify and pseudonymize FHIR and DICOM, vault the originals,
publish de-identified events to Kafka, dead-letter the rest with a reason, record lineage.

Public API (other stages import only this):
- `Ingestor(settings, source_system=..., site=None, publish=True, workers=None)` with `submit_resource`,
  `submit_bundle`, `submit_bundles` (pipelined over worker processes), `submit_ndjson`, `submit_delete`,
  `submit_dicom`, `drain`, `warm_up`, `flush`, `close`; returns `Outcome`s.
- `RawVault` / `read_vault(settings, ref)` to read an original payload back (needs the vault key).
- `Pseudonymizer` (shared keyed pseudonyms), `FhirDeidOptions`, `ApiKeys`.
"""

from __future__ import annotations

from ingestion.core import Ingestor, Outcome
from ingestion.fhir_deid import FhirDeidOptions
from ingestion.pseudonym import Pseudonymizer
from ingestion.vault import RawVault, read_vault

__all__ = ["FhirDeidOptions", "Ingestor", "Outcome", "Pseudonymizer", "RawVault", "read_vault"]
