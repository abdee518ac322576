"""Transforms: FHIR/DICOM events -> OMOP CDM v5.4 rows in the lake (Beam PTransforms, vocabulary, units, data
quality, the streaming runner and the bounded backfill)."""

from __future__ import annotations

from transforms.omop_schema import VocabularyError, cdm_tables, ensure_omop_schema, load_vocabulary

__all__ = ["VocabularyError", "cdm_tables", "ensure_omop_schema", "load_vocabulary"]
