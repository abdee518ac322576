"""DICOMweb STOW-RS (PS3.18 10.5): the multipart/related request body and the response dataset (DICOM JSON)."""

from __future__ import annotations

from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

DICOM_MEDIA_TYPE = "application/dicom"


class _PartTypeError(ValueError):
    """A part that is not application/dicom."""


def parse_stow_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a `multipart/related; type="application/dicom"` body, in order; ValueError says what is wrong."""
    media, params = parse_options_header(content_type or "")
    media_type = media.decode("latin-1").strip().lower()
    if media_type != "multipart/related":
        raise ValueError(f"STOW-RS expects multipart/related, got {media_type or 'no content type'}")
    part_type = params.get(b"type", b"").decode("latin-1").strip().lower()
    if part_type and part_type != DICOM_MEDIA_TYPE:
        raise ValueError(f'only type="{DICOM_MEDIA_TYPE}" is supported, got type="{part_type}"')
    boundary = params.get(b"boundary")
    if not boundary:
        raise ValueError("multipart/related content type has no boundary parameter")
    if len(boundary) > 70:
        raise ValueError("multipart boundary longer than 70 characters (RFC 2046)")

    # RFC 2046 allows a preamble before the first delimiter; python-multipart does not, so skip it here.
    delimiter = b"--" + boundary
    if not body.startswith(delimiter):
        first = body.find(b"\r\n" + delimiter)
        if first < 0:
            raise ValueError("multipart body has no delimiter line for its boundary (no closing boundary either)")
        body = body[first + 2 :]

    parts: list[bytes] = []
    chunks: list[bytes] = []
    headers: list[tuple[bytes, bytes]] = []
    field: list[bytes] = []
    value: list[bytes] = []
    state = {"ended": False}

    def on_part_begin() -> None:
        chunks.clear()
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.append(data[start:end])

    def on_header_end() -> None:
        headers.append((b"".join(field).strip().lower(), b"".join(value).strip()))
        field.clear()
        value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_part_end() -> None:
        for name, val in headers:
            if name == b"content-type":
                ctype = val.split(b";")[0].strip().lower().decode("latin-1")
                if ctype != DICOM_MEDIA_TYPE:
                    raise _PartTypeError(f"part {len(parts) + 1} has Content-Type {ctype}, expected {DICOM_MEDIA_TYPE}")
        parts.append(b"".join(chunks))

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except _PartTypeError:
        raise
    except Exception as err:  # python-multipart's parse errors (offsets only, no content)
        raise ValueError(f"malformed multipart body ({err})") from None
    if not state["ended"]:
        raise ValueError("multipart body ends without its closing boundary")
    if not parts:
        raise ValueError("multipart body has no parts")
    return parts


def _ui(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def stow_response(referenced: list[dict], failed: list[dict], retrieve_url: str | None = None) -> dict[str, Any]:
    """The STOW-RS response dataset in DICOM JSON.

    `referenced` items: `sop_class_uid`, `sop_instance_uid`, optional `retrieve_url`;
    `failed` items: `sop_class_uid`, `sop_instance_uid` (either may be None), `failure_reason` (int, PS3.18).
    """
    out: dict[str, Any] = {}
    if retrieve_url:
        out["00081190"] = {"vr": "UR", "Value": [retrieve_url]}
    if failed:
        out["00081198"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _ui(f.get("sop_class_uid")),
                    "00081155": _ui(f.get("sop_instance_uid")),
                    "00081197": {"vr": "US", "Value": [int(f["failure_reason"])]},
                }
                for f in failed
            ],
        }
    if referenced:
        items = []
        for r in referenced:
            item = {"00081150": _ui(r.get("sop_class_uid")), "00081155": _ui(r.get("sop_instance_uid"))}
            if r.get("retrieve_url"):
                item["00081190"] = {"vr": "UR", "Value": [r["retrieve_url"]]}
            items.append(item)
        out["00081199"] = {"vr": "SQ", "Value": items}
    return out
