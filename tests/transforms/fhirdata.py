"""Test helpers: shared FHIR bundles as the gateway would publish them (relative references), event envelopes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson


def bundle_resources(path: Path) -> list[dict[str, Any]]:
    """The resources of a Bundle with `urn:uuid:` references rewritten to relative `Type/<id>` ones."""
    bundle = json.loads(path.read_text())
    entries = [e for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
    urls = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource'].get('id')}" for e in entries
            if e.get("fullUrl")}  # fmt: skip
    text = orjson.dumps([e["resource"] for e in entries]).decode()
    for url, rel in urls.items():
        text = text.replace(f'"{url}"', f'"{rel}"')
    return json.loads(text)


def person_key(resource: dict[str, Any]) -> str | None:
    if resource["resourceType"] == "Patient":
        return resource["id"]
    for field in ("subject", "patient"):
        ref = (resource.get(field) or {}).get("reference", "")
        if ref.startswith("Patient/"):
            return ref.split("/", 1)[1]
    return None


def envelope(resource: dict[str, Any], offset: int = 0, *, op: str = "upsert", topic: str = "t.fhir",
             partition: int = 0) -> dict[str, Any]:  # fmt: skip
    """What the stream runner hands to Beam for one consumed event."""
    return {"topic": topic, "partition": partition, "offset": offset, "key": person_key(resource),
            "headers": {"event_type": f"fhir.{resource['resourceType']}.{op}", "event_id": f"ev-{topic}-{offset}",
                        "content_hash": str(hash(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)))},
            "value": resource}  # fmt: skip


def synthea_envelopes(shared_data: Path, n_bundles: int | None = None) -> list[dict[str, Any]]:
    root = shared_data / "fhir" / "synthea_r4_bundles"
    files = sorted(root.glob("*.json"))
    files = [f for f in files if "Information" in f.name] + [f for f in files if "Information" not in f.name]
    if n_bundles is not None:
        files = files[: 2 + n_bundles]
    envs: list[dict[str, Any]] = []
    for f in files:
        for r in bundle_resources(f):
            envs.append(envelope(r, len(envs)))
    return envs
