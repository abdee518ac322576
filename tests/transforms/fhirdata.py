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
        return resource.get("id")
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


def fhir_event(resource: dict[str, Any], *, op: str = "upsert") -> Any:
    """A careloop `Event` as the gateway publishes it on the `fhir` topic."""
    import uuid

    from careloop.events import Event, EventHeaders, content_hash, utcnow

    value = resource if op == "upsert" else {k: resource[k] for k in ("resourceType", "id", "meta") if k in resource}
    return Event(key=person_key(resource) or "org", value=value, headers=EventHeaders(
        event_id=uuid.uuid4(), event_type=f"fhir.{resource['resourceType']}.{op}", source_system="test",
        site="test-site", occurred_at=utcnow(), content_hash=content_hash(value)))  # fmt: skip


def expected_rows(resources: list[dict[str, Any]]) -> dict[str, int]:
    """Row counts the FHIR input implies, counted independently of the mapping code (unique ids only)."""
    seen: dict[str, dict[str, Any]] = {}
    for r in resources:
        seen[f"{r['resourceType']}/{r['id']}"] = r
    exp = {"person": 0, "death": 0, "visit_occurrence": 0, "drug_exposure": 0, "clinical_events": 0,
           "image_occurrence": 0, "provider": 0, "care_site": 0}  # fmt: skip
    for r in seen.values():
        t = r["resourceType"]
        if t == "Patient":
            exp["person"] += 1
            exp["death"] += "deceasedDateTime" in r
        elif t == "Encounter":
            exp["visit_occurrence"] += 1
        elif t in ("MedicationRequest", "Immunization"):
            exp["drug_exposure"] += 1
        elif t == "Observation":
            comps = len(r.get("component") or [])
            exp["clinical_events"] += comps + (1 if any(k.startswith("value") for k in r) or not comps else 0)
        elif t in ("Condition", "Procedure", "AllergyIntolerance"):
            exp["clinical_events"] += 1
        elif t == "ImagingStudy":
            exp["clinical_events"] += 1  # its procedure_occurrence
            exp["image_occurrence"] += len(r.get("series") or [])
        elif t == "Practitioner":
            exp["provider"] += 1
        elif t == "Organization":
            exp["care_site"] += 1
    return exp


def actual_rows(con: Any) -> dict[str, int]:
    def n(table: str) -> int:
        return con.execute(f"SELECT count(*) FROM omop.{table}").fetchone()[0]

    return {
        "person": n("person"),
        "death": n("death"),
        "visit_occurrence": n("visit_occurrence"),
        "drug_exposure": n("drug_exposure"),
        "clinical_events": sum(
            n(t) for t in ("condition_occurrence", "procedure_occurrence", "measurement", "observation")
        ),
        "image_occurrence": n("image_occurrence"),
        "provider": n("provider"),
        "care_site": n("care_site"),
    }
