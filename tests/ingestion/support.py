"""Helpers for the ingestion tests: read topics back, collect PHI from inputs, scan outputs for it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson

from careloop.events import ConsumedEvent
from careloop.kafka import read_topic as kafka_read_topic
from careloop.settings import Settings

TOPICS = ("fhir", "dicom", "outcomes", "predictions", "alerts", "deadletter")


def read_topic(settings: Settings, name: str, idle_polls: int = 2) -> list[ConsumedEvent]:
    """Every message of one topic, from the beginning (assign(), no group join: fast on Tansu)."""
    return kafka_read_topic(settings, settings.topic(name), idle_polls=idle_polls)


def read_all(settings: Settings) -> dict[str, list[ConsumedEvent]]:
    return {name: read_topic(settings, name) for name in TOPICS}


def message_strings(events: list[ConsumedEvent]) -> list[str]:
    """Each message as one JSON text (key, value and headers), for PHI scans."""
    return [orjson.dumps({"k": e.key, "v": e.value, "h": e.headers.model_dump(mode="json")}).decode() for e in events]


# -- PHI collected from the inputs ---------------------------------------------------------------------------------
def _walk(obj: Any, fn: Any) -> None:
    if isinstance(obj, dict):
        fn(obj)
        for v in obj.values():
            _walk(v, fn)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, fn)


def collect_phi(resources: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Names, identifier values, address parts, telecom values and birth dates found anywhere in the inputs."""
    phi: dict[str, set[str]] = {"name": set(), "identifier": set(), "address": set(), "telecom": set(),
                                "birthDate": set()}  # fmt: skip

    def add(kind: str, value: Any) -> None:
        if isinstance(value, str) and len(value.strip()) >= 3:
            phi[kind].add(value.strip())

    def visit(d: dict[str, Any]) -> None:
        for key in ("name",):
            names = d.get(key)
            for n in names if isinstance(names, list) else []:
                if isinstance(n, dict) and any(k in n for k in ("family", "given", "text")):
                    add("name", n.get("family"))
                    add("name", n.get("text"))
                    for g in n.get("given") or []:
                        add("name", g)
        if d.get("resourceType") == "Patient" and isinstance(d.get("birthDate"), str):
            phi["birthDate"].add(d["birthDate"])
        if "value" in d and "system" in d and isinstance(d.get("value"), str) and d.get("system") in (
                "phone", "email", "fax", "pager", "url", "sms"):  # fmt: skip
            add("telecom", d["value"])
        for ident in d.get("identifier") or [] if isinstance(d.get("identifier"), list) else [d.get("identifier")]:
            if isinstance(ident, dict):
                add("identifier", ident.get("value"))
        for addr in d.get("address") or [] if isinstance(d.get("address"), list) else [d.get("address")]:
            if isinstance(addr, dict):
                for line in addr.get("line") or []:
                    add("address", line)
                add("address", addr.get("city"))
                add("address", addr.get("postalCode"))
                add("address", addr.get("text"))
        if isinstance(d.get("valueAddress"), dict):
            add("address", d["valueAddress"].get("city"))
        if d.get("url") == "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName":
            add("name", d.get("valueString"))

    _walk(resources, visit)
    return phi


def resources_of(path: Path) -> list[dict[str, Any]]:
    obj = orjson.loads(path.read_bytes())
    if isinstance(obj, dict) and obj.get("resourceType") == "Bundle":
        return [obj] + [e["resource"] for e in obj.get("entry") or [] if isinstance(e.get("resource"), dict)]
    return [obj]


def _bounded(blob: Any, needle: Any) -> bool:
    """needle occurs in blob as a whole token (not inside a longer word, number or hex pseudonym)."""
    n = len(needle)
    i = blob.find(needle)
    while i >= 0:
        before = blob[i - 1 : i]
        after = blob[i + n : i + n + 1]
        if not before.isalnum() and not after.isalnum():
            return True
        i = blob.find(needle, i + 1)
    return False


SCANNED = ("name", "identifier", "address", "telecom")


def leaks(texts: list[str], phi: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(kind, value) of every PHI value found as a whole token in the texts (birth dates are checked per patient)."""
    blob = "\n".join(texts)
    found = []
    for k in SCANNED:
        for v in sorted(phi[k]):
            # short numbers only as a whole JSON string (else any count or code of 4 digits would match)
            short_number = v.isdigit() and len(v) < 6
            if len(v) >= 4 and (f'"{v}"' in blob if short_number else _bounded(blob, v)):
                found.append((k, v))
    return found


def scan_home(home: Path, phi: dict[str, set[str]]) -> list[tuple[str, str, str]]:
    """PHI values found as whole tokens in the bytes of any file under home except the encrypted vault."""
    hits = []
    needles = [(k, v, v.encode()) for k in SCANNED for v in phi[k] if len(v) >= 6 or (len(v) >= 4 and not v.isdigit())]
    needles.sort(key=lambda n: n[1])
    for f in home.rglob("*"):
        if not f.is_file() or "vault" in f.relative_to(home).parts:
            continue
        data = f.read_bytes()
        for kind, v, b in needles:
            if _bounded(data, b):
                hits.append((str(f.relative_to(home)), kind, v))
    return hits


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."
