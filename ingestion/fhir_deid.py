"""FHIR de-identification: a type-driven walk over the plain JSON of one (already validated) resource.

Rules (docs/deidentification.md explains each decision):
- dropped by type: Narrative, Annotation, HumanName, ContactPoint, Signature, markdown; Address unless the deployment
  keeps the 3-digit ZIP / state; Attachment reduced to contentType/language/size;
- dropped by name: free-text strings (`comment`, `description`, `valueString`, `patientInstruction`, ...), Reference
  `display`, Patient photo/contact, staff birth dates and photos, organisation/location names;
- Identifier.value -> keyed pseudonym; every reference -> relative `Type/<pseudonymous id>`;
- every date/dateTime/instant of a patient's resource shifted by that person's offset (partial dates keep precision);
- extensions keep only typed values (codes, quantities, dates); an extension left without a value is removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ingestion.fhir_schema import (
    DATE,
    DATETIME,
    ELEMENT,
    INSTANT,
    MARKDOWN,
    PRIMITIVE_EXT,
    RESOURCE,
    STRING,
    fields_of,
    is_resource_type,
)
from ingestion.pseudonym import Pseudonymizer

DROP_TYPES = frozenset({"Narrative", "Annotation", "HumanName", "ContactPoint", "Signature"})
FREE_TEXT = frozenset(
    {"comment", "comments", "description", "patientInstruction", "valueString", "note", "alias", "title"}
)  # fmt: skip
DROP_BY_TYPE: dict[str, frozenset[str]] = {
    "Patient": frozenset({"photo", "contact"}),
    "Practitioner": frozenset({"photo", "birthDate", "name"}),
    "RelatedPerson": frozenset({"photo", "birthDate", "name"}),
    "Person": frozenset({"photo", "birthDate", "name"}),
    "Organization": frozenset({"name"}),
    "Location": frozenset({"name"}),
    "HealthcareService": frozenset({"name", "comment", "extraDetails"}),
    "Device": frozenset({"serialNumber", "lotNumber", "udiCarrier", "deviceName", "distinctIdentifier"}),
    "Group": frozenset({"name"}),
    "CareTeam": frozenset({"name"}),
}
# DICOM UIDs carried in FHIR: remapped with the same keyed mapping the DICOM de-identifier uses, so the original UIDs
# never pass the gateway and a FHIR ImagingStudy still links to its de-identified DICOM instances.
DICOM_UID_FIELDS = frozenset({("ImagingStudySeries", "uid"), ("ImagingStudySeriesInstance", "uid")})
DICOM_UID_SYSTEM = "urn:dicom:uid"
PATIENT_FIELDS = ("patient", "subject", "beneficiary")
# Clinical resources careloop can only use when linked to a person (OMOP needs person_id).
REQUIRES_PATIENT = frozenset(
    {"Observation", "Condition", "Encounter", "Procedure", "MedicationRequest", "MedicationAdministration",
     "MedicationStatement", "MedicationDispense", "Immunization", "AllergyIntolerance", "DiagnosticReport",
     "CarePlan", "CareTeam", "Claim", "ExplanationOfBenefit", "ImagingStudy", "DocumentReference", "Goal",
     "ServiceRequest", "Coverage", "Specimen", "EpisodeOfCare", "FamilyMemberHistory", "RiskAssessment",
     "NutritionOrder", "DeviceRequest", "Composition", "Media", "QuestionnaireResponse", "ClinicalImpression"}
)  # fmt: skip
_TYPE_ID = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?$")
CLINICAL_TIME = (
    ("effectiveDateTime",), ("effectiveInstant",), ("effectivePeriod", "start"), ("onsetDateTime",),
    ("onsetPeriod", "start"), ("performedDateTime",), ("performedPeriod", "start"), ("occurrenceDateTime",),
    ("period", "start"), ("authoredOn",), ("recordedDate",), ("issued",), ("created",), ("billablePeriod", "start"),
    ("date",), ("recorded",), ("meta", "lastUpdated"),
)  # fmt: skip


PSEUDONYMOUS = "\x00pseudonymous"  # third element of a resolved reference whose id is already pseudonymous


class NeedsMain(Exception):
    """The resource needs the main process's state (identity index); raised only where it is not available."""


def needs_main(ref: str) -> Any:
    """The conditional resolver of a worker process: conditional references are resolved by the main process."""
    raise NeedsMain


class DeidError(ValueError):
    """The resource cannot be de-identified safely (reason is PHI-free)."""


@dataclass(frozen=True)
class FhirDeidOptions:
    shift_dates: bool = True
    keep_zip3: bool = False
    keep_state: bool = False


class RefIndex:
    """Resolves references to (type, logical id, version) using a bundle's fullUrls as well as the reference text."""

    def __init__(self, full_urls: dict[str, tuple[str, str]] | None = None,
                 persons: dict[str, str] | None = None, conditional: Any = None) -> None:  # fmt: skip
        self.full_urls = full_urls or {}
        self.persons = persons or {}  # identifier hash -> person, for Patients of the same Bundle
        self.conditional = conditional  # Type?identifier=... -> (type, id, marker); None: left unresolved

    def resolve(self, ref: str) -> tuple[str, str, str | None] | None:
        hit = self.full_urls.get(ref)
        if hit is not None:
            return hit[0], hit[1], None
        if "?" in ref and not ref.startswith(("#", "urn:")):
            # raises Rejection when it matches nothing (NeedsMain in a worker process)
            return self.conditional(ref) if self.conditional is not None else None
        if ref.startswith(("#", "urn:")):
            return None
        m = _TYPE_ID.search(ref)
        if m is None or not is_resource_type(m.group(1)):
            return None
        return m.group(1), m.group(2), m.group(3)


def shift_date_text(value: str, days: int) -> str:
    """Shift a FHIR date/dateTime/instant string by whole days, keeping its precision, time and zone text."""
    n = len(value)
    try:
        if n >= 10 and value[4] == "-" and value[7] == "-":
            d = date(int(value[:4]), int(value[5:7]), int(value[8:10])) + timedelta(days=days)
            return d.isoformat() + value[10:]
        if n == 7 and value[4] == "-":  # YYYY-MM: shift the month's middle, keep month precision
            d = date(int(value[:4]), int(value[5:7]), 15) + timedelta(days=days)
            return f"{d.year:04d}-{d.month:02d}"
        if n == 4:  # YYYY: shift the year's middle, keep year precision
            d = date(int(value), 7, 2) + timedelta(days=days)
            return f"{d.year:04d}"
    except (ValueError, OverflowError):
        pass
    raise DeidError("a date could not be shifted (out of range or malformed)")


def parse_fhir_time(value: str) -> datetime | None:
    """Datetime of a (possibly partial) FHIR date for the `occurred_at` header; None if unparseable."""
    try:
        if len(value) == 4:
            return datetime(int(value), 1, 1, tzinfo=UTC)
        if len(value) == 7:
            return datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=UTC)
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def clinical_time(resource: dict[str, Any]) -> datetime | None:
    for path in CLINICAL_TIME:
        v: Any = resource
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, str):
            t = parse_fhir_time(v)
            if t is not None:
                return t
    return None


@dataclass
class DeidContext:
    pseudo: Pseudonymizer
    refs: RefIndex
    options: FhirDeidOptions
    shift_days: int | None
    unresolved: int = 0
    resource_type: str = ""
    notes: list[str] = field(default_factory=list)

    def pseudo_ref(self, rtype: str, rid: str) -> str:
        return (
            f"Patient/{self.pseudo.person(rid)}"
            if rtype == "Patient"
            else f"{rtype}/{self.pseudo.resource_id(rtype, rid)}"
        )


def pseudo_id(pseudo: Pseudonymizer, rtype: str, rid: str) -> str:
    return pseudo.person(rid) if rtype == "Patient" else pseudo.resource_id(rtype, rid)


def _shift(value: Any, ctx: DeidContext) -> Any:
    if ctx.shift_days is None:
        return value
    if isinstance(value, str):
        return shift_date_text(value, ctx.shift_days)
    if isinstance(value, list):
        return [shift_date_text(v, ctx.shift_days) if isinstance(v, str) else v for v in value]
    return value


def _identifier(obj: dict[str, Any], ctx: DeidContext) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for k in ("use", "system"):
        if isinstance(obj.get(k), str):
            out[k] = obj[k]
    if isinstance(obj.get("type"), dict):
        t = walk(obj["type"], "CodeableConcept", ctx)
        if t:
            out["type"] = t
    value = obj.get("value")
    if isinstance(value, str) and obj.get("system") == DICOM_UID_SYSTEM:
        out["value"] = "urn:oid:" + ctx.pseudo.uid(value.removeprefix("urn:oid:"))
    elif isinstance(value, str):
        out["value"] = ctx.pseudo.identifier(obj.get("system"), value)
    if isinstance(obj.get("period"), dict):
        p = walk(obj["period"], "Period", ctx)
        if p:
            out["period"] = p
    return out or None


def _reference(obj: dict[str, Any], ctx: DeidContext) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    ref = obj.get("reference")
    if isinstance(ref, str):
        if ref.startswith("#"):
            out["reference"] = ref
        else:
            hit = ctx.refs.resolve(ref)
            if hit is None:
                ctx.unresolved += 1
            elif hit[2] == PSEUDONYMOUS:
                out["reference"] = f"{hit[0]}/{hit[1]}"
            else:
                out["reference"] = ctx.pseudo_ref(hit[0], hit[1])
    if isinstance(obj.get("type"), str):
        out["type"] = obj["type"]
    if isinstance(obj.get("identifier"), dict):
        ident = _identifier(obj["identifier"], ctx)
        if ident:
            out["identifier"] = ident
    return out or None


def _address(obj: dict[str, Any], ctx: DeidContext) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    if ctx.options.keep_state and isinstance(obj.get("state"), str):
        out["state"] = obj["state"]
    if ctx.options.keep_zip3 and isinstance(obj.get("postalCode"), str):
        digits = "".join(c for c in obj["postalCode"] if c.isdigit())
        if len(digits) >= 3:
            out["postalCode"] = digits[:3]
    if out and isinstance(obj.get("country"), str):
        out["country"] = obj["country"]
    return out or None


def _attachment(obj: dict[str, Any], ctx: DeidContext) -> dict[str, Any] | None:
    out = {k: obj[k] for k in ("contentType", "language", "size") if k in obj}
    return out or None


def _extension(obj: dict[str, Any], ctx: DeidContext) -> dict[str, Any] | None:
    out = walk(obj, "Extension", ctx)
    if out is None or not any(k.startswith("value") or k == "extension" for k in out):
        return None
    return out


SPECIAL = {
    "Identifier": _identifier,
    "Reference": _reference,
    "Address": _address,
    "Attachment": _attachment,
    "Extension": _extension,
}


def _element(value: Any, type_name: str, ctx: DeidContext) -> Any:
    handler = SPECIAL.get(type_name)
    if isinstance(value, list):
        items = []
        for v in value:
            if isinstance(v, dict):
                r = handler(v, ctx) if handler else walk(v, type_name, ctx)
                if r:
                    items.append(r)
        return items or None
    if isinstance(value, dict):
        return handler(value, ctx) if handler else walk(value, type_name, ctx)
    return None


def _primitive_ext(value: Any, ctx: DeidContext) -> Any:
    if isinstance(value, list):
        items = [walk(v, "FHIRPrimitiveExtension", ctx) if isinstance(v, dict) else None for v in value]
        return items if any(items) else None
    if isinstance(value, dict):
        return walk(value, "FHIRPrimitiveExtension", ctx)
    return None


def walk(obj: dict[str, Any], type_name: str, ctx: DeidContext) -> dict[str, Any] | None:
    """De-identified copy of one element of FHIR type `type_name`; unknown keys are dropped."""
    fields = fields_of(type_name)
    dropped = DROP_BY_TYPE.get(type_name, ())
    out: dict[str, Any] = {}
    exts: list[str] = []
    for key, value in obj.items():
        info = fields.get(key)
        if info is None or key in dropped or value is None:
            continue
        kind = info.kind
        if kind is PRIMITIVE_EXT:
            exts.append(key)
        elif kind is ELEMENT:
            if info.type_name in DROP_TYPES:
                continue
            new = _element(value, info.type_name, ctx)
            if new:
                out[key] = new
        elif kind is RESOURCE:
            new = _resources(value, ctx)
            if new:
                out[key] = new
        elif kind is DATE or kind is DATETIME or kind is INSTANT:
            out[key] = _shift(value, ctx)
        elif kind is MARKDOWN or (kind is STRING and key in FREE_TEXT):
            continue
        elif (type_name, key) in DICOM_UID_FIELDS and isinstance(value, str):
            out[key] = ctx.pseudo.uid(value)
        else:
            out[key] = value
    for key in exts:
        if key[1:] in out:
            new = _primitive_ext(obj[key], ctx)
            if new:
                out[key] = new
    return out or None


def _resources(value: Any, ctx: DeidContext) -> Any:
    """Contained resources: same person, same shift; their local ids stay (they are only referenced as `#id`)."""
    if isinstance(value, list):
        return [r for r in (_resources(v, ctx) for v in value) if r] or None
    if isinstance(value, dict) and is_resource_type(value.get("resourceType", "")):
        return walk(value, value["resourceType"], ctx)
    return None


def deidentify_resource(resource: dict[str, Any], logical_id: str, ctx: DeidContext) -> dict[str, Any]:
    """The de-identified copy of one validated top-level resource, with its pseudonymous id."""
    rtype = resource["resourceType"]
    ctx.resource_type = rtype
    out = walk(resource, rtype, ctx) or {}
    out["resourceType"] = rtype
    out["id"] = pseudo_id(ctx.pseudo, rtype, logical_id)
    return out
