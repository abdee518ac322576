"""FHIR R4 resources and DICOM events -> OMOP CDM v5.4 rows (ETL-Synthea conventions), as pure functions.

The Beam PTransforms in `transforms.pipeline` wrap these; keeping them plain makes each mapping testable on one
dict and runner-agnostic. Every input produces exactly one `Mapped` result (rows, a delete/retraction, a skip with
its reason, or a dead letter with its reason) so that nothing is silently lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from transforms import fhirdates, units
from transforms.ids import omop_id, person_id
from transforms.vocab import Concept, Vocabulary

# Type concepts as used by ETL-Synthea in the Eunomia reference
TYPE = {
    "visit": 44818517,  # Visit derived from encounter on claim
    "condition": 38000175,  # Prescription dispensed through mail order (ETL-Synthea's constant for conditions)
    "drug": 32869,  # Pharmacy claim
    "measurement": 38000267,  # Lab result
    "procedure": 38000267,
    "observation": 38000280,  # Observation recorded from EHR
    "death": 38003566,  # EHR record patient status "Deceased"
    "period": 44814724,  # Period covering healthcare encounters
}
GENDER = {"male": 8507, "female": 8532}
RACE = {"2106-3": 8527, "2054-5": 8516, "2028-9": 8515, "1002-5": 8657, "2076-8": 8557}
ETHNICITY = {"2135-2": 38003563, "2186-5": 38003564}
VISIT = {"AMB": 9202, "outpatient": 9202, "EMER": 9203, "emergency": 9203, "IMP": 9201, "inpatient": 9201,
         "ACUTE": 9201, "NONAC": 9201, "OBSENC": 9201, "PRENC": 9202, "SS": 9202, "HH": 581476, "VR": 5083}  # fmt: skip
OPERATOR = {"<": 4171756, "<=": 4171754, ">=": 4171755, ">": 4172704}
YES, NO = 4188539, 4188540
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
RETRACT_STATUSES = {"cancelled", "not-done", "refuted", "not-taken", "draft", "planned"}
MAPPED_TYPES = ("Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "MedicationStatement",
                "MedicationAdministration", "Immunization", "Procedure", "AllergyIntolerance", "ImagingStudy",
                "Practitioner", "Organization")  # fmt: skip
PK = {
    "person": "person_id",
    "death": "person_id",
    "visit_occurrence": "visit_occurrence_id",
    "condition_occurrence": "condition_occurrence_id",
    "drug_exposure": "drug_exposure_id",
    "procedure_occurrence": "procedure_occurrence_id",
    "measurement": "measurement_id",
    "observation": "observation_id",
    "observation_period": "observation_period_id",
    "provider": "provider_id",
    "care_site": "care_site_id",
    "image_occurrence": "image_occurrence_id",
}
# Flags that send the record to the dead letters instead of loading it
DEADLETTER_CHECKS = {"no_person", "no_date", "invalid_resource"}


class MappingError(Exception):
    """The resource cannot become a valid OMOP row (dead letter with this reason)."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(reason)
        self.check = check
        self.reason = reason


class Out:
    """Rows under construction for one source resource."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(
        self, table: str, row: dict[str, Any], *flags: tuple[str, str] | None, shared: bool = False
    ) -> dict[str, Any]:
        """`shared`: the row id is not derived from this resource's own id (DICOM study/series rows that an
        ImagingStudy and DICOM events both produce), so the writer must check the lake for it."""
        rec = {"table": table, "id": row[PK[table]], "row": row, "flags": [list(f) for f in flags if f]}
        if shared:
            rec["shared"] = True
        self.rows.append(rec)
        return rec


# -- references -------------------------------------------------------------------------------------------------------
def ref_id(ref: Any, rtype: str) -> str | None:
    """`Type/<id>` (relative, possibly with a base URL or `/_history/n`) -> id; None for other types."""
    if not isinstance(ref, dict):
        return None
    r = ref.get("reference")
    if not isinstance(r, str):
        return None
    parts = r.split("/")
    for i in range(len(parts) - 1):
        if parts[i] == rtype:
            return parts[i + 1]
    return None


def person_of(res: dict[str, Any], key: str | None) -> int:
    for field in ("subject", "patient"):
        pid = ref_id(res.get(field), "Patient")
        if pid:
            return person_id(pid)
    if key:
        return person_id(key)
    raise MappingError("no_person", f"{res.get('resourceType')} has no Patient reference and no person key")


def visit_of(res: dict[str, Any]) -> int | None:
    eid = ref_id(res.get("encounter") or res.get("context"), "Encounter")
    return omop_id("Encounter", eid) if eid else None


def provider_of(res: dict[str, Any], *fields: str) -> int | None:
    for f in fields:
        v = res.get(f)
        if isinstance(v, list):
            v = v[0] if v else None
        if isinstance(v, dict) and "individual" in v:
            v = v["individual"]
        if isinstance(v, dict) and "actor" in v:
            v = v["actor"]
        pid = ref_id(v, "Practitioner")
        if pid:
            return omop_id("Practitioner", pid)
    return None


def need_date(res: dict[str, Any], *fields: str) -> tuple[fhirdates.FhirDate, tuple[str, str] | None]:
    d = fhirdates.first(res, *fields)
    if d is None:
        raise MappingError("no_date", f"{res.get('resourceType')} has none of {', '.join(fields)} (or unparseable)")
    return d, (("partial_date", f"{res.get('resourceType')} date {d.date} given to year/month only") if d.partial
               else None)  # fmt: skip


def concept_flag(c: Concept, what: str) -> tuple[str, str] | None:
    if c.concept_id:
        return None
    if c.source_value is None:
        return ("no_code", f"{what} has no coding")
    return ("unmapped_code", f"{what} code {c.vocabulary_id or '?'}:{c.source_value} has no standard concept")


def status_of(res: dict[str, Any]) -> str | None:
    s = res.get("status")
    if isinstance(s, str):
        return s
    vs = res.get("verificationStatus")
    if isinstance(vs, dict):
        for c in vs.get("coding") or []:
            return c.get("code")
    return None


# -- domain routing ---------------------------------------------------------------------------------------------------
def route(c: Concept, default: str) -> str:
    dom = c.domain_id
    if dom == "Measurement":
        return "measurement"
    if dom == "Observation":
        return "observation"
    if dom == "Condition":
        return "condition_occurrence"
    if dom == "Procedure":
        return "procedure_occurrence"
    if dom == "Drug":
        return "drug_exposure"
    return default


def event_row(table: str, rid: int, pid: int, c: Concept, d: fhirdates.FhirDate, *, visit: int | None,
              provider: int | None, end: fhirdates.FhirDate | None = None) -> dict[str, Any]:  # fmt: skip
    """A row of `table` (the routed domain) with the common columns filled in."""
    if table == "condition_occurrence":
        return {
            "condition_occurrence_id": rid,
            "person_id": pid,
            "condition_concept_id": c.concept_id,
            "condition_start_date": d.date,
            "condition_start_datetime": d.datetime,
            "condition_end_date": end.date if end else None,
            "condition_end_datetime": end.datetime if end else None,
            "condition_type_concept_id": TYPE["condition"],
            "provider_id": provider,
            "visit_occurrence_id": visit,
            "condition_source_value": c.source_value,
            "condition_source_concept_id": c.source_concept_id,
        }
    if table == "procedure_occurrence":
        return {
            "procedure_occurrence_id": rid,
            "person_id": pid,
            "procedure_concept_id": c.concept_id,
            "procedure_date": d.date,
            "procedure_datetime": d.datetime,
            "procedure_end_date": end.date if end else None,
            "procedure_end_datetime": end.datetime if end else None,
            "procedure_type_concept_id": TYPE["procedure"],
            "provider_id": provider,
            "visit_occurrence_id": visit,
            "procedure_source_value": c.source_value,
            "procedure_source_concept_id": c.source_concept_id,
        }
    if table == "measurement":
        return {"measurement_id": rid, "person_id": pid, "measurement_concept_id": c.concept_id,
                "measurement_date": d.date, "measurement_datetime": d.datetime,
                "measurement_type_concept_id": TYPE["measurement"], "provider_id": provider,
                "visit_occurrence_id": visit, "measurement_source_value": c.source_value,
                "measurement_source_concept_id": c.source_concept_id}  # fmt: skip
    if table == "drug_exposure":
        return {"drug_exposure_id": rid, "person_id": pid, "drug_concept_id": c.concept_id,
                "drug_exposure_start_date": d.date, "drug_exposure_start_datetime": d.datetime,
                "drug_exposure_end_date": (end or d).date, "drug_exposure_end_datetime": (end or d).datetime,
                "drug_type_concept_id": TYPE["drug"], "provider_id": provider, "visit_occurrence_id": visit,
                "drug_source_value": c.source_value, "drug_source_concept_id": c.source_concept_id}  # fmt: skip
    return {
        "observation_id": rid,
        "person_id": pid,
        "observation_concept_id": c.concept_id,
        "observation_date": d.date,
        "observation_datetime": d.datetime,
        "observation_type_concept_id": TYPE["observation"],
        "provider_id": provider,
        "visit_occurrence_id": visit,
        "observation_source_value": c.source_value,
        "observation_source_concept_id": c.source_concept_id,
    }


# -- value[x] -------------------------------------------------------------------------------------------------------
VALUE_KEYS = ("valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean", "valueInteger", "valueRange",
              "valueRatio", "valueSampledData", "valueTime", "valueDateTime", "valuePeriod")  # fmt: skip


def apply_value(rec: dict[str, Any], holder: dict[str, Any], analyte: Concept, vocab: Vocabulary) -> None:
    """Fill value/unit columns of a measurement or observation row from `holder`'s value[x]."""
    row, table = rec["row"], rec["table"]
    meas = table == "measurement"
    key = next((k for k in VALUE_KEYS if k in holder), None)
    if key is None:
        dar = holder.get("dataAbsentReason")
        if dar is not None:
            code = next((c.get("code") for c in (dar.get("coding") or []) if isinstance(c, dict)), None)
            row["value_source_value"] = f"data-absent:{code or 'unknown'}"
            rec["flags"].append(["value_absent", f"value absent ({code or 'no reason code'})"])
        return
    v = holder[key]
    number: float | None = None
    unit_src: str | None = None
    if key == "valueQuantity" and isinstance(v, dict):
        number = _num(v.get("value"))
        unit_src = v.get("code") or v.get("unit")
        if v.get("comparator") in OPERATOR:
            row["operator_concept_id"] = OPERATOR[v["comparator"]]
    elif key == "valueInteger":
        number = _num(v)
    elif key == "valueCodeableConcept":
        vc = vocab.codeable(v)
        row["value_as_concept_id"] = vc.concept_id
        row["value_source_value"] = vc.source_value
    elif key == "valueBoolean":
        row["value_as_concept_id"] = YES if v else NO
        row["value_source_value"] = str(bool(v)).lower()
    elif key == "valueRange" and isinstance(v, dict):
        lo, hi = (v.get("low") or {}), (v.get("high") or {})
        row["value_source_value"] = f"{lo.get('value', '')}-{hi.get('value', '')}"
        unit_src = lo.get("code") or hi.get("code") or lo.get("unit") or hi.get("unit")
        if meas:
            row["range_low"], row["range_high"] = _num(lo.get("value")), _num(hi.get("value"))
    elif key == "valueRatio" and isinstance(v, dict):
        n, d = _num((v.get("numerator") or {}).get("value")), _num((v.get("denominator") or {}).get("value"))
        number = n / d if n is not None and d else None
        row["value_source_value"] = f"{n}/{d}"
    elif key in ("valueString", "valueTime", "valueDateTime"):
        text = str(v)
        if meas:
            row["value_source_value"] = text[:50]
        else:
            row["value_as_string"] = text[:60]
            if key == "valueDateTime" and (pd := fhirdates.parse(v)) is not None:
                row["value_as_datetime"] = pd.datetime or pd.date
    elif key == "valuePeriod" and isinstance(v, dict):
        row["value_source_value"] = f"{v.get('start', '')}/{v.get('end', '')}"[:50]
    elif key == "valueSampledData":
        row["value_source_value"] = "sampled-data"
        rec["flags"].append(["value_not_representable", "SampledData value kept only as a marker"])
    if number is not None or unit_src is not None:
        analyte_code = analyte.source_value if analyte.vocabulary_id == "LOINC" else None
        res = units.normalize(analyte_code, number, unit_src)
        row["value_as_number"] = res.value
        row["unit_source_value"] = unit_src
        row["unit_concept_id"] = vocab.unit(res.unit) if res.unit else 0
        if res.unit and not row["unit_concept_id"]:
            rec["flags"].append(["unit_unknown", f"unit {res.unit!r} is not a UCUM concept in the vocabulary"])
        if res.flag:
            rec["flags"].append([res.flag, f"unit {unit_src!r} for {analyte_code or analyte.source_value}"])
        if res.converted:
            rec["flags"].append(["unit_converted", f"{number} {unit_src} -> {res.value:.4g} {res.unit}"])
        if not units.plausible(analyte_code, res.value):
            rec["flags"].append(["implausible_value", f"{res.value:.4g} {res.unit} outside the plausible range"])
    if key == "valueQuantity" and number is None:
        rec["flags"].append(["value_absent", "valueQuantity without a number"])
    if not meas and "value_as_number" in row:
        row.pop("operator_concept_id", None)
        row.pop("range_low", None)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# -- per resource type ---------------------------------------------------------------------------------------------
def map_patient(res: dict[str, Any], key: str | None, vocab: Vocabulary, out: Out) -> None:
    pid = person_id(res["id"])
    race_code = eth_code = None
    race_src = eth_src = None
    for ext in res.get("extension") or []:
        url = ext.get("url", "")
        if url in (US_CORE + "us-core-race", US_CORE + "us-core-ethnicity"):
            for sub in ext.get("extension") or []:
                if sub.get("url") == "ombCategory" and isinstance(sub.get("valueCoding"), dict):
                    code, disp = sub["valueCoding"].get("code"), sub["valueCoding"].get("display")
                    if url.endswith("race"):
                        race_code, race_src = code, disp or code
                    else:
                        eth_code, eth_src = code, disp or code
    birth = fhirdates.parse(res.get("birthDate"))
    flags = []
    if birth is None:
        flags.append(("no_birth_date", "Patient without a usable birthDate (year_of_birth is required)"))
    y = m = d = None
    if birth:
        raw = str(res.get("birthDate"))
        y = int(birth.date[:4])
        m = int(birth.date[5:7]) if len(raw) >= 7 else None
        d = int(birth.date[8:10]) if len(raw) >= 10 else None
    gender = res.get("gender")
    if gender not in GENDER:
        flags.append(("unmapped_code", f"gender {gender!r} has no standard concept"))
    out.add("person", {"person_id": pid, "gender_concept_id": GENDER.get(gender, 0), "year_of_birth": y,
                       "month_of_birth": m, "day_of_birth": d,
                       "birth_datetime": f"{birth.date} 00:00:00" if birth and not birth.partial else None,
                       "race_concept_id": RACE.get(race_code or "", 0), "ethnicity_concept_id": ETHNICITY.get(
                           eth_code or "", 0), "person_source_value": res["id"], "gender_source_value": gender,
                       "gender_source_concept_id": 0, "race_source_value": race_src, "race_source_concept_id": 0,
                       "ethnicity_source_value": eth_src, "ethnicity_source_concept_id": 0}, *flags)  # fmt: skip
    death = fhirdates.parse(res.get("deceasedDateTime"))
    if death is not None:
        out.add("death", {"person_id": pid, "death_date": death.date, "death_datetime": death.datetime,
                          "death_type_concept_id": TYPE["death"], "cause_concept_id": 0})  # fmt: skip
    elif res.get("deceasedBoolean") is True:
        out.rows[0]["flags"].append(["death_without_date", "deceasedBoolean true without a date: no death row"])


def map_encounter(res: dict[str, Any], key: str | None, vocab: Vocabulary, out: Out) -> None:
    pid = person_of(res, key)
    start, pflag = need_date(res, "period")
    end = fhirdates.period_end(res, "period") or start
    cls = res.get("class") or {}
    code = cls.get("code") if isinstance(cls, dict) else None
    concept = VISIT.get(code or "", 0)
    care_site = ref_id(res.get("serviceProvider"), "Organization")
    out.add("visit_occurrence", {
        "visit_occurrence_id": omop_id("Encounter", res["id"]), "person_id": pid, "visit_concept_id": concept,
        "visit_start_date": start.date, "visit_start_datetime": start.datetime, "visit_end_date": end.date,
        "visit_end_datetime": end.datetime, "visit_type_concept_id": TYPE["visit"],
        "provider_id": provider_of(res, "participant"),
        "care_site_id": omop_id("Organization", care_site) if care_site else None, "visit_source_value": code,
        "visit_source_concept_id": 0}, pflag,
        None if concept else ("unmapped_code", f"encounter class {code!r} has no visit concept"))  # fmt: skip


def map_condition(res: dict[str, Any], key: str | None, vocab: Vocabulary, out: Out) -> None:
    pid = person_of(res, key)
    d, pflag = need_date(res, "onsetDateTime", "onsetPeriod", "recordedDate", "assertedDate")
    end = fhirdates.first(res, "abatementDateTime", "abatementPeriod")
    c = vocab.codeable(res.get("code"))
    table = route(c, "condition_occurrence")
    row = event_row(table, omop_id("Condition", res["id"]), pid, c, d, visit=visit_of(res),
                    provider=provider_of(res, "asserter", "recorder"), end=end)  # fmt: skip
    out.add(table, row, pflag, concept_flag(c, "Condition"))


def map_observation(res: dict[str, Any], key: str | None, vocab: Vocabulary, out: Out) -> None:
    pid = person_of(res, key)
    d, pflag = need_date(res, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")
    visit, provider = visit_of(res), provider_of(res, "performer")
    cats = {c.get("code") for cc in res.get("category") or [] for c in (cc.get("coding") or [])}
    default = "measurement" if cats & {"laboratory", "vital-signs"} else "observation"
    c = vocab.codeable(res.get("code"))
    comps = [x for x in res.get("component") or [] if isinstance(x, dict)]
    has_value = any(k in res for k in VALUE_KEYS) or "dataAbsentReason" in res or not comps
    if has_value:
        table = route(c, default)
        rec = out.add(table, event_row(table, omop_id("Observation", res["id"]), pid, c, d, visit=visit,
                                       provider=provider), pflag, concept_flag(c, "Observation"))  # fmt: skip
        apply_value(rec, res, c, vocab)
        _ref_range(rec, res)
    for i, comp in enumerate(comps):
        cc = vocab.codeable(comp.get("code"))
        table = route(cc, default)
        rec = out.add(
            table,
            event_row(table, omop_id("Observation", res["id"], i), pid, cc, d, visit=visit, provider=provider),
            pflag,
            concept_flag(cc, f"Observation.component[{i}]"),
        )
        apply_value(rec, comp, cc, vocab)
        _ref_range(rec, comp)


def _ref_range(rec: dict[str, Any], holder: dict[str, Any]) -> None:
    if rec["table"] != "measurement":
        return
    rr = (holder.get("referenceRange") or [None])[0]
    if isinstance(rr, dict):
        rec["row"].setdefault("range_low", _num((rr.get("low") or {}).get("value")))
        rec["row"].setdefault("range_high", _num((rr.get("high") or {}).get("value")))


def _medication_concept(res: dict[str, Any], vocab: Vocabulary) -> Concept:
    if "medicationCodeableConcept" in res:
        return vocab.codeable(res["medicationCodeableConcept"])
    if "vaccineCode" in res:
        return vocab.codeable(res["vaccineCode"])
    ref = (res.get("medicationReference") or {}).get("reference")
    if isinstance(ref, str) and ref.startswith("#"):  # contained Medication
        for cont in res.get("contained") or []:
            if isinstance(cont, dict) and cont.get("id") == ref[1:]:
                return vocab.codeable(cont.get("code"))
    return Concept(0, 0, None, ref[:50] if isinstance(ref, str) else None, None)


DRUG_TYPE = {"MedicationRequest": 32838, "MedicationStatement": 32865, "MedicationAdministration": 32818,
             "Immunization": 32869}  # fmt: skip
DRUG_DATES = {
    "MedicationRequest": ("authoredOn", "dispenseRequest"),
    "MedicationStatement": ("effectiveDateTime", "effectivePeriod", "dateAsserted"),
    "MedicationAdministration": ("effectiveDateTime", "effectivePeriod"),
    "Immunization": ("occurrenceDateTime", "recorded"),
}


def map_drug(res: dict[str, Any], key: str | None, vocab: Vocabulary, out: Out) -> None:
    rtype = res["resourceType"]
    pid = person_of(res, key)
    d, pflag = need_date(res, *DRUG_DATES[rtype])
    end = fhirdates.period_end(res, "effectivePeriod")
    c = _medication_concept(res, vocab)
    row = event_row("drug_exposure", omop_id(rtype, res["id"]), pid, c, d, visit=visit_of(res),
                    provider=provider_of(res, "requester", "performer"), end=end)  # fmt: skip
    if rtype == "MedicationRequest":
        row["drug_type_concept_id"] = TYPE["drug"]
        disp = res.get("dispenseRequest") or {}
        row["quantity"] = _num((disp.get("quantity") or {}).get("value"))
        days = _num((disp.get("expectedSupplyDuration") or {}).get("value"))
        row["days_supply"] = int(days) if days is not None else None
        row["refills"] = disp.get("numberOfRepeatsAllowed")
    else:
        row["drug_type_concept_id"] = DRUG_TYPE[rtype]
    if rtype == "Immunization":
        lot = res.get("lotNumber")
        row["lot_number"] = str(lot)[:50] if lot else None
        q = _num((res.get("doseQuantity") or {}).get("value"))
        row["quantity"] = q
    out.add("drug_exposure", row, pflag, concept_flag(c, rtype))


def map_procedure(res: dict[str, Any], key: str | None, vocab: Vocabulary, out: Out) -> None:
    pid = person_of(res, key)
    d, pflag = need_date(res, "performedDateTime", "performedPeriod", "performedString")
    end = fhirdates.period_end(res, "performedPeriod")
    c = vocab.codeable(res.get("code"))
    table = route(c, "procedure_occurrence")
    row = event_row(table, omop_id("Procedure", res["id"]), pid, c, d, visit=visit_of(res),
                    provider=provider_of(res, "performer"), end=end)  # fmt: skip
    out.add(table, row, pflag, concept_flag(c, "Procedure"))


def map_allergy(res: dict[str, Any], key: str | None, vocab: Vocabulary, out: Out) -> None:
    pid = person_of(res, key)
    d, pflag = need_date(res, "onsetDateTime", "onsetPeriod", "recordedDate", "lastOccurrence")
    c = vocab.codeable(res.get("code"))
    row = event_row("observation", omop_id("AllergyIntolerance", res["id"]), pid, c, d, visit=visit_of(res),
                    provider=provider_of(res, "recorder", "asserter"))  # fmt: skip
    crit = res.get("criticality")
    if crit:
        row["qualifier_source_value"] = str(crit)[:50]
    out.add("observation", row, pflag, concept_flag(c, "AllergyIntolerance"))


def map_imaging_study(res: dict[str, Any], key: str | None, vocab: Vocabulary, out: Out) -> None:
    pid = person_of(res, key)
    d, pflag = need_date(res, "started")
    study_uid = next((str(i.get("value", ""))[8:] for i in res.get("identifier") or []
                      if str(i.get("value", "")).startswith("urn:oid:")), None)  # fmt: skip
    proc_id = omop_id("DicomStudy", study_uid) if study_uid else omop_id("ImagingStudy", res["id"])
    codes = res.get("procedureCode") or []
    c = vocab.codeable(codes[0]) if codes else Concept(0, 0, None, "imaging-study", None)
    visit = visit_of(res)
    proc = event_row("procedure_occurrence", proc_id, pid, c, d, visit=visit, provider=None)
    out.add("procedure_occurrence", proc, pflag, concept_flag(c, "ImagingStudy"), shared=study_uid is not None)
    for s in res.get("series") or []:
        if not isinstance(s, dict) or not s.get("uid"):
            continue
        sd = fhirdates.parse(s.get("started")) or d
        mod = (s.get("modality") or {}).get("code")
        site = vocab.code((s.get("bodySite") or {}).get("system"), (s.get("bodySite") or {}).get("code"))
        out.add(
            "image_occurrence",
            {
                "image_occurrence_id": omop_id("DicomSeries", s["uid"]),
                "person_id": pid,
                "procedure_occurrence_id": proc_id,
                "visit_occurrence_id": visit,
                "anatomic_site_concept_id": site.concept_id,
                "image_occurrence_date": sd.date,
                "image_occurrence_datetime": sd.datetime,
                "image_study_uid": study_uid,
                "image_series_uid": s["uid"],
                "modality_concept_id": 0,
                "modality_source_value": mod,
                "anatomic_site_source_value": site.source_value,
            },
            shared=True,
        )


def map_practitioner(res: dict[str, Any], key: str | None, vocab: Vocabulary, out: Out) -> None:
    out.add("provider", {"provider_id": omop_id("Practitioner", res["id"]), "gender_concept_id":
                         GENDER.get(res.get("gender"), 0), "provider_source_value": res["id"],
                         "gender_source_value": res.get("gender"), "specialty_concept_id": 0})  # fmt: skip


def map_organization(res: dict[str, Any], key: str | None, vocab: Vocabulary, out: Out) -> None:
    name = res.get("name")
    out.add("care_site", {"care_site_id": omop_id("Organization", res["id"]),
                          "care_site_name": str(name)[:255] if name else None, "place_of_service_concept_id": 0,
                          "care_site_source_value": res["id"]})  # fmt: skip


MAPPERS: dict[str, Callable[[dict[str, Any], str | None, Vocabulary, Out], None]] = {
    "Patient": map_patient,
    "Encounter": map_encounter,
    "Condition": map_condition,
    "Observation": map_observation,
    "MedicationRequest": map_drug,
    "MedicationStatement": map_drug,
    "MedicationAdministration": map_drug,
    "Immunization": map_drug,
    "Procedure": map_procedure,
    "AllergyIntolerance": map_allergy,
    "ImagingStudy": map_imaging_study,
    "Practitioner": map_practitioner,
    "Organization": map_organization,
}


def map_fhir(src: dict[str, Any], resource: Any, vocab: Vocabulary) -> dict[str, Any]:
    """One source event -> {"src", "status", "reason", "rows"}; status mapped | deleted | retracted | skipped |
    deadletter."""
    if src.get("op") == "delete":
        return {"src": src, "status": "deleted", "reason": "delete event", "rows": []}
    if not isinstance(resource, dict) or not resource.get("id") or not resource.get("resourceType"):
        return {
            "src": src,
            "status": "deadletter",
            "check": "invalid_resource",
            "reason": "not a FHIR resource with resourceType and id",
            "rows": [],
        }
    rtype = resource["resourceType"]
    mapper = MAPPERS.get(rtype)
    if mapper is None:
        return {"src": src, "status": "skipped", "reason": f"{rtype} is not mapped to the OMOP CDM", "rows": []}
    status = status_of(resource)
    if status == "entered-in-error":
        return {"src": src, "status": "deleted", "reason": "entered-in-error", "rows": []}
    if status in RETRACT_STATUSES:
        return {"src": src, "status": "retracted", "reason": f"status {status}: did not happen", "rows": []}
    out = Out()
    try:
        mapper(resource, src.get("person_key"), vocab, out)
    except MappingError as err:
        return {"src": src, "status": "deadletter", "check": err.check, "reason": err.reason, "rows": []}
    return {"src": src, "status": "mapped", "reason": None, "rows": out.rows}


def map_dicom(src: dict[str, Any], value: Any, vocab: Vocabulary) -> dict[str, Any]:
    """A de-identified DICOM instance event -> its series' image_occurrence and the study's procedure row."""
    if not isinstance(value, dict) or not value.get("series_uid") or not value.get("study_uid"):
        return {
            "src": src,
            "status": "deadletter",
            "check": "invalid_resource",
            "reason": "dicom event without study_uid/series_uid",
            "rows": [],
        }
    person = value.get("person") or src.get("person_key")
    if not person:
        return {
            "src": src,
            "status": "deadletter",
            "check": "no_person",
            "reason": "dicom event without person",
            "rows": [],
        }
    d = fhirdates.parse(value.get("occurred_at"))
    if d is None:
        return {
            "src": src,
            "status": "deadletter",
            "check": "no_date",
            "reason": "dicom event without occurred_at",
            "rows": [],
        }
    pid = person_id(person)
    out = Out()
    proc_id = omop_id("DicomStudy", value["study_uid"])
    mod = value.get("modality")
    proc = event_row("procedure_occurrence", proc_id, pid, Concept(0, 0, None, f"DICOM:{mod or '?'}", None), d,
                     visit=None, provider=None)  # fmt: skip
    out.add("procedure_occurrence", proc, ("unmapped_code", f"imaging procedure for modality {mod!r}"), shared=True)
    acq = value.get("acquisition") or {}
    meta = value.get("metadata") or {}
    body = (meta.get("00180015") or {}).get("Value") if isinstance(meta, dict) else None
    out.add(
        "image_occurrence",
        {
            "image_occurrence_id": omop_id("DicomSeries", value["series_uid"]),
            "person_id": pid,
            "procedure_occurrence_id": proc_id,
            "anatomic_site_concept_id": 0,
            "wadors_uri": value.get("uri"),
            "image_occurrence_date": d.date,
            "image_occurrence_datetime": d.datetime,
            "image_study_uid": value["study_uid"],
            "image_series_uid": value["series_uid"],
            "modality_concept_id": 0,
            "modality_source_value": mod,
            "anatomic_site_source_value": str(body[0])[:50] if body else None,
            "manufacturer": acq.get("manufacturer"),
            "manufacturer_model_name": acq.get("model"),
            "acquisition": orjson.dumps(acq, default=str).decode(),
            "deid_method": value.get("deid_method"),
        },
        shared=True,
    )
    return {"src": src, "status": "mapped", "reason": None, "rows": out.rows}
