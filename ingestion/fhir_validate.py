"""FHIR R4B validation (once per resource, on the original) and the PHI-free rejection reasons it produces."""

from __future__ import annotations

import re
from typing import Any

import orjson

from ingestion.fhir_schema import is_resource_type, model_class

_SAFE_TYPE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")


class Rejection(Exception):
    """An input that is dead-lettered: the reason is human-readable and contains no value from the payload."""

    def __init__(self, error_class: str, reason: str, http_status: int = 422, stage: str = "validation") -> None:
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason
        self.http_status = http_status
        self.stage = stage


def parse_json(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as err:
        # orjson's message names the position, never the content
        raise Rejection("MalformedJSON", f"malformed JSON: {err.msg} at char {err.pos}", 400, "gateway") from None


def _leaves(obj: Any, out: set[str]) -> None:
    if isinstance(obj, dict):
        for v in obj.values():
            _leaves(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _leaves(v, out)
    elif isinstance(obj, str | int | float) and not isinstance(obj, bool):
        s = str(obj)
        if len(s) >= 3:
            out.add(s)


def scrub(reason: str, payload: Any) -> str:
    """Remove any value of the payload that a library message may have quoted (only run on rejects)."""
    values: set[str] = set()
    _leaves(payload, values)
    for v in sorted(values, key=len, reverse=True):
        if v in reason:
            reason = reason.replace(v, "***")
    return reason


def safe_type_name(value: Any) -> str:
    return value if isinstance(value, str) and _SAFE_TYPE.match(value) else "(unnamed)"


def resource_type_of(resource: Any) -> str:
    if not isinstance(resource, dict):
        raise Rejection("InvalidFHIR", f"a FHIR resource must be a JSON object, got {type(resource).__name__}")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not is_resource_type(rtype):
        if rtype is None:
            raise Rejection("InvalidFHIR", "resourceType is missing")
        raise Rejection("UnknownResourceType", f"resourceType {safe_type_name(rtype)!r} is not an R4 resource type")
    return rtype


def validate_resource(resource: dict[str, Any], rtype: str) -> None:
    """R4B model validation of the original resource; raises `Rejection` with the first few problems."""
    from pydantic import ValidationError

    try:
        model_class(rtype).model_validate(resource)
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False, include_input=False)[:3]:
            loc = ".".join(str(p) for p in e.get("loc", ())) or rtype
            problems.append(f"{loc}: {e.get('msg', 'invalid')}")
        more = err.error_count() - len(problems)
        reason = f"invalid {rtype}: " + "; ".join(problems) + (f" (+{more} more)" if more > 0 else "")
        raise Rejection("InvalidFHIR", scrub(reason, resource)) from None
    except (RecursionError, MemoryError):
        raise Rejection("InvalidFHIR", f"invalid {rtype}: too deeply nested") from None
    except Exception as err:  # fhir.resources raises assorted errors on odd shapes; never crash the gateway
        raise Rejection("InvalidFHIR", f"invalid {rtype}: {type(err).__name__}") from None
