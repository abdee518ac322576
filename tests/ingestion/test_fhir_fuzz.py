"""Property-based fuzzing of the JSON and NDJSON entry points: any input gets an answer, never a 500 or a crash."""

from __future__ import annotations

from datetime import date

import orjson
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FHIR = {"Content-Type": "application/fhir+json"}
OK = {200, 201, 400, 404, 413, 415, 422}
TYPES = ["Patient", "Observation", "Encounter", "Bundle", "Condition", "Practitioner", "Binary", "Foo", ""]
FIELDS = ["id", "subject", "patient", "name", "identifier", "birthDate", "effectiveDateTime", "entry", "type",
          "reference", "fullUrl", "resource", "status", "code", "text", "extension", "contained",
          "_birthDate"]  # fmt: skip

scalars = (st.none() | st.booleans() | st.integers(-(2**40), 2**40)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
           | st.sampled_from(["2020-01-01", "2020-13", "urn:uuid:x", "Patient/1", "#c"]))  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), c, max_size=5),
    max_leaves=25,
)
resources = st.builds(
    lambda t, body: {"resourceType": t, **body} if isinstance(body, dict) else body,
    st.sampled_from(TYPES),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6) | json_values,
)
bundles = st.builds(lambda t, es: {"resourceType": "Bundle", "type": t, "entry": es},
                    st.sampled_from(["transaction", "batch", "collection", "history", "x"]),
                    st.lists(st.dictionaries(st.sampled_from(["resource", "fullUrl", "request"]),
                                             resources | json_values, max_size=3), max_size=4))  # fmt: skip
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=resources | bundles, raw=st.booleans(), junk=st.binary(max_size=40))
def test_json_endpoints_never_fail(client: TestClient, body, raw: bool, junk: bytes) -> None:
    data = junk if raw else orjson.dumps(body)
    for path in ("/fhir", "/fhir/Patient", "/fhir/Observation"):
        r = client.post(path, content=data, headers=FHIR)
        assert r.status_code in OK, (path, r.status_code, r.text)
        assert r.json()["resourceType"] in ("OperationOutcome", "Bundle")
        assert "500" not in [e["response"]["status"][:3] for e in r.json().get("entry", [])]


@FUZZ
@given(lines=st.lists(st.builds(orjson.dumps, resources | bundles) | st.binary(max_size=30), max_size=8))
def test_ndjson_import_never_fails(client: TestClient, lines: list[bytes]) -> None:
    r = client.post("/fhir/$import", content=b"\n".join(lines), headers={"Content-Type": "application/fhir+ndjson"})
    assert r.status_code in OK, r.text
    issues = r.json()["issue"]
    assert issues[0]["diagnostics"].startswith("accepted ")
    assert all(i["code"] != "exception" for i in issues)  # no InternalError (a bug) on any line


# "Xq" keeps a random word from being a piece of the output's own structure: Hypothesis draws strings from the
# code's constants, so a bare word can be "resour" (of "resourceType") and be found in any output.
words = st.text(alphabet=st.characters(whitelist_categories=("Lu", "Ll")), min_size=6, max_size=12).map(
    lambda w: "Xq" + w
)
digits = st.text(alphabet="0123456789", min_size=7, max_size=12)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(family=words, given_=words, street=words, city=words, zip_=digits, phone=digits, mrn=digits, email=words,
       born=st.dates(min_value=date(1900, 1, 1), max_value=date(2020, 1, 1)))  # fmt: skip
def test_random_identifying_values_never_leave_the_gateway(lake_settings, family, given_, street, city, zip_, phone,
                                                           mrn, email, born) -> None:  # fmt: skip
    """PHI scan over data nobody has seen: random values in every identifying field, none in any output."""
    from ingestion import Ingestor

    patient = {"resourceType": "Patient", "id": "fz", "name": [{"family": family, "given": [given_]}],
               "telecom": [{"system": "phone", "value": phone}, {"system": "email", "value": f"{email}@x.org"}],
               "address": [{"line": [f"{street} 1"], "city": city, "postalCode": zip_}],
               "identifier": [{"system": "urn:mrn", "value": mrn}], "birthDate": born.isoformat(),
               "contact": [{"name": {"family": family}}],
               "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                              "valueString": family}]}  # fmt: skip
    obs = {"resourceType": "Observation", "id": "fo", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/fz", "display": f"{given_} {family}"},
           "note": [{"text": f"{given_} called from {phone}"}], "performer": [{"display": family}],
           "identifier": [{"value": mrn}], "effectiveDateTime": born.isoformat()}  # fmt: skip
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}, {"resource": obs}]}
    with Ingestor(lake_settings, source_system="fuzz", publish=False) as ing:
        outs = ing.submit_bundle(bundle)
        assert [o.status for o in outs] == ["accepted", "accepted"]
        text = orjson.dumps([e.value for e in ing.drain()]).decode()
    for secret in (family, given_, street, city, zip_, phone, mrn, email, born.isoformat()):
        assert secret not in text
