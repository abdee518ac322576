"""Per-site habits (units, scanner, institution) and the small name/place pools used for realistic PHI."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SiteProfile:
    name: str
    institution: str
    city: str
    state: str
    zip_prefix: str
    manufacturer: str
    model: str
    units: dict[str, str] = field(default_factory=dict)  # analyte -> unit when not the canonical one


_PROFILES = [
    ("Riverside General Hospital", "Newark", "NJ", "071", "SIEMENS", "Ysio Max", {}),
    ("Lakeview Medical Center", "Trenton", "NJ", "086", "GE Healthcare", "Discovery XR656",
     {"glucose": "mmol/L", "cholesterol": "mmol/L", "hdl": "mmol/L", "ldl": "mmol/L", "triglycerides": "mmol/L",
      "creatinine": "umol/L"}),
    ("St. Agnes Community Hospital", "Paterson", "NJ", "075", "Philips Medical Systems", "DigitalDiagnost", {}),
    ("Harbor Point Clinic", "Camden", "NJ", "081", "Canon Inc.", "CXDI-710C Wireless", {"hba1c": "mmol/mol"}),
    ("Pinecrest University Hospital", "Princeton", "NJ", "085", "Carestream Health", "DRX-Evolution Plus",
     {"glucose": "mmol/L"}),
    ("Maple Valley Health", "Morristown", "NJ", "079", "FUJIFILM Corporation", "FDR Smart X", {}),
]  # fmt: skip


def site_name(index: int) -> str:
    """Sites are named A, B, C, ... (at most 26)."""
    return chr(ord("A") + index)


def site_profile(index: int) -> SiteProfile:
    inst, city, state, zip3, manu, model, units = _PROFILES[index % len(_PROFILES)]
    if index >= len(_PROFILES):
        inst = f"{inst} {index // len(_PROFILES) + 1}"
    return SiteProfile(site_name(index), inst, city, state, zip3, manu, model, dict(units))


GIVEN_F = ["Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Susan", "Jessica", "Sarah", "Karen", "Lisa",
           "Nancy", "Betty", "Sandra", "Ashley", "Kimberly", "Emily", "Donna", "Michelle", "Maria", "Aisha", "Mei",
           "Priya", "Guadalupe", "Fatima"]  # fmt: skip
GIVEN_M = ["James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas", "Charles",
           "Daniel", "Matthew", "Anthony", "Mark", "Steven", "Paul", "Andrew", "Joshua", "Jose", "Wei", "Rahul",
           "Kwame", "Luis", "Omar"]  # fmt: skip
FAMILY = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
          "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
          "Lee", "Nguyen", "Patel", "Kim", "Okafor", "Cohen", "Rossi", "Kowalski"]  # fmt: skip
STREETS = ["Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Park Pl", "Washington Blvd", "Lake Rd", "Hillside Ave",
           "Elm St", "Broad St", "Church St", "Mill Rd"]  # fmt: skip
CLINICIANS = ["Dr. Alan Reyes", "Dr. Grace Huang", "Dr. Samuel Osei", "Dr. Helen Park", "Dr. Victor Alvarez",
              "Dr. Nora Fitzgerald", "Dr. Imran Qureshi", "Dr. Ruth Goldberg"]  # fmt: skip
OPERATORS = ["RT Jamie Cole", "RT Dana Whitfield", "RT Morgan Silva", "RT Casey Nowak"]
