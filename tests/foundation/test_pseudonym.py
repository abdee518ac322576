from __future__ import annotations

import re

from ingestion.pseudonym import Pseudonymizer


def test_pseudonyms_are_keyed_stable_and_well_formed() -> None:
    a, b = Pseudonymizer(b"k" * 32), Pseudonymizer(b"j" * 32)
    assert a.person("123") == a.person(" 123 ") != b.person("123")
    assert a.resource_id("Observation", "x") != a.resource_id("Condition", "x")
    assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", a.resource_id("Observation", "x"))
    uid = a.uid("1.2.840.113619.2.1.1")
    assert uid.startswith("2.25.") and len(uid) <= 64 and uid == a.uid("1.2.840.113619.2.1.1")
    shifts = {a.date_shift_days(a.person(str(i))) for i in range(500)}
    assert 0 not in shifts and max(shifts) <= 365 and min(shifts) >= -365 and len(shifts) > 200
