"""The latent type 2 diabetes model: per-patient covariates, the logistic risk and the onset draw.

This module is the fast path (no FHIR): the FHIR generator calls the same `draw_patient`, so the truth written by a
full run and the truth computed here for the same (seed, index) are identical. Coefficients and their sources are in
docs/simulator.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ingestion.simulator.codes import ETHNICITIES, RACES
from ingestion.simulator.shifts import ConceptShift, CovariateShift, PrevalenceShift, Shift

# Logistic risk of T2DM onset within 365 days, on centred/scaled covariates (see docs/simulator.md).
INTERCEPT = -4.3
COEF = {"age": 0.30, "bmi": 0.40, "hba1c": 0.60, "glucose": 0.45, "family_history": 0.65, "hypertension": 0.35}
CENTER = {"age": 50.0, "bmi": 28.0, "hba1c": 5.5, "glucose": 95.0}
SCALE = {"age": 10.0, "bmi": 5.0, "hba1c": 0.4, "glucose": 10.0}


class RealismConfig(BaseModel):
    """Shares (per delivered resource) of the stream imperfections the pipeline must handle."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    late: float = Field(0.02, ge=0, le=1, description="delivered 1-14 days after the event")
    out_of_order: float = Field(0.03, ge=0, le=1, description="delivered 1-12 hours late, after later events")
    update: float = Field(0.03, ge=0, le=1, description="Observations corrected later (new meta.versionId)")
    delete: float = Field(0.005, ge=0, le=1, description="non-Patient resources deleted later")
    entered_in_error: float = Field(0.005, ge=0, le=1, description="Observations/Conditions marked entered-in-error")
    duplicate: float = Field(0.01, ge=0, le=1, description="identical resource delivered twice")


class SimulationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    patients: int = Field(1000, ge=1)
    sites: int = Field(3, ge=1, le=26)
    months: int = Field(24, ge=1, le=240)
    seed: int = Field(0, ge=0)
    start: date = date(2024, 1, 1)
    shifts: tuple[Shift, ...] = ()
    realism: RealismConfig = RealismConfig()

    def month_start(self, month: int) -> date:
        y, m = divmod(self.start.month - 1 + month, 12)
        return date(self.start.year + y, m + 1, 1)

    @property
    def end(self) -> date:
        return self.month_start(self.months)


@dataclass
class PatientTruth:
    """Ground truth for one patient: never part of the event stream."""

    index: int
    patient_id: str
    mrn: str
    site: str
    index_month: int
    index_date: date
    sex: str
    birth_date: date
    age: float
    race: str
    ethnicity: str
    bmi: float
    hba1c: float
    glucose: float
    family_history: int
    hypertension: int
    logit: float
    risk: float
    onset: int
    onset_date: date | None
    onset_observed: int
    shifts: list[int] = field(default_factory=list)

    def row(self) -> dict[str, object]:
        d = asdict(self)
        d["shifts"] = ";".join(str(s) for s in self.shifts)
        return d


def patient_streams(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent generators (covariates, events, stream realism) for one patient: streaming and reproducible."""
    cov, ev, real = np.random.SeedSequence([seed, index]).spawn(3)
    return np.random.default_rng(cov), np.random.default_rng(ev), np.random.default_rng(real)


def _uuid(rng: np.random.Generator) -> str:
    b = bytearray(rng.bytes(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _pick(rng: np.random.Generator, table: list[tuple[str, str, float]]) -> str:
    p = np.array([t[2] for t in table])
    return table[int(rng.choice(len(table), p=p / p.sum()))][0]


def risk_logit(x: dict[str, float], weights: dict[str, float] | None = None) -> float:
    w = weights or {}
    z = INTERCEPT
    for k, c in COEF.items():
        v = x[k] if k not in CENTER else (x[k] - CENTER[k]) / SCALE[k]
        z += c * w.get(k, 1.0) * v
    return z


def draw_patient(config: SimulationConfig, index: int, cov: np.random.Generator | None = None) -> PatientTruth:
    """Draw one patient's site, index date, demographics, risk factors and onset (all from the covariate stream)."""
    if cov is None:
        cov = patient_streams(config.seed, index)[0]
    site_i = int(cov.integers(config.sites))
    site = chr(ord("A") + site_i)
    index_month = int(cov.integers(config.months))
    index_date = config.month_start(index_month) + timedelta(days=int(cov.integers(28)))
    patient_id = _uuid(cov)
    mrn = f"{site}{int(cov.integers(10_000_000, 99_999_999))}"
    sex = "female" if cov.random() < 0.52 else "male"
    race = _pick(cov, RACES)
    ethnicity = _pick(cov, ETHNICITIES)
    # base draws: every draw happens for every patient so shifts never change the stream position
    age0 = float(np.clip(cov.normal(50, 16), 18, 90))
    bmi_noise, glu_noise, a1c_noise = cov.normal(0, 1, 3)
    u_fh, u_htn, u_onset, u_day = cov.random(4)

    applied = [i for i, s in enumerate(config.shifts) if s.applies(site, index_month)]
    cov_shift = [config.shifts[i] for i in applied if isinstance(config.shifts[i], CovariateShift)]
    age = age0 + sum(s.age for s in cov_shift)
    age = round(float(np.clip(age, 18, 95)), 2)
    bmi = 28.8 + 0.04 * (age - 50) + 5.8 * bmi_noise + sum(s.bmi for s in cov_shift)
    bmi = round(float(np.clip(bmi, 16, 65)), 2)
    family_history = int(u_fh < 0.25)
    p_htn = 1 / (1 + math.exp(-(-1.0 + 0.06 * (age - 50) + 0.08 * (bmi - 28))))
    hypertension = int(u_htn < p_htn)
    glucose = 92 + 0.15 * (age - 50) + 0.7 * (bmi - 28) + 3 * family_history + 9 * glu_noise
    glucose = round(float(np.clip(glucose + sum(s.glucose for s in cov_shift), 65, 125)), 1)
    hba1c = 5.35 + 0.006 * (age - 50) + 0.012 * (bmi - 28) + 0.012 * (glucose - 95) + 0.28 * a1c_noise
    hba1c = round(float(np.clip(hba1c + sum(s.hba1c for s in cov_shift), 4.3, 6.4)), 2)

    weights: dict[str, float] = {}
    for i in applied:
        s = config.shifts[i]
        if isinstance(s, ConceptShift):
            for k in COEF:
                weights[k] = weights.get(k, 1.0) * getattr(s, f"{k}_weight")
    x = {"age": age, "bmi": bmi, "hba1c": hba1c, "glucose": glucose, "family_history": family_history,
         "hypertension": hypertension}  # fmt: skip
    z = risk_logit(x, weights)
    risk = 1 / (1 + math.exp(-z))
    for i in applied:
        s = config.shifts[i]
        if isinstance(s, PrevalenceShift):
            risk = min(0.99, risk * s.factor)
    onset = int(u_onset < risk)
    onset_date = index_date + timedelta(days=14 + int(u_day * 351)) if onset else None
    birth_date = index_date - timedelta(days=int(age * 365.25))
    return PatientTruth(
        index=index, patient_id=patient_id, mrn=mrn, site=site, index_month=index_month, index_date=index_date,
        sex=sex, birth_date=birth_date, age=round(age, 2), race=race, ethnicity=ethnicity, bmi=round(bmi, 2),
        hba1c=round(hba1c, 2), glucose=round(glucose, 1), family_history=family_history, hypertension=hypertension,
        logit=round(z, 4), risk=round(risk, 6), onset=onset, onset_date=onset_date,
        onset_observed=int(onset_date is not None and onset_date < config.end), shifts=applied,
    )  # fmt: skip


def draw_population(config: SimulationConfig):
    """Yield PatientTruth for every patient without generating FHIR (fast path for tests and calibration)."""
    for i in range(config.patients):
        yield draw_patient(config, i)
