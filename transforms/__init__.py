"""Transforms: FHIR/DICOM events -> OMOP CDM v5.4 rows in the lake (Beam PTransforms, vocabulary, units, data
quality, the streaming runner and the bounded backfill)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transforms.omop_schema import VocabularyError, cdm_tables, ensure_omop_schema, load_vocabulary

if TYPE_CHECKING:
    from transforms.lake_writer import BatchOutcome, LakeWriter
    from transforms.pipeline import FhirToOmop, MapChunks, run_batch
    from transforms.stream import BatchCommit, HookFailed, StreamRunner, StreamSummary
    from transforms.vocab import Vocabulary

_LAZY = {
    "BatchOutcome": "transforms.lake_writer",
    "LakeWriter": "transforms.lake_writer",
    "FhirToOmop": "transforms.pipeline",
    "MapChunks": "transforms.pipeline",
    "run_batch": "transforms.pipeline",
    "BatchCommit": "transforms.stream",
    "HookFailed": "transforms.stream",
    "StreamRunner": "transforms.stream",
    "StreamSummary": "transforms.stream",
    "Vocabulary": "transforms.vocab",
}


def __getattr__(name: str) -> object:
    """Beam is heavy to import: the PTransforms and the runner load on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = [
    "BatchCommit",
    "BatchOutcome",
    "FhirToOmop",
    "HookFailed",
    "LakeWriter",
    "MapChunks",
    "StreamRunner",
    "StreamSummary",
    "Vocabulary",
    "VocabularyError",
    "cdm_tables",
    "ensure_omop_schema",
    "load_vocabulary",
    "run_batch",
]
