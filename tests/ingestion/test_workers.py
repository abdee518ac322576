"""Worker processes give exactly the in-process results: same outcomes, same de-identified events, same vault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from careloop.settings import Settings
from ingestion import Ingestor, read_vault
from ingestion.fhir_deid import clinical_time
from tests.ingestion.support import read_topic

VOLATILE = ("ingested_at", "trace_id")  # header fields that differ on every run by design


def _headers(e: Any) -> dict[str, Any]:
    """Comparable headers: without the volatile fields, and occurred_at only where it is a clinical time (else it is
    the ingestion time)."""
    out = e.headers.model_dump(exclude={"event_id", *VOLATILE})
    if clinical_time(e.value) is None:
        out.pop("occurred_at")
    return out


def _bundles(synthea_dir: Path, n: int) -> list[dict[str, Any]]:
    files = sorted(p for p in synthea_dir.glob("*.json") if not p.name.startswith(("practitioner", "hospital")))
    return [orjson.loads(p.read_bytes()) for p in files[:n]]


def _mixed_bundle() -> dict[str, Any]:
    """Resources the workers hand back to the main process (identity index, conditional references), plus
    invalid ones, among enough plain ones for the workers to be used."""
    plain = [{"resource": {"resourceType": "Patient", "id": f"w{i}", "name": [{"family": f"Fam{i}"}],
                           "identifier": [{"system": "urn:mrn", "value": f"MRN-W{i}"}]}}
             for i in range(70)]  # fmt: skip
    special = [
        {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "NO-ID-1"}]}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
                      "subject": {"identifier": {"system": "urn:mrn", "value": "MRN-W3"}}}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
                      "subject": {"reference": "Patient?identifier=urn:mrn|MRN-W5"}}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
                      "subject": {"reference": "Patient?identifier=urn:mrn|NOBODY"}}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "effectiveDateTime": "not-a-date", "subject": {"reference": "Patient/w1"}}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "valueQuantity": {"value": 2**70}, "subject": {"reference": "Patient/w1"}}},
    ]  # fmt: skip
    return {"resourceType": "Bundle", "type": "batch", "entry": plain + special}


def _run(settings: Settings, source: str, workers: int, bundles: list[dict[str, Any]]) -> tuple[list, list]:
    with Ingestor(settings, source_system=source, publish=False, workers=workers) as ing:
        outs = [o for b in ing.submit_bundles(bundles) for o in b]
        events = ing.drain()
        assert (ing._pool is not None) == (workers > 0)
        refs = [read_vault(settings, f"vault:{o.event_id}") for o in outs if o.status != "duplicate"]
    rows = [(o.status, o.resource_type, o.resource_id, o.person, o.error_class, o.reason) for o in outs]
    values = [(e.key, e.value, _headers(e)) for e in events]
    return rows, values + [("vault", r) for r in refs]


def test_workers_match_the_in_process_path(settings: Settings, synthea_dir: Path) -> None:
    bundles = [*_bundles(synthea_dir, 2), _mixed_bundle()]
    in_process = _run(settings, "same-source", 0, bundles)
    # same home (same keys) and source: publish=False marks nothing seen, so the second run is not all duplicates
    pooled = _run(settings, "same-source", 2, bundles)
    assert pooled == in_process
    statuses = [r[0] for r in in_process[0]]
    assert statuses.count("rejected") == 3 and statuses.count("accepted") >= 200
    reasons = {r[4] for r in in_process[0] if r[0] == "rejected"}
    assert reasons == {"UnresolvedConditionalReference", "InvalidFHIR", "UnsupportedNumber"}
    assert not any("NOBODY" in (r[5] or "") for r in in_process[0])


def test_pipelined_bundles_and_ndjson_through_the_workers_on_a_broker(settings: Settings, synthea_dir: Path) -> None:
    bundles = _bundles(synthea_dir, 3)
    with Ingestor(settings, source_system="ehr-w", ack_each_call=False, workers=2) as ing:
        outs = [o for b in ing.submit_bundles(bundles) for o in b]
        again = [o for b in ing.submit_bundles(bundles[:1]) for o in b]
    accepted = [o for o in outs if o.status == "accepted"]
    assert len(accepted) == len(outs) - sum(o.status == "duplicate" for o in outs)
    assert all(o.status == "duplicate" for o in again)
    msgs = read_topic(settings, "fhir")
    assert len(msgs) == len(accepted)
    keys = {str(m.headers.event_id): m.key for m in msgs}
    assert keys == {o.event_id: o.person or o.resource_id for o in accepted}  # key = pseudonym: per-person order

    lines = [orjson.dumps({"resourceType": "Patient", "id": f"nd{i}", "gender": "female"}) for i in range(80)]
    lines[7] = b'{ "resourceType" : "Patient",  "id": "spaced" }'  # the vault keeps the bytes as received
    with Ingestor(settings, source_system="bulk-w", workers=2) as ing:
        nd = list(ing.submit_ndjson([*lines, b"{broken"], batch_size=1000))
        assert ing._pool is not None
    assert [o.status for o in nd] == ["accepted"] * 80 + ["rejected"]
    assert read_vault(settings, f"vault:{nd[7].event_id}") == lines[7]


def test_pipelined_bundles_do_not_republish_what_an_earlier_bundle_settled(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bundle k+1 is checked against the seen-store before Bundle k is published; when Bundle k's acks settle in
    between (here after every batch), content the two share must still be a duplicate, not published twice."""
    import ingestion.core

    monkeypatch.setattr(ingestion.core, "SETTLE_EVERY", 1)
    org = {"resourceType": "Organization", "id": "shared-org", "name": "General Hospital"}

    def bundle(n: int) -> dict[str, Any]:
        patient = {
            "resourceType": "Patient",
            "id": f"settle-{n}",
            "managingOrganization": {"reference": "Organization/shared-org"},
        }
        return {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": org}, {"resource": patient}]}

    with Ingestor(settings, source_system="settle", ack_each_call=False, workers=0) as ing:
        outs = [o for b in ing.submit_bundles([bundle(n) for n in range(4)]) for o in b]
    assert [o.status for o in outs] == ["accepted", "accepted"] + ["duplicate", "accepted"] * 3
    assert len(read_topic(settings, "fhir")) == 5
