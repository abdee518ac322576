"""Lineage: the provenance store (DuckLake schema `lineage`), its batched writer and SQL views."""

from __future__ import annotations

from lineage.store import ensure_schema, open_store
from lineage.writer import IngestRecord, LineageWriter, insert_edges_from

__all__ = ["IngestRecord", "LineageWriter", "ensure_schema", "insert_edges_from", "open_store"]
