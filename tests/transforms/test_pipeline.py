"""The composite PTransforms on Beam's in-process FnApiRunner (TestPipeline, plain elements), and the bounded
backfill through the ingestion core (validation + de-identification) into the lake."""

from __future__ import annotations

from collections import Counter

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from careloop.duck import connect
from transforms.pipeline import FhirToOmop, MapChunks, map_envelope, run_batch

from .fhirdata import bundle_resources, envelope


def synthea_envs(shared_data, n=2):
    files = sorted((shared_data / "fhir" / "synthea_r4_bundles").glob("*_*.json"))[:n]
    resources = [r for f in files for r in bundle_resources(f)]
    return [envelope(r, i) for i, r in enumerate(resources)]


def summary(results) -> list[tuple[str, str, int]]:
    c = Counter((r["src"]["resource_type"], r["status"], len(r["rows"])) for r in results)
    return sorted((f"{t}:{s}", str(n), k) for (t, s, n), k in c.items())


def test_fhir_to_omop_on_test_pipeline(shared_data, vocab) -> None:
    envs = synthea_envs(shared_data)
    expected = [map_envelope(e, vocab) for e in envs]
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(envs) | FhirToOmop(vocab)
        statuses = out | "Key" >> beam.Map(lambda r: (r["src"]["resource_id"], r["status"], len(r["rows"])))
        assert_that(statuses, equal_to([(r["src"]["resource_id"], r["status"], len(r["rows"])) for r in expected]))


def test_chunked_form_equals_element_form(shared_data, vocab, tmp_path) -> None:
    envs = synthea_envs(shared_data, 3)
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        chunks = p | beam.Create([envs[i : i + 100] for i in range(0, len(envs), 100)])
        flat = chunks | MapChunks(vocab) | beam.FlatMap(lambda c: [(r["src"]["resource_id"], r["status"]) for r in c])
        assert_that(flat, equal_to([(e["value"]["id"], map_envelope(e, vocab)["status"]) for e in envs]))
    results = run_batch(envs, str(tmp_path / "w"), vocab, chunk=97)
    assert summary(results) == summary([map_envelope(e, vocab) for e in envs])


def test_backfill_goes_through_ingestion_deid(omop_settings, shared_data) -> None:
    from transforms.backfill import backfill

    files = sorted((shared_data / "fhir" / "synthea_r4_bundles").glob("*_*.json"))[:2]
    report = backfill(omop_settings, files)
    assert report.events > 0 and report.rows_written > 0
    con = connect(omop_settings)
    persons = [r[0] for r in con.execute("SELECT person_source_value FROM omop.person").fetchall()]
    originals = {r["id"] for f in files for r in bundle_resources(f) if r["resourceType"] == "Patient"}
    assert len(persons) == 2
    assert all(p.startswith("p") and p not in originals for p in persons)  # pseudonyms, not source ids
    again = backfill(omop_settings, files)
    assert again.rows_written == 0
    assert con.execute("SELECT count(*) FROM omop.person").fetchone()[0] == 2
