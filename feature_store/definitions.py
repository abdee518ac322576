"""Declarative feature definitions: every feature with its governance metadata, the views that group them and the
prediction tasks (one Feast feature service each). No Feast import here: the CLI lists and describes features
without paying Feast's start-up cost, and `repo.py` turns these specs into Feast objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from feature_store.concepts import (
    CONDITIONS,
    GENDER,
    LABS,
    MEDICATION_CLASSES,
    VISIT_EMERGENCY,
    VISIT_INPATIENT,
    VITALS,
)

Dtype = Literal["float", "int", "bool", "string"]
Role = Literal["input-allowed", "evaluation-only", "prohibited"]
OWNER = "careloop-feature-store"
ROLES: tuple[Role, ...] = ("input-allowed", "evaluation-only", "prohibited")


@dataclass(frozen=True)
class FeatureSpec:
    """One feature and its governance metadata (stored as Feast field tags)."""

    name: str
    view: str
    dtype: Dtype
    description: str
    unit: str = ""
    source_concepts: tuple[int, ...] = ()
    source_tables: tuple[str, ...] = ()
    phi_class: str = "derived-clinical"  # derived-clinical | quasi-identifier | pseudonymous-identifier | sensitive
    role: Role = "input-allowed"
    proxy_risk: str = "none"  # none | utilization | cost | socioeconomic
    freshness_target: str = "PT5M"  # ISO-8601 duration from event to online value
    used_by: tuple[str, ...] = ()

    def tags(self) -> dict[str, str]:
        return {
            "description": self.description,
            "unit": self.unit,
            "source_concepts": ",".join(str(c) for c in self.source_concepts),
            "source_tables": ",".join(self.source_tables),
            "owner": OWNER,
            "phi_class": self.phi_class,
            "sensitive_role": self.role,
            "proxy_risk": self.proxy_risk,
            "freshness_target": self.freshness_target,
            "used_by": ",".join(self.used_by),
        }


@dataclass(frozen=True)
class ViewSpec:
    name: str
    description: str
    ttl_days: int
    source_tables: tuple[str, ...]
    features: tuple[FeatureSpec, ...] = ()


@dataclass(frozen=True)
class Task:
    """A prediction task: its feature service and the sensitive attributes it is explicitly allowed to use."""

    name: str
    description: str
    features: tuple[str, ...]
    allow_sensitive: frozenset[str] = field(default_factory=frozenset)


# ---------------------------------------------------------------------------------------------------------------
def _demographics() -> tuple[FeatureSpec, ...]:
    t = ("person",)
    return (
        FeatureSpec(
            "age_years",
            "demographics",
            "float",
            "Age in years at the feature's event time",
            "a",
            source_tables=t,
            phi_class="quasi-identifier",
        ),
        FeatureSpec(
            "sex",
            "demographics",
            "string",
            "Sex from gender_concept_id (M, F or U)",
            source_concepts=tuple(GENDER),
            source_tables=t,
        ),
        FeatureSpec(
            "race",
            "demographics",
            "string",
            "Race concept name (US Core race via OMOP race_concept_id)",
            source_tables=t,
            phi_class="sensitive",
            role="evaluation-only",
            proxy_risk="socioeconomic",
        ),
        FeatureSpec(
            "ethnicity",
            "demographics",
            "string",
            "Ethnicity concept name (OMOP ethnicity_concept_id)",
            source_tables=t,
            phi_class="sensitive",
            role="evaluation-only",
            proxy_risk="socioeconomic",
        ),
        FeatureSpec(
            "payer_type",
            "demographics",
            "string",
            "Payer concept of the plan period covering the event time (insurance-like)",
            source_tables=("payer_plan_period",),
            phi_class="sensitive",
            role="evaluation-only",
            proxy_risk="cost",
        ),
        FeatureSpec(
            "person_source_value",
            "demographics",
            "string",
            "Pseudonymous person id from the gateway (join key to other careloop stores)",
            source_tables=t,
            phi_class="pseudonymous-identifier",
            role="prohibited",
        ),
    )


VITAL_WINDOWS = (7, 30)
VITAL_STATS = ("mean", "min", "max")


def _vitals() -> tuple[FeatureSpec, ...]:
    out: list[FeatureSpec] = []
    for m in VITALS:
        c, t = m.concepts, ("measurement",)
        out.append(
            FeatureSpec(
                f"{m.key}_latest",
                "vitals",
                "float",
                f"{m.label}: latest value within 365 days",
                m.unit,
                c,
                t,
                freshness_target="PT2S",
            )
        )
        for w in VITAL_WINDOWS:
            for s in VITAL_STATS:
                out.append(
                    FeatureSpec(
                        f"{m.key}_{s}_{w}d",
                        "vitals",
                        "float",
                        f"{m.label}: {s} over {w} days",
                        m.unit,
                        c,
                        t,
                        freshness_target="PT2S",
                    )
                )
    return tuple(out)


def _labs() -> tuple[FeatureSpec, ...]:
    out: list[FeatureSpec] = []
    for m in LABS:
        c, t = m.concepts, ("measurement",)
        out.append(
            FeatureSpec(
                f"{m.key}_latest",
                "labs",
                "float",
                f"{m.label}: latest value within 365 days, in {m.unit}",
                m.unit,
                c,
                t,
            )
        )
        out.append(
            FeatureSpec(
                f"{m.key}_trend_365d",
                "labs",
                "float",
                f"{m.label}: least-squares slope over 365 days",
                f"{m.unit}/a",
                c,
                t,
            )
        )
        out.append(FeatureSpec(f"{m.key}_count_365d", "labs", "int", f"{m.label}: results in 365 days", "1", c, t))
    return tuple(out)


def _utilization() -> tuple[FeatureSpec, ...]:
    t, p = ("visit_occurrence",), "utilization"
    return (
        FeatureSpec(
            "visits_30d", "utilization", "int", "Visits started in the last 30 days", "1", source_tables=t, proxy_risk=p
        ),
        FeatureSpec(
            "visits_365d",
            "utilization",
            "int",
            "Visits started in the last 365 days",
            "1",
            source_tables=t,
            proxy_risk=p,
        ),
        FeatureSpec(
            "ed_visits_30d",
            "utilization",
            "int",
            "Emergency visits in the last 30 days",
            "1",
            VISIT_EMERGENCY,
            t,
            proxy_risk=p,
        ),
        FeatureSpec(
            "ed_visits_365d",
            "utilization",
            "int",
            "Emergency visits in the last 365 days",
            "1",
            VISIT_EMERGENCY,
            t,
            proxy_risk=p,
        ),
        FeatureSpec(
            "inpatient_days_30d",
            "utilization",
            "int",
            "Inpatient days in the last 30 days",
            "d",
            VISIT_INPATIENT,
            t,
            proxy_risk=p,
        ),
        FeatureSpec(
            "inpatient_days_365d",
            "utilization",
            "int",
            "Inpatient days in the last 365 days",
            "d",
            VISIT_INPATIENT,
            t,
            proxy_risk=p,
        ),
    )


def _conditions() -> tuple[FeatureSpec, ...]:
    return tuple(
        FeatureSpec(
            f"hx_{s.key}",
            "conditions",
            "bool",
            f"History of {s.label} recorded at or before event time",
            source_concepts=s.concepts,
            source_tables=("condition_occurrence",),
        )
        for s in CONDITIONS
    )


def _medications() -> tuple[FeatureSpec, ...]:
    t = ("drug_exposure",)
    out = [
        FeatureSpec(
            f"med_{s.key}",
            "medications",
            "bool",
            f"Active exposure to {s.label} at event time",
            source_concepts=s.concepts,
            source_tables=t,
        )
        for s in MEDICATION_CLASSES
    ]
    out.append(
        FeatureSpec(
            "active_drug_count", "medications", "int", "Distinct drugs with an active exposure", "1", source_tables=t
        )
    )
    return tuple(out)


def _imaging() -> tuple[FeatureSpec, ...]:
    t = ("image_occurrence",)
    return (
        FeatureSpec(
            "imaging_studies_365d",
            "imaging",
            "int",
            "Imaging studies in the last 365 days",
            "1",
            source_tables=t,
            proxy_risk="utilization",
        ),
        FeatureSpec("last_modality", "imaging", "string", "Modality of the latest study (DICOM code)", source_tables=t),
        FeatureSpec(
            "last_scanner_manufacturer",
            "imaging",
            "string",
            "Scanner manufacturer of the latest study (acquisition shift attribute)",
            source_tables=t,
            role="evaluation-only",
        ),
        FeatureSpec(
            "last_scanner_model",
            "imaging",
            "string",
            "Scanner model of the latest study (acquisition shift attribute)",
            source_tables=t,
            role="evaluation-only",
        ),
    )


def _with_used_by(views: tuple[ViewSpec, ...], tasks: tuple[Task, ...]) -> tuple[ViewSpec, ...]:
    out = []
    for v in views:
        feats = []
        for f in v.features:
            used = tuple(t.name for t in tasks if f.name in t.features)
            feats.append(FeatureSpec(**{**f.__dict__, "used_by": used}))
        out.append(ViewSpec(v.name, v.description, v.ttl_days, v.source_tables, tuple(feats)))
    return tuple(out)


_BASE_VIEWS: tuple[ViewSpec, ...] = (
    ViewSpec(
        "demographics", "Age, sex and sensitive attributes", 3650, ("person", "payer_plan_period"), _demographics()
    ),
    ViewSpec("vitals", "Vital signs: latest and 7/30-day mean, min, max", 365, ("measurement",), _vitals()),
    ViewSpec(
        "labs", "Laboratory results in standard units: latest, 365-day trend and count", 365, ("measurement",), _labs()
    ),
    ViewSpec("utilization", "Encounters, ED visits and inpatient days", 365, ("visit_occurrence",), _utilization()),
    ViewSpec("conditions", "Condition history flags", 3650, ("condition_occurrence",), _conditions()),
    ViewSpec("medications", "Active medication classes", 365, ("drug_exposure",), _medications()),
    ViewSpec("imaging", "Imaging utilization and acquisition attributes", 365, ("image_occurrence",), _imaging()),
)

_T2D_VITALS = ("bmi", "sbp", "dbp", "heart_rate")
TASKS: tuple[Task, ...] = (
    Task(
        "t2d-365",
        "Type 2 diabetes onset within 365 days of the index time",
        features=(
            "age_years",
            "sex",
            *(f"{k}_{s}" for k in _T2D_VITALS for s in ("latest", "mean_30d", "min_30d", "max_30d")),
            *(
                f"{k}_{s}"
                for k in ("hba1c", "glucose", "cholesterol_total", "ldl", "hdl", "triglycerides", "creatinine")
                for s in ("latest", "trend_365d", "count_365d")
            ),
            "visits_365d",
            "ed_visits_365d",
            "inpatient_days_365d",
            "hx_hypertension",
            "hx_hyperlipidemia",
            "hx_prediabetes",
            "hx_obesity",
            "hx_cad",
            "med_statin",
            "med_ace_inhibitor",
            "med_arb",
            "med_thiazide",
            "med_beta_blocker",
            "active_drug_count",
        ),
    ),
    Task(
        "readmission-30",
        "Unplanned readmission within 30 days of discharge",
        features=(
            "age_years",
            "sex",
            *(f"{k}_latest" for k in ("heart_rate", "sbp", "dbp", "resp_rate", "temperature", "spo2")),
            "creatinine_latest",
            "egfr_latest",
            "visits_30d",
            "visits_365d",
            "ed_visits_30d",
            "ed_visits_365d",
            "inpatient_days_30d",
            "inpatient_days_365d",
            *(f"hx_{s.key}" for s in CONDITIONS),
            "active_drug_count",
            "imaging_studies_365d",
        ),
    ),
)
DEFAULT_TASK = "t2d-365"

VIEWS: tuple[ViewSpec, ...] = _with_used_by(_BASE_VIEWS, TASKS)
FEATURES: dict[str, FeatureSpec] = {f.name: f for v in VIEWS for f in v.features}
VIEW_BY_NAME: dict[str, ViewSpec] = {v.name: v for v in VIEWS}
TASK_BY_NAME: dict[str, Task] = {t.name: t for t in TASKS}


def task(name: str) -> Task:
    from feature_store.errors import FeatureStoreError

    if name not in TASK_BY_NAME:
        raise FeatureStoreError(f"unknown prediction task {name!r}; known: {', '.join(TASK_BY_NAME)}")
    return TASK_BY_NAME[name]
