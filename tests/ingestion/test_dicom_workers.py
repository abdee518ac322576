"""DICOM through the worker processes gives exactly the in-process results: outcomes, events, object store, vault,
dead letters; the person resolution stays in the main process (a FHIR Patient indexed mid-run is respected)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from careloop.events import content_hash
from careloop.settings import Settings
from ingestion import Ingestor, read_vault
from tests.ingestion.support import read_topic

# A FHIR Patient whose identifier is the PatientID of the MR_small* files: indexed after the first batch of four
# files (CT_small, JPEG2000, MR_small, MR_small_bigendian), before MR_small_implicit, which a worker was already given.
PATIENT = {"resourceType": "Patient", "id": "dicom-w-1", "identifier": [{"system": "urn:mrn", "value": "4MR1"}]}


def _files(dicom_dir: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(dicom_dir.glob("*.dcm"))]


def _home(settings: Settings, name: str) -> Settings:
    """A home of its own (identity index, seen-store, object store) with the same keys, broker and topics."""
    from careloop.secrets import load_key

    for key in ("pseudonym", "vault"):
        load_key(settings, key)
    home = settings.home_dir / name
    shutil.copytree(settings.home_dir / "keys", home / "keys")
    return _home_of(settings, name)


def _run(settings: Settings, source: str, files: list[bytes], workers: int) -> list[Any]:
    s = _home(settings, source)
    with Ingestor(s, source_system=source, ack_each_call=False, workers=workers) as ing:
        if workers:
            outs = []
            for o in ing.submit_dicoms(files, batch_size=4):
                outs.append(o)
                if len(outs) == 4:
                    ing.submit_resource(PATIENT)
            assert ing._pool is not None
        else:
            outs = [ing.submit_dicom(d) for d in files[:4]]
            ing.submit_resource(PATIENT)
            outs += [ing.submit_dicom(d) for d in files[4:]]
        ing.flush()
    return outs


def _comparable(settings: Settings, source: str, outs: list[Any]) -> dict[str, Any]:
    # in outcome order (the topic is read partition by partition)
    order = {o.event_id: n for n, o in enumerate(outs)}
    events = sorted((e for e in read_topic(settings, "dicom") if e.headers.source_system == source),
                    key=lambda e: order[str(e.headers.event_id)])  # fmt: skip
    dead = [e for e in read_topic(settings, "deadletter") if e.headers.source_system == source]
    store = settings.home_dir / source / "objects"
    return {
        "outcomes": [(o.status, o.resource_type, o.resource_id, o.error_class, o.reason, o.http_status) for o in outs],
        # occurred_at of the headers: the study time, or the ingestion time (differs by design) when there is none
        "events": [
            (
                e.key,
                e.value | {"uri": Path(e.value["uri"]).name},
                e.headers.event_type,
                e.value["occurred_at"] and e.headers.occurred_at,
                e.headers.content_hash == content_hash(e.value),
            )
            for e in events
        ],
        "dead": sorted((e.value["stage"], e.value["error_class"], e.value["reason"]) for e in dead),
        "objects": {p.name: p.read_bytes() for p in store.rglob("*.dcm")},
    }


def test_dicom_workers_match_the_in_process_path(settings: Settings, dicom_dir: Path) -> None:
    files = _files(dicom_dir)
    files = [*files, files[0], files[2]]  # identical files again (a later batch): duplicates, not republished
    in_process = _run(settings, "dcm-in-process", files, 0)
    pooled = _run(settings, "dcm-pooled", files, 2)
    persons_in = [o.person for o in in_process]
    persons_pool = [o.person for o in pooled]
    a, b = _comparable(settings, "dcm-in-process", in_process), _comparable(settings, "dcm-pooled", pooled)
    assert a == b
    assert persons_in == persons_pool
    statuses = [o.status for o in in_process]
    assert statuses[-2:] == ["duplicate", "duplicate"]
    assert statuses.count("accepted") >= 10 and statuses.count("rejected") >= 3
    assert len(a["events"]) == statuses.count("accepted") and len(a["dead"]) == statuses.count("rejected")
    assert {f"{e[1]['sha256']}.dcm" for e in a["events"]} <= set(a["objects"])
    # MR_small (before the Patient) keeps its fallback person; MR_small_implicit (after) gets the FHIR person
    mr = [o.person for o, name in zip(pooled, sorted(p.name for p in dicom_dir.glob("*.dcm")), strict=False)
          if name.startswith("MR_small") and o.status == "accepted"]  # fmt: skip
    assert len(set(mr)) == 2
    for o, data in zip(pooled, files, strict=True):  # every original is in the vault, by event id
        if o.status != "duplicate":
            assert read_vault(_home_of(settings, "dcm-pooled"), f"vault:{o.event_id}") == data


def _home_of(settings: Settings, name: str) -> Settings:
    return Settings(**(settings.model_dump() | {"home": settings.home_dir / name}))
