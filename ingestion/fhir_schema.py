"""What each JSON key of a FHIR R4B element is, derived once per class from the `fhir.resources.R4B` models.

The de-identifier walks plain dicts (fast), but decides by FHIR *type* (HumanName, Address, dateTime, Reference, ...)
rather than by key name, so a `text` that is a Narrative is dropped while a CodeableConcept.text is kept, and a date
hidden in `valueDateTime` of an extension is shifted like any other.
"""

from __future__ import annotations

import typing
from functools import cache
from typing import Any

# kinds of a field
DATE, DATETIME, INSTANT, PRIMITIVE, MARKDOWN, STRING = "date", "dateTime", "instant", "primitive", "markdown", "string"
ELEMENT, RESOURCE, PRIMITIVE_EXT = "element", "resource", "primitive-ext"

_PRIMITIVE_KINDS = {"Date": DATE, "DateTime": DATETIME, "Instant": INSTANT, "Markdown": MARKDOWN, "String": STRING}


class FieldInfo(typing.NamedTuple):
    kind: str
    type_name: str | None  # the FHIR complex type name for ELEMENT kinds (e.g. "HumanName", "ObservationComponent")


def model_class(type_name: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(type_name)


def _unwrap(annotation: Any) -> Any:
    """Optional[List[X]] / X | None / Annotated[...] -> the innermost X (or Annotated)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, list, getattr(__import__("types"), "UnionType", None)):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
            continue
        return annotation


def _field_info(annotation: Any) -> FieldInfo:
    inner = _unwrap(annotation)
    if typing.get_origin(inner) is typing.Annotated:
        meta = typing.get_args(inner)[1:]
        for m in meta:
            kind = _PRIMITIVE_KINDS.get(type(m).__name__)
            if kind:
                return FieldInfo(kind, None)
        return FieldInfo(PRIMITIVE, None)
    name = getattr(inner, "__name__", "")
    if name.endswith("Type") and getattr(inner, "__module__", "") == "abc":
        type_name = name[: -len("Type")]
        if type_name == "FHIRPrimitiveExtension":
            return FieldInfo(PRIMITIVE_EXT, type_name)
        if type_name == "Resource":
            return FieldInfo(RESOURCE, None)
        return FieldInfo(ELEMENT, type_name)
    return FieldInfo(PRIMITIVE, None)


@cache
def fields_of(type_name: str) -> dict[str, FieldInfo]:
    """JSON key -> FieldInfo for a FHIR resource, data type or backbone element name."""
    cls = model_class(type_name)
    out: dict[str, FieldInfo] = {}
    for field in cls.model_fields.values():
        alias = field.alias
        if not alias or alias == "fhir_comments":
            continue
        out[alias] = _field_info(field.annotation)
    out.setdefault("resourceType", FieldInfo(PRIMITIVE, None))
    return out


@cache
def is_resource_type(name: str) -> bool:
    """True for a concrete R4B resource type name (not a data type or backbone element)."""
    if not isinstance(name, str) or not name[:1].isupper() or not name.isalnum():
        return False
    try:
        cls = model_class(name)
    except (KeyError, ValueError, AttributeError, ImportError):
        return False
    return any(base.__name__ == "Resource" for base in cls.__mro__) and cls.__name__ == name
