"""Injectable shifts: `KIND:site=X,start=MONTH,key=value,...` parsed into typed models.

Patient-level shifts (covariate, prevalence, concept) apply to patients whose index month at that site is >= start;
event-level shifts (device, assay, coding) apply to events at that site from the first day of the start month.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from careloop.errors import CareloopError
from ingestion.simulator.codes import UNIT_CONVERSIONS

RISK_FACTORS = ("age", "bmi", "hba1c", "glucose", "family_history", "hypertension")


class ShiftSpecError(CareloopError):
    """A --shift SPEC could not be parsed; the message says which part and what is expected."""


class _Shift(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    site: str = Field(pattern=r"^[A-Z]$")
    start: int = Field(ge=0, description="first month (0-based) the shift applies to")

    def applies(self, site: str, month: int) -> bool:
        return site == self.site and month >= self.start


class CovariateShift(_Shift):
    """Additive offsets to the drawn covariates of new patients (older, heavier, more dysglycaemic population)."""

    kind: Literal["covariate"] = "covariate"
    age: float = 0.0
    bmi: float = 0.0
    hba1c: float = 0.0
    glucose: float = 0.0


class DeviceShift(_Shift):
    """A new scanner: manufacturer/model tags change, optionally the pixel gain."""

    kind: Literal["device"] = "device"
    model: str = Field(min_length=1)
    manufacturer: str | None = None
    gain: float = Field(1.0, gt=0)


class AssayShift(_Shift):
    """A lab assay change: observed = true * scale + offset (canonical unit), reported in `unit`."""

    kind: Literal["assay"] = "assay"
    analyte: str
    unit: str | None = None
    offset: float = 0.0
    scale: float = Field(1.0, gt=0)


class PrevalenceShift(_Shift):
    """Label shift: the onset probability of new patients is multiplied by `factor` (capped at 0.99)."""

    kind: Literal["prevalence"] = "prevalence"
    factor: float = Field(gt=0)


class ConceptShift(_Shift):
    """The risk relation changes: each `<factor>_weight` multiplies that factor's coefficient."""

    kind: Literal["concept"] = "concept"
    age_weight: float = 1.0
    bmi_weight: float = 1.0
    hba1c_weight: float = 1.0
    glucose_weight: float = 1.0
    family_history_weight: float = 1.0
    hypertension_weight: float = 1.0


class CodingShift(_Shift):
    """A coding-practice change: code `from` is replaced by code `to` (same system) in every coding."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    kind: Literal["coding"] = "coding"
    from_code: str = Field(alias="from", min_length=1)
    to_code: str = Field(alias="to", min_length=1)
    display: str | None = None


Shift = Annotated[
    CovariateShift | DeviceShift | AssayShift | PrevalenceShift | ConceptShift | CodingShift,
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Shift)
KINDS = ("covariate", "device", "assay", "prevalence", "concept", "coding")


def parse_shift(spec: str, n_sites: int | None = None, n_months: int | None = None) -> Shift:
    """Parse one SPEC such as `covariate:site=B,start=12,age=+8,bmi=+2`; raise ShiftSpecError with one clear line."""
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise ShiftSpecError(f"shift {spec!r}: expected KIND:key=value,... with KIND one of {', '.join(KINDS)}")
    fields: dict[str, Any] = {"kind": kind}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ShiftSpecError(f"shift {spec!r}: {part!r} is not key=value")
        fields[key.strip()] = value.strip()
    if "site" in fields:
        fields["site"] = str(fields["site"]).upper()
    try:
        shift = _ADAPTER.validate_python(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"][1:]) or kind
        raise ShiftSpecError(f"shift {spec!r}: {where}: {first['msg']}") from None
    if n_sites is not None and ord(shift.site) - ord("A") >= n_sites:
        raise ShiftSpecError(f"shift {spec!r}: site {shift.site} does not exist (sites A..{chr(64 + n_sites)})")
    if n_months is not None and shift.start >= n_months:
        raise ShiftSpecError(f"shift {spec!r}: start={shift.start} is not before the last month ({n_months - 1})")
    if isinstance(shift, AssayShift):
        units = UNIT_CONVERSIONS.get(shift.analyte)
        if units is None:
            raise ShiftSpecError(f"shift {spec!r}: analyte must be one of {', '.join(UNIT_CONVERSIONS)}")
        if shift.unit is not None and shift.unit not in units:
            raise ShiftSpecError(f"shift {spec!r}: unit for {shift.analyte} must be one of {', '.join(units)}")
    return shift
