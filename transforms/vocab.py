"""Source code -> standard concept lookups, built once from the vocabulary tables in the lake.

Mapping runs inside Beam DoFns, so the lookup is an in-memory dict (one probe per coding) rather than a join per
element. Only the vocabularies that FHIR feeds use are loaded (see SYSTEM_VOCABULARY). Large vocabularies are not
re-pickled into every pipeline: a process-wide registry keeps the loaded dicts, and pickles carry only a token
when the registry has them (the in-process runner), the full data otherwise (remote runners).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

# FHIR code system URI -> OMOP vocabulary_id
SYSTEM_VOCABULARY = {
    "http://snomed.info/sct": "SNOMED",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://unitsofmeasure.org": "UCUM",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-9-cm": "ICD9CM",
    "http://hl7.org/fhir/sid/ndc": "NDC",
    "http://www.ama-assn.org/go/cpt": "CPT4",
}
_INLINE_LIMIT = 50_000
_REGISTRY: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Concept:
    concept_id: int  # standard concept (0 when unmapped)
    source_concept_id: int  # the source code's own concept (0 when the code is not in the vocabulary)
    domain_id: str | None  # domain of the standard concept
    source_value: str | None  # the source code as received
    vocabulary_id: str | None


UNMAPPED = Concept(0, 0, None, None, None)


class Vocabulary:
    """Lookups: (vocabulary_id, code) -> (source concept, standard concept via `Maps to`, domain); UCUM units."""

    def __init__(self, codes: dict[tuple[str, str], tuple[int, int, str | None]], units: dict[str, int]) -> None:
        self.token = uuid.uuid4().hex
        self.codes = codes
        self.units = units
        with _LOCK:
            _REGISTRY[self.token] = {"codes": codes, "units": units}

    @classmethod
    def empty(cls) -> Vocabulary:
        return cls({}, {})

    @classmethod
    def from_lake(cls, con: duckdb.DuckDBPyConnection) -> Vocabulary:
        vocabs = sorted(set(SYSTEM_VOCABULARY.values()))
        marks = ", ".join("?" for _ in vocabs)
        rows = con.execute(
            f"""
            WITH maps AS (
                SELECT concept_id_1, min(concept_id_2) AS std FROM omop.concept_relationship
                WHERE relationship_id = 'Maps to' AND invalid_reason IS NULL GROUP BY 1)
            SELECT c.vocabulary_id, c.concept_code, c.concept_id,
                   coalesce(CASE WHEN c.standard_concept = 'S' THEN c.concept_id END, m.std, 0) AS std,
                   coalesce(s.domain_id, c.domain_id) AS domain_id
            FROM omop.concept c LEFT JOIN maps m ON m.concept_id_1 = c.concept_id
            LEFT JOIN omop.concept s ON s.concept_id = coalesce(CASE WHEN c.standard_concept = 'S'
                                                                     THEN c.concept_id END, m.std)
            WHERE c.vocabulary_id IN ({marks})""",
            vocabs,
        ).fetchall()
        codes = {(v, code): (cid, std, dom) for v, code, cid, std, dom in rows}
        units = {code: cid for (v, code), (cid, _s, _d) in codes.items() if v == "UCUM"}
        return cls(codes, units)

    def __len__(self) -> int:
        return len(self.codes)

    # -- pickling for Beam -----------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        inline = len(self.codes) <= _INLINE_LIMIT or self.token not in _REGISTRY
        return {"token": self.token, "codes": self.codes if inline else None, "units": self.units if inline else None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.token = state["token"]
        if state["codes"] is None:
            data = _REGISTRY.get(self.token)
            if data is None:
                raise RuntimeError("vocabulary not in this process: load it with Vocabulary.from_lake on the worker")
            self.codes, self.units = data["codes"], data["units"]
        else:
            self.codes, self.units = state["codes"], state["units"]

    # -- lookups ---------------------------------------------------------------------------------------------------
    def code(self, system: str | None, code: str | None) -> Concept:
        if not code:
            return UNMAPPED
        vocab = SYSTEM_VOCABULARY.get(system or "")
        hit = self.codes.get((vocab, code)) if vocab else None
        if hit is None:
            return Concept(0, 0, None, code, vocab)
        return Concept(hit[1], hit[0], hit[2], code, vocab)

    def codeable(self, cc: dict[str, Any] | None) -> Concept:
        """Best concept of a CodeableConcept: the first coding that maps to a standard concept, else the first
        coding known to the vocabulary, else the first coding (source value kept, concept 0)."""
        codings = [c for c in (cc or {}).get("coding") or [] if isinstance(c, dict) and c.get("code")]
        if not codings:
            text = (cc or {}).get("text")
            return Concept(0, 0, None, None if text is None else "text-only", None)
        found = [self.code(c.get("system"), str(c["code"])) for c in codings]
        for c in found:
            if c.concept_id:
                return c
        for c in found:
            if c.source_concept_id:
                return c
        return found[0]

    def unit(self, ucum: str | None) -> int:
        return self.units.get(ucum or "", 0) if ucum else 0
