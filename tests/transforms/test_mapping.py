"""FHIR -> OMOP mappings on the HL7 R4 examples (every value[x] kind, components, dataAbsentReason, cancelled and
entered-in-error, partial dates, contained resources) and on Synthea resources, with the Eunomia vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transforms.ids import omop_id, person_id
from transforms.mapping import MAPPED_TYPES
from transforms.pipeline import map_envelope
from transforms.units import normalize

from .fhirdata import bundle_resources, envelope

HL7 = "fhir/hl7_r4_examples"


def load(shared_data: Path, name: str) -> dict:
    return json.loads((shared_data / HL7 / name).read_text())


def mapped(resource: dict, vocab, **kw) -> dict:
    return map_envelope(envelope(resource, **kw), vocab)


def test_every_hl7_example_gives_exactly_one_accounted_result(shared_data, vocab) -> None:
    """Nothing crashes, nothing is silently lost: each resource is mapped, deleted/retracted, skipped with its
    type, or dead-lettered with a reason."""
    n = 0
    for f in sorted((shared_data / HL7).glob("*.json")):
        doc = json.loads(f.read_text())
        resources = [e.get("resource") for e in doc.get("entry", [])] if doc["resourceType"] == "Bundle" else [doc]
        for r in resources:
            if not isinstance(r, dict):
                continue
            res = mapped(r, vocab)
            n += 1
            assert res["status"] in {"mapped", "deleted", "retracted", "skipped", "deadletter"}
            if res["status"] == "mapped":
                assert res["rows"], f.name
                assert r["resourceType"] in MAPPED_TYPES
            elif res["status"] in ("skipped", "deadletter"):
                assert res["reason"], f.name
    assert n > 80


def test_blood_pressure_components_are_separate_measurements(shared_data, vocab) -> None:
    res = mapped(load(shared_data, "observation-example-bloodpressure.json"), vocab)
    rows = [r for r in res["rows"] if r["table"] == "measurement"]
    by_code = {r["row"]["measurement_source_value"]: r["row"] for r in rows}
    assert by_code["8480-6"]["value_as_number"] == 107 and by_code["8462-4"]["value_as_number"] == 60
    assert by_code["8480-6"]["measurement_concept_id"] == 3004249  # Systolic blood pressure (LOINC, standard)
    assert by_code["8480-6"]["unit_concept_id"] == 8876  # mm[Hg]
    assert by_code["8480-6"]["measurement_id"] == omop_id("Observation", "blood-pressure", 0)
    assert by_code["8462-4"]["measurement_id"] == omop_id("Observation", "blood-pressure", 1)


def test_data_absent_component_is_kept_and_flagged(shared_data, vocab) -> None:
    res = mapped(load(shared_data, "observation-example-bloodpressure-dar.json"), vocab)
    dia = next(r for r in res["rows"] if r["row"]["measurement_source_value"] == "8462-4")
    assert dia["row"].get("value_as_number") is None
    assert dia["row"]["value_source_value"] == "data-absent:not-performed"
    assert ["value_absent", "value absent (not-performed)"] in dia["flags"]


@pytest.mark.parametrize(
    ("name", "column", "expected"),
    [
        ("observation-example-eye-color.json", "value_as_string", "blue"),  # valueString
        ("observation-example-abdo-tender.json", "value_as_concept_id", 4188539),  # valueBoolean true -> Yes
        ("observation-example-date-lastmp.json", "value_as_string", "2016-12-30"),  # valueDateTime
        ("observation-example-sample-data.json", "value_source_value", "sampled-data"),  # valueSampledData
        ("observation-example-f206-staphylococcus.json", "value_source_value", "3092008"),  # valueCodeableConcept
    ],
)
def test_value_kinds(shared_data, vocab, name, column, expected) -> None:
    res = mapped(load(shared_data, name), vocab)
    assert res["status"] == "mapped"
    assert res["rows"][0]["row"][column] == expected


def test_glucose_mmol_converted_to_mg_dl(shared_data, vocab) -> None:
    res = mapped(load(shared_data, "observation-example-f001-glucose.json"), vocab)  # 6.3 mmol/l, LOINC 15074-8
    row = res["rows"][0]
    assert row["row"]["value_as_number"] == pytest.approx(6.3 * 18.016)
    assert row["row"]["unit_source_value"] == "mmol/L"
    assert any(f[0] == "unit_converted" for f in row["flags"])


def test_unit_table() -> None:
    assert normalize("2345-7", 5.0, "mmol/L").value == pytest.approx(90.08)
    assert normalize("8310-5", 98.6, "[degF]").value == pytest.approx(37.0)
    assert normalize("29463-7", 10, "[lb_av]").value == pytest.approx(4.5359237)
    assert normalize("2345-7", 5.0, "mmol/L").unit == "mg/dL"
    assert normalize("2345-7", 5.0, "kg").flag == "unit_incompatible"
    assert normalize("2345-7", 5.0, None).flag == "unit_missing"
    assert normalize("8480-6", 120, "mm[Hg]").flag is None


def test_cancelled_and_entered_in_error(shared_data, vocab) -> None:
    assert mapped(load(shared_data, "observation-example-bloodpressure-cancel.json"), vocab)["status"] == "retracted"
    assert mapped(load(shared_data, "immunization-example-refused.json"), vocab)["status"] == "retracted"
    eie = dict(load(shared_data, "observation-example-bmi.json"), status="entered-in-error")
    assert mapped(eie, vocab)["status"] == "deleted"


def test_partial_dates_and_contained_medication(shared_data, vocab) -> None:
    allergy = mapped(load(shared_data, "allergyintolerance-example.json"), vocab)  # onsetDateTime "2004"
    assert allergy["rows"][0]["row"]["observation_date"] == "2004-01-01"
    assert any(f[0] == "partial_date" for f in allergy["rows"][0]["flags"])
    med = mapped(load(shared_data, "medicationrequest0301.json"), vocab)  # medicationReference "#med0310"
    assert med["rows"][0]["row"]["drug_source_value"] is not None
    assert not med["rows"][0]["row"]["drug_source_value"].startswith("#")


def test_json_edge_cases_patient(shared_data, vocab) -> None:
    edge = load(shared_data, "json-edge-cases.json")  # no id, birthDate "1974-12", deceasedBoolean, contained
    assert mapped(edge, vocab)["status"] == "deadletter"  # no logical id: cannot be keyed, dead letter with reason
    res = mapped(dict(edge, id="p-edge"), vocab)  # as the gateway publishes it (pseudonymous id)
    assert res["status"] == "mapped"
    person = res["rows"][0]
    assert person["row"]["person_id"] == person_id("p-edge")
    assert (person["row"]["year_of_birth"], person["row"]["month_of_birth"], person["row"]["day_of_birth"]) == (
        1974, 12, None)  # fmt: skip
    assert person["row"]["birth_datetime"] is None
    assert any(f[0] == "death_without_date" for f in person["flags"])


def test_synthea_patient_race_ethnicity_death_and_domain_routing(shared_data, vocab) -> None:
    files = sorted((shared_data / "fhir" / "synthea_r4_bundles").glob("*_*.json"))
    resources = [r for f in files[:12] for r in bundle_resources(f)]
    results = [mapped(r, vocab) for r in resources]
    persons = [x["row"] for r in results for x in r["rows"] if x["table"] == "person"]
    assert {p["gender_concept_id"] for p in persons} <= {8507, 8532}
    assert all(p["year_of_birth"] and p["month_of_birth"] and p["day_of_birth"] for p in persons)
    assert {p["ethnicity_concept_id"] for p in persons} <= {38003563, 38003564}
    deaths = [x for r in results for x in r["rows"] if x["table"] == "death"]
    assert len(deaths) == sum("deceasedDateTime" in r for r in resources if r["resourceType"] == "Patient")
    visits = {x["row"]["visit_concept_id"] for r in results for x in r["rows"] if x["table"] == "visit_occurrence"}
    assert visits <= {9201, 9202, 9203}
    # routing follows the standard concept's domain: no Observation-domain concept lands in measurement
    for r in results:
        for x in r["rows"]:
            if x["table"] == "measurement" and x["row"]["measurement_concept_id"]:
                cid = x["row"]["measurement_concept_id"]
                dom = next(v[2] for v in vocab.codes.values() if v[1] == cid)
                assert dom == "Measurement"
    # Claims and EOBs are skipped with their type, never mapped
    skipped = {r["src"]["resource_type"] for r in results if r["status"] == "skipped"}
    assert {"Claim", "ExplanationOfBenefit"} <= skipped
