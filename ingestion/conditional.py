"""Conditional references and deletes (`Type?identifier=[system|]value`), resolved the way a FHIR server would:
first against the resources of the same Bundle, then against what careloop already ingested (the identity index
for Patients, the resource-identifier index for every other type) — always into pseudonymous ids.

A conditional reference that matches nothing, or more than one resource, is a per-entry error; its reason names the
resource type only, never the identifier.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from ingestion.fhir_deid import PSEUDONYMOUS
from ingestion.fhir_schema import is_resource_type
from ingestion.fhir_validate import Rejection
from ingestion.pseudonym import Pseudonymizer

_CONDITIONAL = re.compile(r"^(?:.*/)?([A-Z][A-Za-z]{1,63})\?(.*)$")


def parse_conditional(ref: str) -> tuple[str, str | None, str]:
    """`Type?identifier=system|value` -> (type, system or None, value); raises `Rejection` on anything else."""
    m = _CONDITIONAL.match(ref)
    if m is None or not is_resource_type(m.group(1)):
        raise Rejection("UnsupportedConditionalReference", "a conditional reference needs the form "
                        "Type?identifier=[system|]value with an R4 resource type")  # fmt: skip
    params = [p for p in m.group(2).split("&") if p]
    if len(params) != 1 or not params[0].startswith("identifier="):
        raise Rejection("UnsupportedConditionalReference", f"a conditional reference to {m.group(1)} must search by "
                        "exactly one identifier (Type?identifier=[system|]value)")  # fmt: skip
    token = unquote(params[0][len("identifier=") :])
    system, bar, value = token.rpartition("|")
    if not value.strip():
        raise Rejection("UnsupportedConditionalReference", f"a conditional reference to {m.group(1)} has an empty "
                        "identifier value")  # fmt: skip
    return m.group(1), (system if bar else None), value.strip()


class ConditionalResolver:
    """Resolves conditional references for one Bundle (or one resource); built lazily on first use."""

    def __init__(self, pseudo: Pseudonymizer, state: Any, resources: list[Any]) -> None:
        self.pseudo = pseudo
        self.state = state
        self.resources = resources
        self._index: dict[tuple[str, str | None, str], set[str]] | None = None

    def _bundle_index(self) -> dict[tuple[str, str | None, str], set[str]]:
        if self._index is None:
            self._index = {}
            for r in self.resources:
                if not isinstance(r, dict) or not isinstance(r.get("resourceType"), str):
                    continue
                rid = r.get("id")
                idents = r.get("identifier")
                if not isinstance(rid, str) or not isinstance(idents, list):
                    continue
                for ident in idents:
                    if isinstance(ident, dict) and isinstance(ident.get("value"), str) and ident["value"].strip():
                        value = ident["value"].strip()
                        system = ident.get("system") if isinstance(ident.get("system"), str) else ""
                        self._index.setdefault((r["resourceType"], system, value), set()).add(rid)
                        self._index.setdefault((r["resourceType"], None, value), set()).add(rid)
        return self._index

    def resolve(self, ref: str) -> tuple[str, str, str | None]:
        """(type, logical id, None) for a Bundle match; (type, pseudonymous id, PSEUDONYMOUS) for an earlier one."""
        rtype, system, value = parse_conditional(ref)
        matches = self._bundle_index().get((rtype, system if system is not None else None, value), set())
        if system == "":  # `|value`: an identifier without system
            matches = self._bundle_index().get((rtype, "", value), set())
        if len(matches) > 1:
            raise Rejection("AmbiguousConditionalReference", f"a conditional reference to {rtype} matches "
                            f"{len(matches)} resources of this Bundle", 412)  # fmt: skip
        if matches:
            return rtype, next(iter(matches)), None
        h = self.pseudo.identifier(system or None, value)
        if rtype == "Patient":
            person = self.state.person_for_identifier(h)
            if person is not None:
                return rtype, person, PSEUDONYMOUS
        else:
            hit = self.state.resource_for_identifier(rtype, h)
            if hit is not None:
                return rtype, hit, PSEUDONYMOUS
        raise Rejection("UnresolvedConditionalReference", f"a conditional reference to {rtype} by identifier matches "
                        "no resource of this Bundle and none careloop has ingested", 422)  # fmt: skip
