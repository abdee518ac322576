"""The PS3.15 Annex E Table E.1-1 attribute actions, taken from the `dicom-anonymizer` package's table.

`dicom-anonymizer` (BSD-3) ships Table E.1-1 of the current standard edition as data (tag -> action category:
D, Z, X, U and the IOD-dependent combinations Z/D, X/Z, X/D, X/Z/D, X/Z/U*). We use only that data; the actions
themselves run in `deid.py` so that IDs, UIDs and dates come from careloop's keyed pseudonymizer (deterministic
under the deployment key) instead of random values.

The options' columns of Table E.1-1 are not in that package:
- Retain Longitudinal Temporal Information with Modified Dates: the standard marks every date/time attribute C
  (modify); we apply that by VR (DA, DT are shifted by whole days; TM is then unchanged).
- Retain Device Identity: the standard keeps the device/station identifying attributes; we select them from the
  table by keyword (device, station, detector/gantry/generator/plate/cassette IDs, serial numbers, UDI), see
  `DEVICE_IDENTITY_RE`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from pydicom.datadict import keyword_for_tag

TABLE_EDITION = "dicomfields_2026c"

# Categories of the package's table, in the names it uses.
CATEGORIES = (
    "D_TAGS",
    "Z_TAGS",
    "X_TAGS",
    "U_TAGS",
    "Z_D_TAGS",
    "X_Z_TAGS",
    "X_D_TAGS",
    "X_Z_D_TAGS",
    "X_Z_U_STAR_TAGS",
)

DEVICE_IDENTITY_RE = re.compile(
    r"Device|Station|DetectorID|GantryID|GeneratorID|PlateID|CassetteID|SerialNumber|UDI|UniqueDeviceIdentifier"
)
# Free-text descriptions that merely mention a device (RT fixation/shielding, processing notes) stay removed.
NOT_DEVICE_IDENTITY_RE = re.compile(r"FixationDevice|ShieldingDevice|DeviceSetting|ProcessingDescription")


@dataclass(frozen=True)
class ActionTable:
    """Exact tags -> action, repeating-group masks -> action, and the device-identity subset."""

    exact: dict[int, str]
    masked: tuple[tuple[int, int, str], ...]  # (value, mask, action) over the 32-bit tag
    device_identity: frozenset[int]

    def action(self, tag: int) -> str | None:
        found = self.exact.get(tag)
        if found is not None:
            return found
        for value, mask, act in self.masked:
            if tag & mask == value:
                return act
        return None


@cache
def action_table() -> ActionTable:
    """Load Table E.1-1 once per process."""
    import importlib

    module = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.{TABLE_EDITION}")
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []
    for category in CATEGORIES:
        action = category.removesuffix("_TAGS").replace("_STAR", "*")
        for entry in getattr(module, category):
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = action
            else:  # (group, element, group mask, element mask): repeating groups such as 50xx, 60xx
                group, element, gmask, emask = entry
                mask = (gmask << 16) | emask
                masked.append((((group << 16) | element) & mask, mask, action))
    device = frozenset(
        t
        for t in exact
        if DEVICE_IDENTITY_RE.search(keyword_for_tag(t) or "") and not NOT_DEVICE_IDENTITY_RE.search(keyword_for_tag(t))
    )
    return ActionTable(exact=exact, masked=tuple(masked), device_identity=device)


def parse_allow(pattern: str) -> tuple[str | None, int, int]:
    """`[CREATOR:]gggg,eeee` with `x` as a hex wildcard; `gggg,10xx` means block 0x10 of group gggg."""
    creator, _, spec = pattern.rpartition(":")
    hexes = spec.replace(",", "").replace("(", "").replace(")", "").strip().lower()
    if len(hexes) != 8 or any(c not in "0123456789abcdefx" for c in hexes):
        raise ValueError(f"private tag allow-list entry {pattern!r} is not of the form gggg,eeee (x = any digit)")
    value = int(hexes.replace("x", "0"), 16)
    mask = int("".join("0" if c == "x" else "f" for c in hexes), 16)
    return (creator.strip() or None), value, mask
