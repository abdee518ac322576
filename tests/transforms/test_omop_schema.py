"""The OMOP schema in the lake and the Athena vocabulary loader (real DuckLake, the Eunomia export)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from careloop.duck import connect
from transforms import VocabularyError, cdm_tables, ensure_omop_schema, load_vocabulary


def test_schema_has_cdm_tables_and_is_idempotent(lake_settings) -> None:
    con = connect(lake_settings)
    ensure_omop_schema(con)
    ensure_omop_schema(con)
    tables = set(cdm_tables(con))
    for t in ("person", "visit_occurrence", "condition_occurrence", "drug_exposure", "procedure_occurrence",
              "measurement", "observation", "death", "observation_period", "provider", "care_site",
              "image_occurrence", "concept", "concept_relationship", "vocabulary", "domain", "concept_ancestor",
              "fhir_source_versions", "stream_status", "dq_results"):  # fmt: skip
        assert t in tables, t
    cols = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name='omop' "
                            "AND table_name='measurement'").fetchall())  # fmt: skip
    assert cols["measurement_id"] == "BIGINT" and cols["value_as_number"] == "DOUBLE"
    assert cols["measurement_concept_id"] == "INTEGER" and cols["measurement_date"] == "DATE"
    assert con.execute("SELECT count(*) FROM omop.unmapped_codes").fetchone()[0] == 0


def test_load_eunomia_vocabulary(lake_settings, shared_data: Path) -> None:
    con = connect(lake_settings)
    counts = load_vocabulary(con, shared_data / "omop" / "eunomia_synthea27nj")
    assert counts["concept"] == 2294
    assert counts["concept_relationship"] == 266588
    maps_to = con.execute("SELECT count(*) FROM omop.concept_relationship WHERE relationship_id='Maps to'").fetchone()
    assert maps_to[0] == 65641
    # loading again replaces, never duplicates
    assert load_vocabulary(con, shared_data / "omop" / "eunomia_synthea27nj")["concept"] == 2294
    std = con.execute("SELECT count(*) FROM omop.concept WHERE standard_concept = 'S'").fetchone()[0]
    assert 0 < std < 2294


def test_load_athena_tab_separated(lake_settings, tmp_path: Path) -> None:
    """Athena's own format: tab-separated, unquoted, dates as YYYYMMDD, quotes inside names."""
    d = tmp_path / "athena"
    d.mkdir()
    (d / "CONCEPT.csv").write_text(
        "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\tstandard_concept\tconcept_code\t"
        "valid_start_date\tvalid_end_date\tinvalid_reason\n"
        '3004410\tHemoglobin A1c "total"\tMeasurement\tLOINC\tLab Test\tS\t4548-4\t19700101\t20991231\t\n'
    )
    with gzip.open(d / "CONCEPT_RELATIONSHIP.csv.gz", "wt") as fh:
        fh.write("concept_id_1\tconcept_id_2\trelationship_id\tvalid_start_date\tvalid_end_date\tinvalid_reason\n"
                 "3004410\t3004410\tMaps to\t19700101\t20991231\t\n")  # fmt: skip
    counts = load_vocabulary(connect(lake_settings), d)
    assert counts["concept"] == 1 and counts["concept_relationship"] == 1
    row = connect(lake_settings).execute("SELECT concept_name, valid_start_date::VARCHAR, invalid_reason "
                                         "FROM omop.concept").fetchone()  # fmt: skip
    assert row == ('Hemoglobin A1c "total"', "1970-01-01", None)


def test_not_an_athena_export(lake_settings, tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(VocabularyError, match="missing CONCEPT_RELATIONSHIP"):
        d = tmp_path / "v"
        d.mkdir()
        shutil.copy(shared_data / "omop" / "eunomia_synthea27nj" / "CONCEPT.csv", d)
        load_vocabulary(connect(lake_settings), d)
    with pytest.raises(VocabularyError, match="does not exist"):
        load_vocabulary(connect(lake_settings), tmp_path / "nope")


def test_cli_vocab_load_and_stream_status(lake_settings) -> None:
    from typer.testing import CliRunner

    from careloop.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["vocab", "load"])  # default: the Eunomia subset
    assert res.exit_code == 0, res.output
    assert "concept 2,294" in res.output
    res = runner.invoke(app, ["stream", "status"])
    assert res.exit_code == 0, res.output
    assert "(0 rows)" in res.output
