"""The OMOP concept sets every feature is derived from — one declarative module, reviewed like a data dictionary.

Concept ids are OMOP standard concepts (LOINC measurements, SNOMED conditions, RxNorm ingredients, Visit, Gender,
Race, Ethnicity). Measurement and condition ids were checked against the Eunomia Synthea27Nj vocabulary
(`../shared/data/omop/eunomia_synthea27nj/CONCEPT.csv`). Condition sets are expanded through CONCEPT_ANCESTOR when
the lake's vocabulary has it (a full Athena export); medication classes additionally match the ingredient name
in the drug concept's name, because vocabulary subsets such as Eunomia ship neither CONCEPT_ANCESTOR nor
`RxNorm has ing` relationships for their drugs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --- UCUM unit concepts ------------------------------------------------------------------------------------------
UNIT_PER_MIN = 8541
UNIT_MMHG = 8876
UNIT_KG_M2 = 9531
UNIT_CEL = 586323
UNIT_DEGF = 9289
UNIT_PERCENT = 8554
UNIT_MG_DL = 8840
UNIT_MMOL_L = 8753
UNIT_MMOL_MOL = 9579
UNIT_UMOL_L = 8749
UNIT_ML_MIN_173 = 8795  # mL/min/{1.73_m2}


@dataclass(frozen=True)
class UnitRule:
    """`standard = value * factor + offset` for rows recorded in this unit (concept id or UCUM source string)."""

    unit_concept_id: int
    unit_source: str
    factor: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class Measure:
    """A measured quantity: the LOINC concepts that record it and how to bring every accepted unit to `unit`."""

    key: str
    label: str
    concepts: tuple[int, ...]
    unit: str
    units: tuple[UnitRule, ...]
    plausible: tuple[float, float]  # values outside (after conversion) are not used: a typo must not become a mean


def _std(concept: int, ucum: str) -> UnitRule:
    return UnitRule(concept, ucum)


VITALS: tuple[Measure, ...] = (
    Measure("heart_rate", "Heart rate", (3027018,), "/min", (_std(UNIT_PER_MIN, "/min"),), (10, 350)),
    Measure("sbp", "Systolic blood pressure", (3004249,), "mm[Hg]", (_std(UNIT_MMHG, "mm[Hg]"),), (40, 300)),
    Measure("dbp", "Diastolic blood pressure", (3012888,), "mm[Hg]", (_std(UNIT_MMHG, "mm[Hg]"),), (10, 200)),
    Measure("bmi", "Body mass index", (3038553,), "kg/m2", (_std(UNIT_KG_M2, "kg/m2"),), (5, 150)),
    Measure(
        "temperature",
        "Body temperature",
        (3020891,),
        "Cel",
        (_std(UNIT_CEL, "Cel"), UnitRule(UNIT_DEGF, "[degF]", 5 / 9, -32 * 5 / 9)),
        (25, 46),
    ),
    Measure("resp_rate", "Respiratory rate", (3024171,), "/min", (_std(UNIT_PER_MIN, "/min"),), (2, 120)),
    Measure("spo2", "Oxygen saturation", (40762499, 3016502), "%", (_std(UNIT_PERCENT, "%"),), (30, 100)),
)

LABS: tuple[Measure, ...] = (
    Measure(
        "hba1c",
        "Hemoglobin A1c",
        (3004410,),
        "%",
        (_std(UNIT_PERCENT, "%"), UnitRule(UNIT_MMOL_MOL, "mmol/mol", 0.09148, 2.152)),
        (2, 25),
    ),
    Measure(
        "glucose",
        "Glucose",
        (3004501, 3000483),
        "mg/dL",
        (_std(UNIT_MG_DL, "mg/dL"), UnitRule(UNIT_MMOL_L, "mmol/L", 18.016)),
        (10, 2000),
    ),
    Measure(
        "creatinine",
        "Creatinine",
        (3016723, 3051825),
        "mg/dL",
        (_std(UNIT_MG_DL, "mg/dL"), UnitRule(UNIT_UMOL_L, "umol/L", 1 / 88.42)),
        (0.05, 30),
    ),
    Measure(
        "egfr",
        "eGFR (creatinine-based)",
        (3030354, 3049187, 3053283, 46236952),
        "mL/min/{1.73_m2}",
        (_std(UNIT_ML_MIN_173, "mL/min/{1.73_m2}"),),
        (1, 250),
    ),
    Measure(
        "cholesterol_total",
        "Total cholesterol",
        (3027114,),
        "mg/dL",
        (_std(UNIT_MG_DL, "mg/dL"), UnitRule(UNIT_MMOL_L, "mmol/L", 38.67)),
        (20, 1500),
    ),
    Measure(
        "ldl",
        "LDL cholesterol",
        (3009966, 3028437, 3028288),
        "mg/dL",
        (_std(UNIT_MG_DL, "mg/dL"), UnitRule(UNIT_MMOL_L, "mmol/L", 38.67)),
        (5, 1000),
    ),
    Measure(
        "hdl",
        "HDL cholesterol",
        (3007070,),
        "mg/dL",
        (_std(UNIT_MG_DL, "mg/dL"), UnitRule(UNIT_MMOL_L, "mmol/L", 38.67)),
        (5, 300),
    ),
    Measure(
        "triglycerides",
        "Triglycerides",
        (3022192,),
        "mg/dL",
        (_std(UNIT_MG_DL, "mg/dL"), UnitRule(UNIT_MMOL_L, "mmol/L", 88.57)),
        (10, 10000),
    ),
)


@dataclass(frozen=True)
class ConceptSet:
    key: str
    label: str
    concepts: tuple[int, ...]
    name_patterns: tuple[str, ...] = field(default_factory=tuple)  # lower-case substrings of concept_name


CONDITIONS: tuple[ConceptSet, ...] = (
    ConceptSet("hypertension", "Hypertension", (320128, 316866)),
    ConceptSet("hyperlipidemia", "Hyperlipidemia / hypertriglyceridemia", (432867, 4120314, 4159131)),
    ConceptSet("prediabetes", "Prediabetes", (37018196, 40316773)),
    ConceptSet("obesity", "Obesity", (433736, 4060985, 4256640)),
    ConceptSet("t2d", "Type 2 diabetes mellitus", (201826, 192279, 443238)),
    ConceptSet("ckd", "Chronic kidney disease", (46271022, 443614, 443601, 443597, 443612, 443611)),
    ConceptSet("cad", "Coronary arteriosclerosis / ischemic heart disease", (317576, 4185932)),
    ConceptSet("anemia", "Anemia", (439777,)),
)

MEDICATION_CLASSES: tuple[ConceptSet, ...] = (
    ConceptSet(
        "statin",
        "HMG-CoA reductase inhibitors",
        (1539403, 1545958, 1510813, 1551860, 1592085),
        ("simvastatin", "atorvastatin", "rosuvastatin", "pravastatin", "lovastatin"),
    ),
    ConceptSet("ace_inhibitor", "ACE inhibitors", (1308216, 1341927, 1334456), ("lisinopril", "enalapril", "ramipril")),
    ConceptSet("arb", "Angiotensin receptor blockers", (1367500, 1308842), ("losartan", "valsartan")),
    ConceptSet("thiazide", "Thiazide diuretics", (974166, 1395058), ("hydrochlorothiazide", "chlorthalidone")),
    ConceptSet("ccb", "Calcium channel blockers", (1332418,), ("amlodipine",)),
    ConceptSet("beta_blocker", "Beta blockers", (1307046, 1346823, 1314002), ("metoprolol", "carvedilol", "atenolol")),
    ConceptSet("insulin", "Insulins", (1596977, 1550023), ("insulin",)),
    ConceptSet("metformin", "Biguanides", (1503297,), ("metformin",)),
    ConceptSet("antiplatelet", "Antiplatelet agents", (1322184, 1112807), ("clopidogrel", "aspirin")),
    ConceptSet(
        "opioid",
        "Opioids",
        (1124957, 1154029, 1103314, 1201620, 1102527),
        ("oxycodone", "fentanyl", "tramadol", "codeine", "meperidine", "hydrocodone"),
    ),
)

# --- visits (utilization) ----------------------------------------------------------------------------------------
VISIT_INPATIENT = (9201, 262)  # inpatient, emergency room and inpatient
VISIT_EMERGENCY = (9203, 262)

GENDER = {8507: "M", 8532: "F"}
# OMOP Race concepts (used when the lake's vocabulary subset lacks them, as Eunomia does).
RACE = {
    8527: "White",
    8516: "Black or African American",
    8515: "Asian",
    8557: "Native Hawaiian or Other Pacific Islander",
    8657: "American Indian or Alaska Native",
}
