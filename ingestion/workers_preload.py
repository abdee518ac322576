"""Imported by the fork server of `ingestion.workers`: the common R4B model classes, once for every worker."""

from __future__ import annotations

from ingestion.workers import preload

preload()
