"""One patient's clinical story as FHIR R4 resources (plus DICOM study specs), then the stream imperfections.

Everything is drawn from the patient's own generators (see model.patient_streams), so patients are independent:
the population is generated one patient at a time and never held in memory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np

from ingestion.simulator import codes as C
from ingestion.simulator.model import PatientTruth, SimulationConfig, _uuid, draw_patient, patient_streams
from ingestion.simulator.shifts import AssayShift, CodingShift, DeviceShift
from ingestion.simulator.sites import (
    CLINICIANS,
    FAMILY,
    GIVEN_F,
    GIVEN_M,
    OPERATORS,
    STREETS,
    SiteProfile,
    site_profile,
)

NO_DELETE = {"Patient", "Encounter", "ImagingStudy", "FamilyMemberHistory"}


@dataclass
class DicomStudy:
    """Everything needed to render one synthetic DICOM instance (rendered lazily: bytes are made when written)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    accession: str
    when: datetime
    patient_name: str
    patient_id: str
    birth_date: date
    sex: str
    institution: str
    manufacturer: str
    model: str
    referring: str
    operator: str
    gain: float
    pixel_seed: int


@dataclass
class Delivery:
    """One message the EHR sends: an upsert of a resource version, a delete, or a DICOM file."""

    delivered_at: datetime
    seq: int
    action: str  # "upsert" | "delete" | "dicom"
    resource_type: str
    logical_id: str
    event_time: datetime
    resource: dict[str, Any] | None = None
    dicom: DicomStudy | None = None
    tags: tuple[str, ...] = ()


@dataclass
class RealismRecord:
    """Ground truth about one stream imperfection (what was late, updated, deleted, ...)."""

    patient_id: str
    kind: str
    resource_type: str
    logical_id: str
    version: str
    event_time: datetime
    delivered_at: datetime
    detail: str = ""


@dataclass
class PatientRecord:
    truth: PatientTruth
    deliveries: list[Delivery]
    realism: list[RealismRecord] = field(default_factory=list)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def month_of(config: SimulationConfig, t: datetime | date) -> int:
    return (t.year - config.start.year) * 12 + t.month - config.start.month


def _dicom_uid(rng: np.random.Generator) -> str:
    return "2.25." + str(int.from_bytes(rng.bytes(16), "big"))


class _Builder:
    """Builds the resources of one patient; `self.out` collects (delivery time, resource or DICOM) in event order."""

    def __init__(self, config: SimulationConfig, truth: PatientTruth, rng: np.random.Generator) -> None:
        self.cfg, self.t, self.rng = config, truth, rng
        self.site_i = ord(truth.site) - ord("A")
        self.profile: SiteProfile = site_profile(self.site_i)
        self.out: list[Delivery] = []
        self.ref = f"Patient/{truth.patient_id}"
        self.end = datetime.combine(config.end, time(), UTC)
        self.onset_condition_id: str | None = None
        female = truth.sex == "female"
        self.given = [str(rng.choice(GIVEN_F if female else GIVEN_M)), str(rng.choice(GIVEN_F if female else GIVEN_M))]
        self.family = str(rng.choice(FAMILY))
        self.height = float(rng.normal(162 if female else 176, 7))
        self.sbp0 = 118 + 0.4 * (truth.age - 50) + (14 if truth.hypertension else 0) + float(rng.normal(0, 9))
        self.ldl0 = float(np.clip(rng.normal(118, 30), 50, 240))
        self.hdl0 = float(np.clip(rng.normal(55 if female else 45, 12), 25, 100))
        self.tg0 = float(np.clip(rng.lognormal(np.log(130), 0.4), 40, 600))
        self.creat0 = float(np.clip(rng.normal(0.85 if female else 1.05, 0.18), 0.4, 2.5))

    # ---- shifts active at an event -------------------------------------------------------------------------------
    def _active(self, t: datetime, kind: type) -> list[Any]:
        m = month_of(self.cfg, t)
        return [s for s in self.cfg.shifts if isinstance(s, kind) and s.applies(self.t.site, m)]

    def cc(self, system: str, code: tuple[str, str], when: datetime) -> dict[str, Any]:
        c, display = code
        for s in self._active(when, CodingShift):
            if s.from_code == c:
                c, display = s.to_code, s.display or display
        return {"coding": [{"system": system, "code": c, "display": display}], "text": display}

    def emit(self, resource: dict[str, Any], event_time: datetime, delivered: datetime) -> dict[str, Any]:
        rid = resource["id"]
        resource["meta"] = {"versionId": "1", "lastUpdated": iso(delivered)}
        self.out.append(
            Delivery(delivered, len(self.out), "upsert", resource["resourceType"], rid, event_time, resource)
        )
        return resource

    def new_id(self) -> str:
        return _uuid(self.rng)

    # ---- resources -----------------------------------------------------------------------------------------------
    def patient(self, when: datetime) -> None:
        t, p, rng = self.t, self.profile, self.rng
        race_disp = dict((c, d) for c, d, _ in C.RACES)[t.race]
        eth_disp = dict((c, d) for c, d, _ in C.ETHNICITIES)[t.ethnicity]
        zip5 = p.zip_prefix + f"{int(rng.integers(100)):02d}"
        res = {
            "resourceType": "Patient",
            "id": t.patient_id,
            "extension": [
                {"url": f"{C.US_CORE}/us-core-race", "extension": [
                    {"url": "ombCategory", "valueCoding": {"system": C.OMB_RACE_ETH, "code": t.race,
                                                           "display": race_disp}},
                    {"url": "text", "valueString": race_disp}]},
                {"url": f"{C.US_CORE}/us-core-ethnicity", "extension": [
                    {"url": "ombCategory", "valueCoding": {"system": C.OMB_RACE_ETH, "code": t.ethnicity,
                                                           "display": eth_disp}},
                    {"url": "text", "valueString": eth_disp}]},
                {"url": f"{C.US_CORE}/us-core-birthsex", "valueCode": "F" if t.sex == "female" else "M"},
            ],
            "identifier": [
                {"use": "usual",
                 "type": {"coding": [{"system": C.V2_0203, "code": "MR", "display": "Medical record number"}]},
                 "system": f"urn:careloop:sim:site-{t.site}:mrn", "value": t.mrn},
                {"type": {"coding": [{"system": C.V2_0203, "code": "SS", "display": "Social Security number"}]},
                 "system": "http://hl7.org/fhir/sid/us-ssn",
                 "value": f"{int(rng.integers(100, 899)):03d}-{int(rng.integers(10, 99))}-"
                          f"{int(rng.integers(1000, 9999))}"},
            ],
            "name": [{"use": "official", "family": self.family, "given": self.given}],
            "telecom": [
                {"system": "phone", "value": f"555-{int(rng.integers(100, 999))}-{int(rng.integers(1000, 9999))}",
                 "use": "home"},
                {"system": "email", "value": f"{self.given[0].lower()}.{self.family.lower()}@example.com"},
            ],
            "gender": t.sex,
            "birthDate": t.birth_date.isoformat(),
            "address": [{"use": "home", "line": [f"{int(rng.integers(1, 9999))} {rng.choice(STREETS)}"],
                         "city": p.city, "state": p.state, "postalCode": zip5, "country": "US"}],
        }  # fmt: skip
        self.emit(res, when, when)

    def encounter(self, cls: str, start: datetime, end: datetime, type_code: tuple[str, str] | None = None) -> str:
        (tcode, cdisp) = C.ENCOUNTER_TYPES[cls]
        eid = self.new_id()
        res = {
            "resourceType": "Encounter",
            "id": eid,
            "status": "finished",
            "class": {"system": C.V3_ACT, "code": cls, "display": cdisp},
            "type": [self.cc(C.SNOMED, type_code or tcode, start)],
            "subject": {"reference": self.ref},
            "participant": [{"individual": {"display": str(self.rng.choice(CLINICIANS))}}],
            "period": {"start": iso(start), "end": iso(end)},
            "serviceProvider": {"display": self.profile.institution},
        }
        self.emit(res, start, end)
        return eid

    def observation(self, enc: str, key: str, value: float, when: datetime, lab: bool) -> None:
        if lab:
            loinc, disp, unit = C.LABS[key]
            for s in self._active(when, AssayShift):
                if s.analyte == key:
                    value = value * s.scale + s.offset
            unit = self.profile.units.get(key, unit)
            for s in self._active(when, AssayShift):
                if s.analyte == key and s.unit:
                    unit = s.unit
            mul, add = C.UNIT_CONVERSIONS[key][unit]
            value = value * mul + add
            digits = 1 if unit in ("%", "mmol/L", "mmol/mol") else 0 if unit in ("mg/dL", "umol/L") else 2
            if key in ("creatinine", "potassium") and unit in ("mg/dL", "mmol/L"):
                digits = 2
            delivered = when + timedelta(minutes=int(self.rng.integers(90, 360)))
        else:
            loinc, disp, unit = C.VITALS[key]
            digits = 1
            delivered = when + timedelta(minutes=int(self.rng.integers(0, 10)))
        cat = "laboratory" if lab else "vital-signs"
        res = {
            "resourceType": "Observation",
            "id": self.new_id(),
            "status": "final",
            "category": [{"coding": [{"system": C.OBS_CATEGORY, "code": cat}]}],
            "code": self.cc(C.LOINC, (loinc, disp), when),
            "subject": {"reference": self.ref},
            "encounter": {"reference": f"Encounter/{enc}"},
            "effectiveDateTime": iso(when),
            "issued": iso(delivered),
            "valueQuantity": {"value": round(float(value), digits), "unit": unit, "system": C.UCUM, "code": unit},
        }
        self.emit(res, when, delivered)

    def condition(self, enc: str, code: tuple[str, str], when: datetime, problem: bool) -> str:
        cid = self.new_id()
        cat = "problem-list-item" if problem else "encounter-diagnosis"
        res = {
            "resourceType": "Condition",
            "id": cid,
            "clinicalStatus": {"coding": [{"system": C.COND_CLINICAL, "code": "active"}]},
            "verificationStatus": {"coding": [{"system": C.COND_VERIFICATION, "code": "confirmed"}]},
            "category": [{"coding": [{"system": C.COND_CATEGORY, "code": cat}]}],
            "code": self.cc(C.SNOMED, code, when),
            "subject": {"reference": self.ref},
            "encounter": {"reference": f"Encounter/{enc}"},
            "onsetDateTime": iso(when),
            "recordedDate": iso(when),
        }
        self.emit(res, when, when + timedelta(minutes=int(self.rng.integers(5, 60))))
        return cid

    def medication(self, enc: str, code: tuple[str, str], when: datetime) -> None:
        res = {
            "resourceType": "MedicationRequest",
            "id": self.new_id(),
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": self.cc(C.RXNORM, code, when),
            "subject": {"reference": self.ref},
            "encounter": {"reference": f"Encounter/{enc}"},
            "authoredOn": iso(when),
            "requester": {"display": str(self.rng.choice(CLINICIANS))},
            "dosageInstruction": [{"text": "Take as directed"}],
        }
        self.emit(res, when, when + timedelta(minutes=int(self.rng.integers(1, 30))))

    def procedure(self, enc: str, code: tuple[str, str], when: datetime) -> None:
        res = {
            "resourceType": "Procedure",
            "id": self.new_id(),
            "status": "completed",
            "code": self.cc(C.SNOMED, code, when),
            "subject": {"reference": self.ref},
            "encounter": {"reference": f"Encounter/{enc}"},
            "performedDateTime": iso(when),
        }
        self.emit(res, when, when + timedelta(minutes=int(self.rng.integers(10, 90))))

    def family_history(self, when: datetime) -> None:
        rel = [("FTH", "father"), ("MTH", "mother"), ("SIB", "sibling")][int(self.rng.integers(3))]
        res = {
            "resourceType": "FamilyMemberHistory",
            "id": self.new_id(),
            "status": "completed",
            "patient": {"reference": self.ref},
            "date": iso(when),
            "relationship": {"coding": [{"system": C.V3_ROLE, "code": rel[0], "display": rel[1]}]},
            "condition": [{"code": self.cc(C.SNOMED, C.T2DM, when)}],
        }
        self.emit(res, when, when + timedelta(minutes=int(self.rng.integers(1, 30))))

    def imaging(self, enc: str, when: datetime) -> None:
        rng, p = self.rng, self.profile
        study, series, sop = _dicom_uid(rng), _dicom_uid(rng), _dicom_uid(rng)
        manufacturer, model, gain = p.manufacturer, p.model, 1.0
        for s in self._active(when, DeviceShift):
            manufacturer, model, gain = s.manufacturer or manufacturer, s.model, s.gain
        accession = f"{self.t.site}{int(rng.integers(10**9, 10**10 - 1))}"
        self.procedure(enc, C.CHEST_XRAY, when)
        res = {
            "resourceType": "ImagingStudy",
            "id": self.new_id(),
            "identifier": [
                {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"},
                {"type": {"coding": [{"system": C.V2_0203, "code": "ACSN"}]}, "value": accession},
            ],
            "status": "available",
            "modality": [{"system": C.DCM, "code": "DX"}],
            "subject": {"reference": self.ref},
            "encounter": {"reference": f"Encounter/{enc}"},
            "started": iso(when),
            "numberOfSeries": 1,
            "numberOfInstances": 1,
            "procedureCode": [self.cc(C.SNOMED, C.CHEST_XRAY, when)],
            "series": [{
                "uid": series, "number": 1, "modality": {"system": C.DCM, "code": "DX"}, "numberOfInstances": 1,
                "instance": [{"uid": sop, "number": 1,
                              "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{C.DX_SOP_CLASS}"}}],
            }],
        }  # fmt: skip
        delivered = when + timedelta(minutes=int(rng.integers(20, 120)))
        self.emit(res, when, delivered)
        spec = DicomStudy(
            study_uid=study, series_uid=series, sop_uid=sop, accession=accession, when=when,
            patient_name=f"{self.family}^{self.given[0]}^{self.given[1]}", patient_id=self.t.mrn,
            birth_date=self.t.birth_date, sex="F" if self.t.sex == "female" else "M", institution=p.institution,
            manufacturer=manufacturer, model=model, referring=str(rng.choice(CLINICIANS)).replace("Dr. ", ""),
            operator=str(rng.choice(OPERATORS)), gain=gain, pixel_seed=int(rng.integers(2**31)),
        )  # fmt: skip
        self.out.append(Delivery(delivered, len(self.out), "dicom", "DICOM", sop, when, dicom=spec))

    # ---- the story -----------------------------------------------------------------------------------------------
    def glycaemia(self, when: datetime) -> tuple[float, float]:
        """True (HbA1c %, fasting glucose mg/dL) at a time: a ramp to the diabetic range for patients with onset."""
        t = self.t
        hba1c, glucose = t.hba1c, t.glucose
        if t.onset and t.onset_date is not None:
            onset = datetime.combine(t.onset_date, time(), UTC)
            index = datetime.combine(t.index_date, time(), UTC)
            span = max((onset - index).total_seconds(), 1.0)
            frac = min(max((when - index).total_seconds() / span, 0.0), 1.0)
            hba1c += frac * max(0.0, 7.1 - t.hba1c)
            glucose += frac * max(0.0, 145 - t.glucose)
        return hba1c, glucose

    def visit(self, cls: str, start: datetime, labs: bool, baseline: bool = False, onset: bool = False) -> None:
        rng, t = self.rng, self.t
        days = int(rng.integers(1, 6)) if cls == "IMP" else 0
        end = start + (timedelta(days=days, hours=int(rng.integers(1, 8))) if days else
                       timedelta(minutes=int(rng.integers(20, 90 if cls == "AMB" else 300))))  # fmt: skip
        enc = self.encounter(cls, start, end, C.ONSET_VISIT if onset else None)
        if baseline:
            self.patient_extras(enc, start)
        for day in range(days + 1):
            when = start + timedelta(days=day, minutes=int(rng.integers(5, 25)))
            weight = (t.bmi + rng.normal(0, 0.4)) * (self.height / 100) ** 2
            vit = {
                "height": self.height + rng.normal(0, 0.3), "weight": weight,
                "bmi": weight / (self.height / 100) ** 2, "sbp": self.sbp0 + rng.normal(0, 7),
                "dbp": 0.55 * self.sbp0 + 10 + rng.normal(0, 5), "hr": rng.normal(74, 9), "rr": rng.normal(15, 2),
                "temp": rng.normal(36.8, 0.3) + (0.8 if cls == "EMER" and rng.random() < 0.2 else 0.0),
                "spo2": min(100.0, rng.normal(97.5, 1.2)),
            }  # fmt: skip
            for key, v in vit.items():
                self.observation(enc, key, float(v), when, lab=False)
            if labs or day > 0:
                self.lab_panel(enc, when + timedelta(minutes=30), full=baseline or onset or day == 0)
        if cls == "EMER" or (cls == "AMB" and rng.random() < 0.15 and not baseline and not onset):
            pool = C.ACUTE_EMERGENCY if cls == "EMER" else C.ACUTE_AMBULATORY
            code = pool[int(rng.integers(len(pool)))]
            self.condition(enc, code, start + timedelta(minutes=30), problem=False)
            drug = (
                C.AMOXICILLIN
                if code[0] in ("10509002", "36971009")
                else (C.IBUPROFEN, C.ACETAMINOPHEN)[int(rng.integers(2))]
            )
            self.medication(enc, drug, start + timedelta(minutes=45))
        if cls in ("EMER", "IMP") and rng.random() < 0.5:
            self.procedure(enc, C.ECG, start + timedelta(minutes=20))
        p_img = {"AMB": 0.02, "EMER": 0.25, "IMP": 0.6}[cls]
        if rng.random() < p_img:
            self.imaging(enc, start + timedelta(minutes=int(rng.integers(30, 180))))
        if onset:
            when = start + timedelta(minutes=40)
            self.onset_condition_id = self.condition(enc, C.T2DM, when, problem=True)
            self.medication(enc, C.METFORMIN, when + timedelta(minutes=5))

    def lab_panel(self, enc: str, when: datetime, full: bool) -> None:
        rng = self.rng
        hba1c, glucose = self.glycaemia(when)
        values = {
            "hba1c": hba1c + rng.normal(0, 0.1), "glucose": glucose + rng.normal(0, 5),
            "cholesterol": self.ldl0 + self.hdl0 + self.tg0 / 5 + rng.normal(0, 6), "hdl": self.hdl0 + rng.normal(0, 3),
            "ldl": self.ldl0 + rng.normal(0, 6), "triglycerides": self.tg0 * rng.lognormal(0, 0.1),
            "creatinine": self.creat0 + rng.normal(0, 0.05), "sodium": rng.normal(140, 2),
            "potassium": rng.normal(4.2, 0.3),
        }  # fmt: skip
        draws = rng.random(len(values))
        for (key, v), u in zip(values.items(), draws, strict=True):
            if full or u < (0.5 if key == "hba1c" else 0.8):
                self.observation(enc, key, float(v), when, lab=True)

    def patient_extras(self, enc: str, when: datetime) -> None:
        t, rng = self.t, self.rng
        if t.family_history:
            self.family_history(when)
        if t.hypertension:
            self.condition(enc, C.HYPERTENSION, when, problem=True)
            self.medication(enc, (C.LISINOPRIL, C.AMLODIPINE, C.HCTZ)[int(rng.integers(3))], when)
        if self.ldl0 > 160 or rng.random() < 0.05:
            self.condition(enc, C.HYPERLIPIDEMIA, when, problem=True)
            self.medication(enc, C.ATORVASTATIN, when)
        if (t.hba1c >= 5.7 or t.glucose >= 100) and rng.random() < 0.5:
            self.condition(enc, C.PREDIABETES, when, problem=True)
        if t.bmi >= 30 and rng.random() < 0.4:
            self.condition(enc, C.OBESITY, when, problem=True)

    def story(self) -> None:
        t, rng = self.t, self.rng
        index = datetime.combine(t.index_date, time(8), UTC) + timedelta(minutes=int(rng.integers(0, 540)))
        self.patient(index - timedelta(minutes=int(rng.integers(2, 30))))
        self.visit("AMB", index, labs=True, baseline=True)
        years = max((self.end - index).total_seconds() / (365.25 * 86400), 0.0)
        rates = {"AMB": float(np.clip(4.2 + 0.05 * (t.age - 50) + 1.5 * t.hypertension, 2, 8)),
                 "EMER": 0.35 + (0.25 if t.age > 70 else 0.0), "IMP": 0.06 + 0.003 * max(t.age - 40, 0)}  # fmt: skip
        visits: list[tuple[datetime, str]] = []
        for cls, rate in rates.items():
            for _ in range(int(rng.poisson(rate * years))):
                when = index + timedelta(seconds=float(rng.uniform(86400, max(years * 365.25 * 86400, 86401))))
                hour = 8 + int(rng.integers(9)) if cls == "AMB" else int(rng.integers(24))
                visits.append((when.replace(hour=hour), cls))
        if t.onset and t.onset_date is not None and t.onset_observed:
            visits.append((datetime.combine(t.onset_date, time(10), UTC), "ONSET"))
        for when, cls in sorted(visits):
            if when >= self.end:
                continue
            if cls == "ONSET":
                self.visit("AMB", when, labs=True, onset=True)
            else:
                self.visit(cls, when, labs=rng.random() < (0.5 if cls == "AMB" else 0.9))


def _realism(cfg: SimulationConfig, b: _Builder, rng: np.random.Generator) -> list[RealismRecord]:
    """Late/out-of-order delivery, updates, entered-in-error, deletes and duplicates; recorded for the truth."""
    r, pid = cfg.realism, b.t.patient_id
    extra: list[Delivery] = []
    notes: list[RealismRecord] = []
    for d in b.out:
        u = rng.random(6)
        if d.action != "upsert" or d.resource_type == "Patient":
            continue
        res = d.resource
        assert res is not None
        if u[0] < r.late:
            d.delivered_at += timedelta(hours=float(rng.uniform(24, 14 * 24)))
            d.tags += ("late",)
        elif u[1] < r.out_of_order:
            d.delivered_at += timedelta(minutes=float(rng.uniform(60, 12 * 60)))
            d.tags += ("out_of_order",)
        res["meta"]["lastUpdated"] = iso(d.delivered_at)
        for tag in d.tags:
            notes.append(RealismRecord(pid, tag, d.resource_type, d.logical_id, "1", d.event_time, d.delivered_at))
        last, version = d.delivered_at, 1
        if u[2] < r.duplicate:
            t = last + timedelta(seconds=float(rng.uniform(1, 120)))
            extra.append(
                Delivery(t, 0, "upsert", d.resource_type, d.logical_id, d.event_time, res, tags=("duplicate",))
            )
            notes.append(RealismRecord(pid, "duplicate", d.resource_type, d.logical_id, "1", d.event_time, t))
        protected = d.logical_id == b.onset_condition_id
        if u[3] < r.update and d.resource_type == "Observation":
            last += timedelta(minutes=float(rng.uniform(60, 3 * 24 * 60)))
            version += 1
            new = copy.deepcopy(res)
            q = new["valueQuantity"]
            before = q["value"]
            digits = len(str(before).split(".")[1]) if "." in str(before) else 0
            q["value"] = round(before * float(rng.choice([0.94, 0.96, 1.04, 1.06])), digits)
            if q["value"] == before:
                q["value"] = round(before + 10**-digits, digits)
            new["status"] = "amended"
            new["meta"] = {"versionId": str(version), "lastUpdated": iso(last)}
            extra.append(
                Delivery(last, 0, "upsert", d.resource_type, d.logical_id, d.event_time, new, tags=("update",))
            )
            notes.append(RealismRecord(pid, "update", d.resource_type, d.logical_id, str(version), d.event_time, last,
                                       f"{before} -> {q['value']}"))  # fmt: skip
            res = new
        if u[4] < r.entered_in_error and d.resource_type in ("Observation", "Condition") and not protected:
            last += timedelta(minutes=float(rng.uniform(30, 2 * 24 * 60)))
            version += 1
            new = copy.deepcopy(res)
            if d.resource_type == "Observation":
                new["status"] = "entered-in-error"
            else:
                new.pop("clinicalStatus", None)
                new["verificationStatus"] = {"coding": [{"system": C.COND_VERIFICATION, "code": "entered-in-error"}]}
            new["meta"] = {"versionId": str(version), "lastUpdated": iso(last)}
            extra.append(Delivery(last, 0, "upsert", d.resource_type, d.logical_id, d.event_time, new,
                                  tags=("entered_in_error",)))  # fmt: skip
            notes.append(RealismRecord(pid, "entered_in_error", d.resource_type, d.logical_id, str(version),
                                       d.event_time, last))  # fmt: skip
        elif u[5] < r.delete and d.resource_type not in NO_DELETE and not protected:
            last += timedelta(minutes=float(rng.uniform(60, 7 * 24 * 60)))
            extra.append(Delivery(last, 0, "delete", d.resource_type, d.logical_id, d.event_time, tags=("delete",)))
            notes.append(RealismRecord(pid, "delete", d.resource_type, d.logical_id, str(version), d.event_time, last))
    b.out.extend(extra)
    return notes


def generate_patient(config: SimulationConfig, index: int) -> PatientRecord:
    """The full record of patient `index`: truth, deliveries sorted by delivery time, and the realism truth."""
    cov, ev, real = patient_streams(config.seed, index)
    truth = draw_patient(config, index, cov)
    b = _Builder(config, truth, ev)
    b.story()
    notes = _realism(config, b, real)
    for i, d in enumerate(b.out):
        d.seq = i
    b.out.sort(key=lambda d: (d.delivered_at, d.seq))
    return PatientRecord(truth, b.out, notes)
