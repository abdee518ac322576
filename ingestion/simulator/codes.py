"""Code tables: every SNOMED, LOINC, RxNorm and UCUM code here was picked from the Eunomia vocabulary
(`../shared/data/omop/eunomia_synthea27nj/CONCEPT.csv`) so that the OMOP transforms can map them; the only codes
from other systems are structural (US Core race/ethnicity, HL7 v3 encounter class, DICOM modality)."""

from __future__ import annotations

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
OMB_RACE_ETH = "urn:oid:2.16.840.1.113883.6.238"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition"

# The coding systems whose codes are checked against the OMOP vocabulary.
VOCABULARY_SYSTEMS = {SNOMED: "SNOMED", LOINC: "LOINC", RXNORM: "RxNorm", UCUM: "UCUM"}


def collect_codings(node: object, out: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Append every (system, code) pair found anywhere in a FHIR JSON value (Codings, Quantities) to `out`; the
    tests and the benchmark check them against the Eunomia vocabulary."""
    if isinstance(node, dict):
        if "system" in node and "code" in node:
            out.append((node["system"], str(node["code"])))
        for v in node.values():
            collect_codings(v, out)
    elif isinstance(node, list):
        for v in node:
            collect_codings(v, out)
    return out


RACES = [  # (OMB code, display, share of US adults; Census 2020 alone-or-in-combination, rounded)
    ("2106-3", "White", 0.62),
    ("2054-5", "Black or African American", 0.13),
    ("2028-9", "Asian", 0.07),
    ("1002-5", "American Indian or Alaska Native", 0.02),
    ("2076-8", "Native Hawaiian or Other Pacific Islander", 0.01),
    ("2131-1", "Other Race", 0.15),
]
ETHNICITIES = [("2135-2", "Hispanic or Latino", 0.19), ("2186-5", "Not Hispanic or Latino", 0.81)]

# Vital signs: key -> (LOINC, display, UCUM unit)
VITALS = {
    "height": ("8302-2", "Body height", "cm"),
    "weight": ("29463-7", "Body weight", "kg"),
    "bmi": ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2"),
    "sbp": ("8480-6", "Systolic blood pressure", "mm[Hg]"),
    "dbp": ("8462-4", "Diastolic blood pressure", "mm[Hg]"),
    "hr": ("8867-4", "Heart rate", "/min"),
    "rr": ("9279-1", "Respiratory rate", "/min"),
    "temp": ("8310-5", "Body temperature", "Cel"),
    "spo2": ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%"),
}

# Labs: key -> (LOINC, display, canonical unit). Values are generated in the canonical unit.
LABS = {
    "hba1c": ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%"),
    "glucose": ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL"),
    "cholesterol": ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL"),
    "hdl": ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL"),
    "ldl": ("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay", "mg/dL"),
    "triglycerides": ("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL"),
    "creatinine": ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL"),
    "sodium": ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L"),
    "potassium": ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L"),
}

# Alternative units per analyte: unit -> (multiply, add) from the canonical unit. HbA1c % -> IFCC mmol/mol uses the
# NGSP/IFCC master equation (IFCC = 10.929 * (NGSP - 2.15)).
UNIT_CONVERSIONS: dict[str, dict[str, tuple[float, float]]] = {
    "glucose": {"mg/dL": (1.0, 0.0), "mmol/L": (1 / 18.016, 0.0)},
    "cholesterol": {"mg/dL": (1.0, 0.0), "mmol/L": (1 / 38.67, 0.0)},
    "hdl": {"mg/dL": (1.0, 0.0), "mmol/L": (1 / 38.67, 0.0)},
    "ldl": {"mg/dL": (1.0, 0.0), "mmol/L": (1 / 38.67, 0.0)},
    "triglycerides": {"mg/dL": (1.0, 0.0), "mmol/L": (1 / 88.57, 0.0)},
    "creatinine": {"mg/dL": (1.0, 0.0), "umol/L": (88.42, 0.0)},
    "hba1c": {"%": (1.0, 0.0), "mmol/mol": (10.929, -2.15 * 10.929)},
    "sodium": {"mmol/L": (1.0, 0.0)},
    "potassium": {"mmol/L": (1.0, 0.0)},
}

# Conditions (SNOMED)
T2DM = ("44054006", "Type 2 diabetes mellitus")
HYPERTENSION = ("59621000", "Essential hypertension")
HYPERLIPIDEMIA = ("55822004", "Hyperlipidemia")
PREDIABETES = ("15777000", "Prediabetes")
OBESITY = ("162864005", "Body mass index 30+ - obesity")
ACUTE_AMBULATORY = [
    ("195662009", "Acute viral pharyngitis"),
    ("36971009", "Sinusitis"),
    ("10509002", "Acute bronchitis"),
    ("278860009", "Chronic low back pain"),
]
ACUTE_EMERGENCY = [
    ("44465007", "Sprain of ankle"),
    ("283371005", "Laceration of forearm"),
    ("10509002", "Acute bronchitis"),
    ("16114001", "Fracture of ankle"),
    ("33737001", "Fracture of rib"),
]

# Medications (RxNorm clinical drugs)
LISINOPRIL = ("314076", "lisinopril 10 MG Oral Tablet")
AMLODIPINE = ("197361", "amlodipine 5 MG Oral Tablet")
HCTZ = ("310798", "hydrochlorothiazide 25 MG Oral Tablet")
ATORVASTATIN = ("259255", "atorvastatin 80 MG Oral Tablet")
METFORMIN = ("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet")
IBUPROFEN = ("198405", "ibuprofen 100 MG Oral Tablet")
ACETAMINOPHEN = ("198440", "acetaminophen 500 MG Oral Tablet")
AMOXICILLIN = ("308192", "amoxicillin 500 MG Oral Tablet")

# Procedures (SNOMED)
ECG = ("29303009", "Electrocardiographic procedure")
CHEST_XRAY = ("399208008", "Plain chest X-ray")

# Encounter types (SNOMED) and classes (HL7 v3 ActCode)
ENCOUNTER_TYPES = {
    "AMB": (("185349003", "Encounter for check up"), "ambulatory"),
    "EMER": (("50849002", "Emergency room admission"), "emergency"),
    "IMP": (("32485007", "Hospital admission"), "inpatient encounter"),
}
ONSET_VISIT = ("185347001", "Encounter for problem")

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
