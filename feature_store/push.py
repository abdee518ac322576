"""Validated pushes to Feast's online and offline stores, with dead letters for refused rows.

Every row is checked before anything is written: a known entity (an `omop.person`), an event timestamp and values
of the view's types. Refused rows go to `features.rejected` (and the `deadletter` topic when a broker is
configured) with a human-readable reason; accepted rows are pushed whole. Online, only each person's latest row
is written, because Feast's online stores overwrite unconditionally and an older row must not replace a newer one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from careloop.events import utcnow
from careloop.settings import Settings
from feature_store.definitions import VIEW_BY_NAME
from feature_store.errors import FeaturePushError, FeatureStoreError
from feature_store.repo import CREATED, JOIN_KEY, TS, open_store, view_schema

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

_schema_lock = threading.Lock()
_schema_done: set[str] = set()


def ensure_feature_schema(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    from careloop.duck import transaction

    key = str(settings.home_dir)
    with _schema_lock:
        if key in _schema_done:
            return
        have = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                "AND schema_name = 'features'"
            ).fetchall()
        }
        if not {"rejected", "backfills", "training_sets", "reference_distributions"} <= have:
            ddl = resources.files("feature_store").joinpath("schema.sql").read_text()
            transaction(con, lambda c: c.execute(ddl))
        _schema_done.add(key)


@dataclass
class PushResult:
    view: str
    accepted: int = 0
    online: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)


def _coerce(df: pd.DataFrame, view: str) -> tuple[pd.DataFrame, dict[int, str]]:
    """The frame cast to the view's types and the reason each bad row (by position) was refused."""
    import numpy as np
    import pandas as pd

    spec = VIEW_BY_NAME[view]
    reasons: dict[int, str] = {}

    def bad(mask: Any, why: str) -> None:
        for i in np.flatnonzero(np.asarray(mask)):
            reasons.setdefault(int(i), why)

    known = {JOIN_KEY, TS, CREATED, *(f.name for f in spec.features)}
    extra = [c for c in df.columns if c not in known]
    missing = [c for c in (JOIN_KEY, TS, *(f.name for f in spec.features)) if c not in df.columns]
    if extra or missing:
        why = "; ".join(
            x
            for x in (
                f"unknown column(s) {', '.join(map(str, extra))}" if extra else "",
                f"missing column(s) {', '.join(missing)}" if missing else "",
            )
            if x
        )
        return df.iloc[0:0], dict.fromkeys(range(len(df)), f"frame does not match view {view!r}: {why}")
    out = pd.DataFrame(index=df.index)
    pid = pd.to_numeric(df[JOIN_KEY], errors="coerce")
    bad(pid.isna() | (pid != pid.round()), f"{JOIN_KEY} must be an integer OMOP person id")
    out[JOIN_KEY] = pid
    ts = pd.to_datetime(df[TS], errors="coerce", utc=True)
    bad(ts.isna(), "missing or unparseable event_timestamp")
    out[TS] = ts
    for f in spec.features:
        col = df[f.name]
        present = col.notna()
        if f.dtype in ("float", "int"):
            num = pd.to_numeric(col, errors="coerce") if col.dtype != bool else pd.Series(np.nan, index=col.index)
            bad(present & num.isna(), f"wrong type for {f.name}: expected a number")
            if f.dtype == "int":
                bad(present & num.notna() & (num != num.round()), f"wrong type for {f.name}: expected an integer")
            out[f.name] = num
        elif f.dtype == "bool":
            ok = col.map(lambda v: isinstance(v, bool | np.bool_))
            bad(present & ~ok, f"wrong type for {f.name}: expected true/false")
            out[f.name] = col.where(ok, None)
        else:
            ok = col.map(lambda v: isinstance(v, str))
            bad(present & ~ok, f"wrong type for {f.name}: expected text")
            out[f.name] = col.where(ok, None)
    return out, reasons


def _known_persons(con: duckdb.DuckDBPyConnection, ids: list[int]) -> set[int]:
    if not ids:
        return set()
    import pyarrow as pa

    con.register("_fs_wanted", pa.table({"pid": pa.array(ids, pa.int64())}))
    try:
        rows = con.execute("SELECT DISTINCT person_id FROM omop.person WHERE person_id IN (SELECT pid FROM _fs_wanted)")
        return {int(r[0]) for r in rows.fetchall()}
    finally:
        con.unregister("_fs_wanted")


def _broker_configured(settings: Settings) -> bool:
    if settings.kafka_bootstrap:
        return True
    from careloop.broker import LocalBroker

    return LocalBroker(settings).state() is not None


def dead_letter(
    settings: Settings, con: duckdb.DuckDBPyConnection, view: str, rejected: list[dict[str, Any]], source: str
) -> bool:
    """Record refused rows in `features.rejected`, then on the `deadletter` topic when a broker is configured.
    Returns whether they were also published."""
    import orjson
    import pyarrow as pa

    from careloop.duck import transaction

    ensure_feature_schema(con, settings)
    now = utcnow()
    rows = [
        {
            "rejected_at": now,
            "view": view,
            "source": source,
            "person_id": r["person_id"],
            "event_timestamp": r["event_timestamp"],
            "reason": r["reason"],
            "payload": orjson.dumps(r["row"], default=str).decode(),
        }
        for r in rejected
    ]
    table = pa.Table.from_pylist(rows)

    def body(c: duckdb.DuckDBPyConnection) -> None:
        c.execute("INSERT INTO features.rejected SELECT * FROM _fs_rejected")

    con.register("_fs_rejected", table)
    try:
        transaction(con, body)
    finally:
        con.unregister("_fs_rejected")
    if not _broker_configured(settings):
        return False
    import uuid

    from careloop.events import DeadLetter, Event, EventHeaders, content_hash
    from careloop.kafka import EventProducer

    events = []
    for r in rejected:
        letter = DeadLetter(
            stage="features",
            error_class="FeaturePushError",
            reason=r["reason"],
            payload=r["row"],
            details={"view": view, "source": source},
        )
        value = letter.model_dump(mode="json")
        headers = EventHeaders(
            event_id=uuid.uuid4(),
            event_type="features.push.rejected",
            source_system="careloop.features",
            site=settings.site,
            occurred_at=now,
            content_hash=content_hash(value),
        )
        events.append(Event(key=str(r["person_id"]), value=value, headers=headers))
    with EventProducer(settings) as producer:
        producer.send_many(settings.topic("deadletter"), events)
    return True


def push_frame(
    settings: Settings,
    view: str,
    df: pd.DataFrame,
    *,
    con: duckdb.DuckDBPyConnection,
    source: str = "api",
    strict: bool = True,
) -> PushResult:
    """Validate `df` against `view`, dead-letter refused rows, push the accepted ones online (latest per person)
    and offline (all). Raises `FeaturePushError` after dead-lettering when any row was refused (`strict`)."""
    import pandas as pd

    if view not in VIEW_BY_NAME:
        raise FeatureStoreError(f"unknown feature view {view!r}; known: {', '.join(VIEW_BY_NAME)}")
    df = df.reset_index(drop=True)
    clean, reasons = _coerce(df, view)
    if len(clean):
        ok_ids = clean[JOIN_KEY].dropna().astype("int64")
        known = _known_persons(con, sorted(set(ok_ids.tolist())))
        unknown = clean[JOIN_KEY].notna() & ~clean[JOIN_KEY].isin(list(known))
        for i in unknown[unknown].index:
            reasons.setdefault(int(i), f"unknown entity: person_id {int(clean.at[i, JOIN_KEY])} is not in omop.person")
    result = PushResult(view)
    if reasons:
        result.rejected = [
            {
                "person_id": None
                if pd.isna(df.at[i, JOIN_KEY])
                else str(df.at[i, JOIN_KEY])
                if JOIN_KEY in df
                else None,
                "event_timestamp": str(df.at[i, TS]) if TS in df else None,
                "reason": why,
                "row": df.iloc[i].to_dict(),
            }
            for i, why in sorted(reasons.items())
        ]
        dead_letter(settings, con, view, result.rejected, source)
    good = clean.drop(index=[i for i in reasons if i in clean.index])
    if len(good):
        push_rows(settings, view, good)
        result.accepted = len(good)
        result.online = good[JOIN_KEY].nunique()
    if result.rejected and strict:
        first = "; ".join(sorted({r["reason"] for r in result.rejected})[:3])
        raise FeaturePushError(
            f"feature push to {view!r} refused {len(result.rejected)} of {len(df)} row(s) ({first}); refused rows "
            "are in features.rejected and the deadletter topic; the other rows were pushed whole",
            rejected=len(result.rejected),
            accepted=result.accepted,
        )
    return result


def to_push_frame(view: str, df: pd.DataFrame) -> pd.DataFrame:
    """Exactly the view's schema (types, column order, `created` timestamp) for Feast."""
    import pyarrow as pa

    schema = view_schema(VIEW_BY_NAME[view])
    df = df.copy()
    df[CREATED] = utcnow()
    table = pa.Table.from_pandas(df[[f.name for f in schema]], schema=schema, preserve_index=False)
    return table.to_pandas()


def push_rows(settings: Settings, view: str, df: pd.DataFrame) -> None:
    """Push already-validated rows: all offline, each person's latest online."""
    from feast.data_source import PushMode

    frame = to_push_frame(view, df)
    latest = frame.sort_values([JOIN_KEY, TS]).drop_duplicates(JOIN_KEY, keep="last")
    store = open_store(settings)
    try:
        store.push(f"{view}_push", latest, to=PushMode.ONLINE)
        store.push(f"{view}_push", frame, to=PushMode.OFFLINE)
    except Exception as err:
        raise FeatureStoreError(f"feast push to {view!r} failed: {type(err).__name__}: {err}") from err
