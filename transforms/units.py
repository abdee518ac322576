"""Unit normalization: one standard unit per measurement concept, from a documented table (docs/omop.md).

Conversions are keyed by the *analyte* (LOINC code) because the factor for mmol/L -> mg/dL depends on the
molar mass (glucose 18.016, cholesterol 38.67, triglycerides 88.57, ...). Generic dimension conversions (lb -> kg,
degF -> Cel, in -> cm) apply to any analyte whose standard unit is the target. Values whose unit is missing,
unknown to UCUM in the vocabulary, or has no conversion to the analyte's standard unit are loaded unchanged and
flagged (`unit_unknown` / `unit_incompatible`), never silently converted or dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

# analyte LOINC code -> (standard UCUM unit, plausible low, plausible high) in the standard unit
STANDARD_UNITS: dict[str, tuple[str, float, float]] = {
    "2339-0": ("mg/dL", 10, 1500),  # Glucose [Mass/volume] in Blood
    "2345-7": ("mg/dL", 10, 1500),  # Glucose [Mass/volume] in Serum or Plasma
    "15074-8": ("mg/dL", 10, 1500),  # Glucose [Moles/volume] in Blood (stored as mass after conversion)
    "2093-3": ("mg/dL", 20, 1000),  # Cholesterol total
    "2085-9": ("mg/dL", 5, 200),  # HDL cholesterol
    "18262-6": ("mg/dL", 5, 600),  # LDL cholesterol (direct)
    "2571-8": ("mg/dL", 10, 5000),  # Triglycerides
    "38483-4": ("mg/dL", 0.1, 30),  # Creatinine [Mass/volume] in Blood
    "2160-0": ("mg/dL", 0.1, 30),  # Creatinine [Mass/volume] in Serum or Plasma
    "718-7": ("g/dL", 2, 25),  # Hemoglobin [Mass/volume] in Blood
    "4548-4": ("%", 2, 20),  # Hemoglobin A1c/Hemoglobin.total in Blood
    "8310-5": ("Cel", 25, 45),  # Body temperature
    "29463-7": ("kg", 0.2, 500),  # Body weight
    "8302-2": ("cm", 20, 260),  # Body height
    "39156-5": ("kg/m2", 5, 100),  # BMI
    "8480-6": ("mm[Hg]", 20, 300),  # Systolic blood pressure
    "8462-4": ("mm[Hg]", 10, 200),  # Diastolic blood pressure
    "8867-4": ("/min", 10, 300),  # Heart rate
    "9279-1": ("/min", 2, 80),  # Respiratory rate
    "2708-6": ("%", 30, 100),  # Oxygen saturation in arterial blood
    "59408-5": ("%", 30, 100),  # Oxygen saturation by pulse oximetry
}

# (analyte, from unit) -> (factor, offset): value_std = value * factor + offset
ANALYTE_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    **{(c, "mmol/L"): (18.016, 0.0) for c in ("2339-0", "2345-7", "15074-8")},
    **{(c, "mmol/L"): (38.67, 0.0) for c in ("2093-3", "2085-9", "18262-6")},
    ("2571-8", "mmol/L"): (88.57, 0.0),
    **{(c, "umol/L"): (1 / 88.42, 0.0) for c in ("38483-4", "2160-0")},
    ("718-7", "g/L"): (0.1, 0.0),
    ("718-7", "mmol/L"): (1.611, 0.0),  # hemoglobin (monomer) 16.11 g/mol·1e-3
    ("4548-4", "mmol/mol"): (0.09148, 2.152),  # IFCC -> NGSP master equation
}

# generic conversions to a standard unit: (from, to) -> (factor, offset)
UNIT_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("[degF]", "Cel"): (5 / 9, -32 * 5 / 9),
    ("K", "Cel"): (1.0, -273.15),
    ("[lb_av]", "kg"): (0.45359237, 0.0),
    ("g", "kg"): (0.001, 0.0),
    ("[oz_av]", "kg"): (0.028349523125, 0.0),
    ("[in_i]", "cm"): (2.54, 0.0),
    ("m", "cm"): (100.0, 0.0),
    ("mm", "cm"): (0.1, 0.0),
    ("{beats}/min", "/min"): (1.0, 0.0),
    ("{breaths}/min", "/min"): (1.0, 0.0),
    ("g/L", "g/dL"): (0.1, 0.0),
    ("mg/L", "mg/dL"): (0.1, 0.0),
    ("kPa", "mm[Hg]"): (7.50062, 0.0),
}

# spellings seen in feeds that are not UCUM codes
UNIT_ALIASES = {"degF": "[degF]", "°F": "[degF]", "°C": "Cel", "C": "Cel", "lb": "[lb_av]", "lbs": "[lb_av]",
                "in": "[in_i]", "mmHg": "mm[Hg]", "bpm": "/min", "beats/minute": "/min", "kg/m^2": "kg/m2"}  # fmt: skip


@dataclass(frozen=True)
class UnitResult:
    value: float | None
    unit: str | None  # UCUM code after normalization
    flag: str | None  # None | unit_unknown | unit_incompatible | unit_missing
    converted: bool = False


def canonical(unit: str | None) -> str | None:
    if unit is None:
        return None
    u = unit.strip()
    return UNIT_ALIASES.get(u, u) or None


def normalize(analyte: str | None, value: float | None, unit: str | None) -> UnitResult:
    """Convert `value` in `unit` to the analyte's standard unit when the table knows how."""
    u = canonical(unit)
    std = STANDARD_UNITS.get(analyte or "")
    if value is None:
        return UnitResult(value, u, None)
    if std is None:
        return UnitResult(value, u, None if u else "unit_missing")
    target = std[0]
    if u is None:
        return UnitResult(value, None, "unit_missing")
    if u == target:
        return UnitResult(value, u, None)
    conv = ANALYTE_CONVERSIONS.get((analyte or "", u)) or UNIT_CONVERSIONS.get((u, target))
    if conv is None:
        return UnitResult(value, u, "unit_incompatible")
    factor, offset = conv
    return UnitResult(value * factor + offset, target, None, converted=True)


def plausible(analyte: str | None, value: float | None) -> bool:
    """False when a value in the standard unit is outside the analyte's plausible range (DQD plausibility)."""
    std = STANDARD_UNITS.get(analyte or "")
    if std is None or value is None:
        return True
    return std[1] <= value <= std[2]
