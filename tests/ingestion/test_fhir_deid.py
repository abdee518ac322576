"""Unit tests of FHIR de-identification (no broker): dates, references, free text, extensions, options."""

from __future__ import annotations

import pytest

from ingestion.fhir_deid import DeidContext, DeidError, FhirDeidOptions, RefIndex, deidentify_resource, shift_date_text
from ingestion.pseudonym import Pseudonymizer

P = Pseudonymizer(b"k" * 32)


def deid(resource, *, shift=10, refs=None, options=FhirDeidOptions()):
    ctx = DeidContext(P, refs or RefIndex(), options, shift)
    return deidentify_resource(resource, resource.get("id", "x"), ctx), ctx


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("2020-02-28", 2, "2020-03-01"),
        ("2020-02-28T23:10:00+05:00", 2, "2020-03-01T23:10:00+05:00"),
        ("2021-12-31T10:00:00.123Z", 1, "2022-01-01T10:00:00.123Z"),
        ("2020-01", 20, "2020-02"),  # month precision kept: mid-month + 20 days
        ("2020-01", -10, "2020-01"),
        ("1999", 200, "2000"),  # year precision kept: 2 July + 200 days
        ("1999", -100, "1999"),
    ],
)
def test_shift_keeps_precision_time_and_zone(value: str, days: int, expected: str) -> None:
    assert shift_date_text(value, days) == expected


def test_shift_out_of_range_is_an_error_not_a_crash() -> None:
    with pytest.raises(DeidError):
        shift_date_text("9999-12-31", 5)


def test_patient_loses_direct_identifiers_but_keeps_us_core_attributes() -> None:
    patient = {
        "resourceType": "Patient", "id": "pat1",
        "text": {"status": "generated", "div": "<div>Jane Roe</div>"},
        "name": [{"family": "Roe", "given": ["Jane"]}],
        "telecom": [{"system": "phone", "value": "555-1234"}],
        "address": [{"line": ["1 Main St"], "city": "Springfield", "state": "MA", "postalCode": "01103"}],
        "photo": [{"contentType": "image/png", "data": "AAAA"}],
        "contact": [{"name": {"family": "Roe"}}],
        "identifier": [{"system": "urn:mrn", "value": "MRN-77"}],
        "birthDate": "1980-05-01",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                      "valueDateTime": "1980-05-01T10:00:00Z"}]},
        "extension": [
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
             "extension": [{"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238",
                                                                   "code": "2106-3"}},
                           {"url": "text", "valueString": "White"}]},
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": "F"},
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": "Smith"},
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {"city": "Boston"}},
        ],
    }  # fmt: skip
    out, _ = deid(patient)
    text = str(out)
    for phi in ("Jane", "Roe", "555-1234", "Main St", "Springfield", "01103", "MRN-77", "Smith", "Boston", "AAAA"):
        assert phi not in text
    assert out["id"] == P.person("pat1")
    assert out["birthDate"] == "1980-05-11"
    assert out["_birthDate"]["extension"][0]["valueDateTime"] == "1980-05-11T10:00:00Z"
    assert out["identifier"] == [{"system": "urn:mrn", "value": P.identifier("urn:mrn", "MRN-77")}]
    urls = [e["url"] for e in out["extension"]]
    assert urls == ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                    "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"]  # fmt: skip
    assert out["extension"][0]["extension"] == [
        {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3"}}
    ]
    assert "text" not in out and "address" not in out and "photo" not in out and "contact" not in out


def test_zip3_and_state_kept_only_when_configured() -> None:
    address = {"city": "X-town", "state": "MA", "postalCode": "02139-1234", "country": "US"}
    patient = {"resourceType": "Patient", "id": "a", "address": [address]}
    out, _ = deid(patient, options=FhirDeidOptions(keep_zip3=True, keep_state=True))
    assert out["address"] == [{"state": "MA", "postalCode": "021", "country": "US"}]


def test_every_reference_form_is_rewritten_to_type_and_pseudonym() -> None:
    refs = RefIndex({"urn:uuid:abc": ("Patient", "pat1"), "http://ehr/fhir/Encounter/e9": ("Encounter", "e9")})
    obs = {
        "resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "urn:uuid:abc", "display": "Jane Roe"},
        "encounter": {"reference": "http://ehr/fhir/Encounter/e9"},
        "performer": [{"reference": "Practitioner/dr1"}, {"reference": "https://other/fhir/Organization/o7/_history/3"},
                      {"reference": "#contained1"}, {"reference": "Patient?identifier=123"}],
        "note": [{"text": "patient Jane called"}],
        "effectiveDateTime": "2020-01-01T00:00:00Z",
        "valueString": "free text",
    }  # fmt: skip
    out, ctx = deid(obs, refs=refs)
    assert out["subject"] == {"reference": f"Patient/{P.person('pat1')}"}
    assert out["encounter"] == {"reference": f"Encounter/{P.resource_id('Encounter', 'e9')}"}
    assert out["performer"][0] == {"reference": f"Practitioner/{P.resource_id('Practitioner', 'dr1')}"}
    assert out["performer"][1] == {"reference": f"Organization/{P.resource_id('Organization', 'o7')}"}
    assert out["performer"][2] == {"reference": "#contained1"}
    assert len(out["performer"]) == 3 and ctx.unresolved == 1  # the conditional reference is dropped, and counted
    assert "note" not in out and "valueString" not in out
    assert out["code"] == {"text": "x"}  # CodeableConcept.text is terminology, kept (Narrative text is dropped)
    assert out["effectiveDateTime"] == "2020-01-11T00:00:00Z"
    assert out["id"] == P.resource_id("Observation", "o1")


def test_contained_resources_are_deidentified_too() -> None:
    obs = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
           "contained": [{"resourceType": "Patient", "id": "c1", "name": [{"family": "Hidden"}],
                          "birthDate": "2001-01-01"}],
           "subject": {"reference": "#c1"}}  # fmt: skip
    out, _ = deid(obs)
    assert out["contained"] == [{"resourceType": "Patient", "id": "c1", "birthDate": "2001-01-11"}]


def test_date_shift_can_be_turned_off() -> None:
    out, _ = deid({"resourceType": "Patient", "id": "a", "birthDate": "1970-01-01"}, shift=None)
    assert out["birthDate"] == "1970-01-01"


def test_staff_resources_keep_codes_but_lose_identity() -> None:
    pr = {"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "House"}], "birthDate": "1960-01-01",
          "telecom": [{"system": "email", "value": "h@x.org"}], "identifier": [{"system": "npi", "value": "999"}],
          "qualification": [{"code": {"coding": [{"system": "s", "code": "MD"}]}}]}  # fmt: skip
    out, _ = deid(pr, shift=None)
    assert out == {"resourceType": "Practitioner", "id": P.resource_id("Practitioner", "dr1"),
                   "identifier": [{"system": "npi", "value": P.identifier("npi", "999")}],
                   "qualification": [{"code": {"coding": [{"system": "s", "code": "MD"}]}}]}  # fmt: skip


def test_imaging_study_dicom_uids_use_the_dicom_mapping() -> None:
    """Original DICOM UIDs must not pass the gateway, and the FHIR study must still link to its de-identified DICOM
    (whose UIDs `Pseudonymizer.uid` remaps): study identifier, series and instance UIDs use that same mapping."""
    study, series, instance = "1.2.840.113619.2.55.3.1", "1.2.840.113619.2.55.3.1.2", "1.2.840.113619.2.55.3.1.2.3"
    sop_class = "urn:oid:1.2.840.10008.5.1.4.1.1.2"
    resource = {
        "resourceType": "ImagingStudy", "id": "is1", "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study}"}, {"value": "ACC123456"}],
        "subject": {"reference": "Patient/p"},
        "series": [{"uid": series, "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"},
                    "instance": [{"uid": instance, "sopClass": {"system": "urn:ietf:rfc:3986", "code": sop_class}}]}],
    }  # fmt: skip
    out, _ = deid(resource, refs=RefIndex({"Patient/p": ("Patient", "p")}))
    text = str(out)
    assert study not in text and series not in text and instance not in text and "ACC123456" not in text
    assert out["identifier"][0]["value"] == f"urn:oid:{P.uid(study)}"
    assert out["series"][0]["uid"] == P.uid(series)
    assert out["series"][0]["instance"][0]["uid"] == P.uid(instance)
    assert out["series"][0]["instance"][0]["sopClass"]["code"] == sop_class  # a class, not an identifier: kept
