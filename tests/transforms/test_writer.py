"""Upserts, deletes, late versions and re-delivery against the real lake (no broker: results go straight to the
writer, exactly as the stream runner hands them)."""

from __future__ import annotations

import copy

import pytest

from careloop.duck import connect
from transforms.ids import omop_id
from transforms.lake_writer import LakeWriter
from transforms.pipeline import map_envelope
from transforms.vocab import Vocabulary

from .fhirdata import envelope

PATIENT = {"resourceType": "Patient", "id": "pA", "gender": "female", "birthDate": "1970-05-02",
           "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"}}  # fmt: skip
GLUCOSE = {"resourceType": "Observation", "id": "o1", "status": "final",
           "category": [{"coding": [{"code": "laboratory"}]}],
           "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
           "subject": {"reference": "Patient/pA"}, "effectiveDateTime": "2024-02-01T10:00:00Z",
           "valueQuantity": {"value": 5.5, "unit": "mmol/L", "code": "mmol/L", "system": "http://unitsofmeasure.org"},
           "meta": {"versionId": "1", "lastUpdated": "2024-02-01T10:00:00Z"}}  # fmt: skip


def version(resource: dict, v: int, **changes) -> dict:
    r = copy.deepcopy(resource)
    r["meta"] = {"versionId": str(v), "lastUpdated": f"2024-03-0{v}T00:00:00Z"}
    r.update(changes)
    return r


@pytest.fixture
def lake(omop_settings):
    con = connect(omop_settings)
    vocab = Vocabulary.from_lake(con)
    writer = LakeWriter(con)
    offset = [0]

    def commit(*resources, op="upsert"):
        envs = []
        for r in resources:
            offset[0] += 1
            envs.append(envelope(r, offset[0], op=op))
        return writer.commit([map_envelope(e, vocab) for e in envs])

    return con, commit


def one(con, sql):
    return con.execute(sql).fetchall()


def test_upsert_newer_replaces_and_late_older_never_overwrites(lake) -> None:
    con, commit = lake
    commit(PATIENT, GLUCOSE)
    assert one(con, "SELECT round(value_as_number, 1) FROM omop.measurement") == [(99.1,)]  # 5.5 mmol/L -> mg/dL
    commit(version(GLUCOSE, 3, valueQuantity={"value": 120, "unit": "mg/dL", "code": "mg/dL"}))
    assert one(con, "SELECT value_as_number FROM omop.measurement") == [(120.0,)]
    out = commit(version(GLUCOSE, 2, valueQuantity={"value": 80, "unit": "mg/dL", "code": "mg/dL"}))  # late older
    assert out.stale == 1 and out.rows_written == 0
    assert one(con, "SELECT value_as_number FROM omop.measurement") == [(120.0,)]
    assert one(con, "SELECT version_id FROM omop.fhir_source_versions WHERE resource_id = 'o1'") == [("3",)]


def test_redelivery_changes_nothing(lake) -> None:
    con, commit = lake
    commit(PATIENT, GLUCOSE)
    snap = one(con, "SELECT count(*) FROM omop.measurement")
    out = commit(PATIENT, GLUCOSE)
    assert out.applied == 0 and out.stale == 2 and out.rows_written == 0
    assert one(con, "SELECT count(*) FROM omop.measurement") == snap
    assert one(con, "SELECT count(*) FROM omop.fhir_row_map") == [(2,)]


def test_delete_and_entered_in_error_remove_rows(lake) -> None:
    con, commit = lake
    bp = {"resourceType": "Observation", "id": "bp", "status": "final",
          "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
          "subject": {"reference": "Patient/pA"}, "effectiveDateTime": "2024-02-02",
          "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                         "valueQuantity": {"value": 120, "code": "mm[Hg]"}},
                        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                         "valueQuantity": {"value": 80, "code": "mm[Hg]"}}]}  # fmt: skip
    commit(PATIENT, GLUCOSE, bp)
    assert one(con, "SELECT count(*) FROM omop.measurement") == [(3,)]
    commit(version(GLUCOSE, 2, status="entered-in-error"))
    assert one(con, "SELECT count(*) FROM omop.measurement") == [(2,)]
    out = commit({"resourceType": "Observation", "id": "bp", "meta": {}}, op="delete")
    assert out.deleted == 1 and out.rows_deleted == 2
    assert one(con, "SELECT count(*) FROM omop.measurement") == [(0,)]
    # a late older version of the deleted-by-error resource does not resurrect it
    commit(GLUCOSE)
    assert one(con, "SELECT count(*) FROM omop.measurement") == [(0,)]
    assert one(con, "SELECT deleted FROM omop.fhir_source_versions WHERE resource_id='o1'") == [(True,)]


def test_domain_change_moves_row_between_tables(lake) -> None:
    """A new version whose code routes to another domain removes the row from the old table."""
    con, commit = lake
    cond = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/pA"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
            "onsetDateTime": "2020-01-01", "meta": {"versionId": "1"}}  # fmt: skip
    commit(PATIENT, cond)
    assert one(con, "SELECT count(*) FROM omop.condition_occurrence") == [(1,)]
    # 160903007 "Full-time employment" is an Observation-domain SNOMED code in the vocabulary
    dom = one(con, "SELECT domain_id FROM omop.concept WHERE concept_code='160903007' AND vocabulary_id='SNOMED'")
    commit(version(cond, 2, code={"coding": [{"system": "http://snomed.info/sct", "code": "160903007"}]}))
    expected = "observation" if dom and dom[0][0] == "Observation" else "condition_occurrence"
    assert one(con, f"SELECT count(*) FROM omop.{expected}") == [(1,)]
    if expected == "observation":
        assert one(con, "SELECT count(*) FROM omop.condition_occurrence") == [(0,)]


def test_observation_period_and_dq_before_birth(lake) -> None:
    con, commit = lake
    early = version(GLUCOSE, 1, id="o0", effectiveDateTime="1960-01-01")
    commit(PATIENT, GLUCOSE, early)
    pid = omop_id("Patient", "pA")
    assert one(
        con,
        f"SELECT observation_period_start_date::VARCHAR, observation_period_end_date::VARCHAR "
        f"FROM omop.observation_period WHERE person_id = {pid}",
    ) == [("1960-01-01", "2024-02-01")]
    flags = one(con, "SELECT check_name FROM omop.dq_flags WHERE check_name = 'event_before_birth'")
    assert len(flags) == 1
    res = one(con, "SELECT category, num_violated FROM omop.dq_results WHERE check_name='event_before_birth'")
    assert res == [("plausibility", 1)]
    # deleting the early measurement shrinks the period again
    commit({"resourceType": "Observation", "id": "o0", "meta": {}}, op="delete")
    assert one(con, f"SELECT observation_period_start_date::VARCHAR FROM omop.observation_period "
                    f"WHERE person_id = {pid}") == [("2024-02-01",)]  # fmt: skip

    # an event inside the known period rewrites nothing; one after it widens the period in place
    def snapshot() -> int:
        return con.execute("SELECT id FROM lake.current_snapshot()").fetchone()[0]

    before = snapshot()
    commit(version(GLUCOSE, 1, id="o2", effectiveDateTime="2024-02-01T18:00:00Z"))
    assert (
        snapshot() > before
        and not con.execute(
            f"SELECT * FROM ducklake_table_changes('lake', 'omop', 'observation_period', {before + 1}, {snapshot()})"
        ).fetchall()
    )
    commit(version(GLUCOSE, 1, id="o3", effectiveDateTime="2024-06-01T10:00:00Z"))
    assert one(con, f"SELECT observation_period_start_date::VARCHAR, observation_period_end_date::VARCHAR, count(*) "
                    f"OVER () FROM omop.observation_period WHERE person_id = {pid}"
               ) == [("2024-02-01", "2024-06-01", 1)]  # fmt: skip


def test_deadletter_not_loaded(lake) -> None:
    con, commit = lake
    no_date = {"resourceType": "Observation", "id": "nd", "status": "final", "subject": {"reference": "Patient/pA"},
               "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}}  # fmt: skip
    out = commit(no_date)
    assert len(out.deadletters) == 1 and out.deadletters[0]["check"] == "no_date"
    assert one(con, "SELECT count(*) FROM omop.measurement") == [(0,)]
    assert one(con, "SELECT severity, num_violated FROM omop.dq_results") == [("deadletter", 1)]


def test_dicom_events_and_imaging_study_share_one_image_occurrence(lake, omop_settings) -> None:
    con, commit = lake
    vocab = Vocabulary.from_lake(con)
    writer = LakeWriter(con)
    study = {"resourceType": "ImagingStudy", "id": "is1", "status": "available", "subject": {"reference": "Patient/pA"},
             "started": "2024-01-05T10:00:00Z", "identifier": [{"value": "urn:oid:2.25.100"}],
             "series": [{"uid": "2.25.101", "modality": {"code": "CT"},
                         "bodySite": {"system": "http://snomed.info/sct", "code": "51185008"}}]}  # fmt: skip
    commit(PATIENT, study)
    dicom = [{"topic": "t.dicom", "partition": 0, "offset": i, "key": "pA",
              "headers": {"event_type": "dicom.instance", "event_id": f"d{i}"},
              "value": {"person": "pA", "study_uid": "2.25.100", "series_uid": "2.25.101",
                        "sop_instance_uid": f"2.25.10{i + 2}", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "modality": "CT", "occurred_at": "2024-01-05T10:01:00Z",
                        "acquisition": {"manufacturer": "ACME", "model": "X1", "kvp": 120},
                        "uri": f"file:///objects/{i}.dcm", "sha256": "00", "metadata": {},
                        "deid_method": "PS3.15 E.1"}} for i in range(2)]  # fmt: skip
    out = writer.commit([map_envelope(e, vocab) for e in dicom])
    assert out.applied == 2
    rows = one(con, "SELECT person_id, procedure_occurrence_id, image_series_uid, modality_source_value, manufacturer "
                    "FROM omop.image_occurrence")  # fmt: skip
    assert rows == [(omop_id("Patient", "pA"), omop_id("DicomStudy", "2.25.100"), "2.25.101", "CT", "ACME")]
    assert one(con, "SELECT count(*) FROM omop.procedure_occurrence") == [(1,)]
    # re-delivery of the same instances changes nothing
    assert writer.commit([map_envelope(e, vocab) for e in dicom]).rows_written == 0
