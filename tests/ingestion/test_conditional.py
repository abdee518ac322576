"""Conditional references and deletes (`Type?identifier=system|value`) resolve into pseudonyms, never leak."""

from __future__ import annotations

from typing import Any

from careloop.settings import Settings
from ingestion import Ingestor

PATIENT = {"resourceType": "Patient", "id": "c-pat", "identifier": [{"system": "urn:mrn", "value": "MRN-C1"}]}
DOCTOR = {"resourceType": "Practitioner", "id": "c-doc", "identifier": [{"system": "urn:npi", "value": "NPI-77"}]}


def _obs(subject: str, performer: str | None = None) -> dict[str, Any]:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "hr"}, "subject": {"reference": subject},
           "effectiveDateTime": "2021-01-01"}  # fmt: skip
    if performer:
        obs["performer"] = [{"reference": performer}]
    return obs


def _bundle(*resources: dict[str, Any], deletes: tuple[str, ...] = ()) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [{"resource": r} for r in resources]
    entries += [{"request": {"method": "DELETE", "url": u}} for u in deletes]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def test_conditional_references_resolve_within_the_bundle_and_against_earlier_ingests(settings: Settings) -> None:
    with Ingestor(settings, source_system="cond", publish=False, workers=0) as ing:
        direct, in_bundle = ing.submit_bundle(_bundle(PATIENT, _obs("Patient?identifier=urn:mrn|MRN-C1")))
        ing.submit_bundle(_bundle(DOCTOR))
        later = ing.submit_bundle(
            _bundle(_obs("Patient?identifier=urn:mrn%7CMRN-C1", "Practitioner?identifier=NPI-77"))
        )
        any_system = ing.submit_resource(_obs("Patient?identifier=MRN-C1"))
        events = ing.drain()
    assert in_bundle.status == "accepted" and in_bundle.person == direct.resource_id
    assert later[0].status == "accepted" and later[0].person == direct.resource_id
    assert any_system.status == "accepted" and any_system.person == direct.resource_id
    doctor = next(e for e in events if e.value["resourceType"] == "Practitioner")
    obs = [e.value for e in events if e.value["resourceType"] == "Observation"]
    assert all(o["subject"] == {"reference": f"Patient/{direct.resource_id}"} for o in obs)
    assert obs[1]["performer"] == [{"reference": f"Practitioner/{doctor.value['id']}"}]
    assert not any("MRN-C1" in str(e.value) or "NPI-77" in str(e.value) for e in events)


def test_unresolvable_ambiguous_or_unsupported_conditionals_are_per_entry_errors(settings: Settings) -> None:
    twin = PATIENT | {"id": "c-twin"}
    with Ingestor(settings, source_system="cond2", publish=False, workers=0) as ing:
        outs = ing.submit_bundle(_bundle(
            PATIENT, twin, _obs("Patient?identifier=urn:mrn|MRN-C1"), _obs("Patient?identifier=urn:mrn|SECRET-9"),
            _obs("Patient?name=Doe"), _obs("Patient/c-pat", "Practitioner?identifier=urn:npi|NPI-SECRET"),
        ))  # fmt: skip
        dead = ing.drain_dead_letters()
    assert [o.status for o in outs] == ["accepted", "accepted"] + ["rejected"] * 4
    assert [o.error_class for o in outs[2:]] == [
        "AmbiguousConditionalReference",
        "UnresolvedConditionalReference",
        "UnsupportedConditionalReference",
        "UnresolvedConditionalReference",
    ]
    assert outs[2].http_status == 412
    texts = " ".join(f"{o.reason}" for o in outs) + " ".join(d.model_dump_json() for d in dead)
    assert "SECRET" not in texts and "MRN-C1" not in texts and "Doe" not in texts


def test_conditional_delete_resolves_to_the_pseudonymous_id(settings: Settings) -> None:
    with Ingestor(settings, source_system="cond3", publish=False, workers=0) as ing:
        patient = ing.submit_resource(PATIENT)
        ing.drain()
        deleted, unknown = ing.submit_bundle(_bundle(deletes=("Patient?identifier=urn:mrn|MRN-C1",
                                                              "Patient?identifier=urn:mrn|NOBODY")))  # fmt: skip
        events = ing.drain()
    assert deleted.status == "accepted" and deleted.resource_id == patient.resource_id
    assert events[0].headers.event_type == "fhir.Patient.delete" and events[0].value["id"] == patient.resource_id
    assert events[0].key == patient.person
    assert unknown.status == "rejected" and unknown.error_class == "UnresolvedConditionalReference"
