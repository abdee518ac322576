"""Validated pushes to Feast's online and offline stores, with dead letters for refused rows.

Every row is checked before anything is written: a known entity (an `omop.person`), an event timestamp and values
of the view's types. Refused rows go to `features.rejected` (and the `deadletter` topic when a broker is
configured) with a human-readable reason; accepted rows are pushed whole. Online, only each person's latest row
is written, because Feast's online stores overwrite unconditionally and an older row must not replace a newer one.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from careloop.events import utcnow
from careloop.settings import Settings
from feature_store.definitions import VIEW_BY_NAME
from feature_store.errors import FeaturePushError, FeatureStoreError
from feature_store.repo import (
    CREATED,
    EMPTY_PART,
    JOIN_KEY,
    TS,
    RepoPaths,
    ensure_parquet,
    feature_views,
    live_paths,
    open_store,
    view_schema,
)

if TYPE_CHECKING:
    from pathlib import Path

    import duckdb
    import pandas as pd
    import pyarrow as pa

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
    total: int = 0


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


def _fast_clean(view: str, table: Any) -> pa.Table | None:
    """Rows that already carry the view's exact types (the derivation's output) pass a strict Arrow cast plus
    null checks instead of the per-value pandas checks, and stay in Arrow; anything else returns None and takes
    the slow path, which names every refused row."""
    import pyarrow as pa

    if not isinstance(table, pa.Table):
        return None
    target = view_schema(VIEW_BY_NAME[view]).remove(2)  # without `created`
    if table.schema.names != target.names:
        return None
    try:
        cast = table.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        return None
    if cast.column(JOIN_KEY).null_count or cast.column(TS).null_count:
        return None
    return cast


def _validate(
    settings: Settings, view: str, df: Any, con: duckdb.DuckDBPyConnection, known: set[int] | None, source: str
) -> tuple[pd.DataFrame | pa.Table, list[dict[str, Any]], int]:
    """(accepted rows (an Arrow table on the fast path), refused rows (already dead-lettered), input count)."""
    import pandas as pd

    if view not in VIEW_BY_NAME:
        raise FeatureStoreError(f"unknown feature view {view!r}; known: {', '.join(VIEW_BY_NAME)}")
    clean = _fast_clean(view, df)
    reasons: dict[int, str] = {}
    if clean is not None:
        import pyarrow as pa
        import pyarrow.compute as pc

        pids = clean.column(JOIN_KEY)
        found = known if known is not None else _known_persons(con, pc.unique(pids).to_pylist())
        if pc.all(pc.is_in(pids, value_set=pa.array(sorted(found), pa.int64()))).as_py() is not False:
            return clean, [], clean.num_rows
        clean = clean.to_pandas()  # some entity is unknown: the slow path names every refused row
    if clean is None:
        if not isinstance(df, pd.DataFrame):
            df = df.to_pandas()
        df = df.reset_index(drop=True)
        clean, reasons = _coerce(df, view)
    else:
        df = clean
    if len(clean):
        ids = clean[JOIN_KEY].dropna()
        wanted = sorted({int(i) for i in ids if float(i).is_integer()})
        found = _known_persons(con, wanted) if known is None else known & set(wanted)
        unknown = clean[JOIN_KEY].notna() & ~clean[JOIN_KEY].isin(list(found))
        for i in unknown[unknown].index:
            reasons.setdefault(int(i), f"unknown entity: person_id {int(clean.at[i, JOIN_KEY])} is not in omop.person")
    rejected: list[dict[str, Any]] = []
    if reasons:
        rejected = [
            {
                "person_id": None if JOIN_KEY not in df or pd.isna(df.at[i, JOIN_KEY]) else str(df.at[i, JOIN_KEY]),
                "event_timestamp": str(df.at[i, TS]) if TS in df else None,
                "reason": why,
                "row": df.iloc[i].to_dict(),
            }
            for i, why in sorted(reasons.items())
        ]
        dead_letter(settings, con, view, rejected, source)
    good = clean.drop(index=[i for i in reasons if i in clean.index])
    return good, rejected, len(df)


def push_frames(
    settings: Settings,
    frames: Mapping[str, Any],
    *,
    con: duckdb.DuckDBPyConnection,
    source: str = "api",
    strict: bool = True,
    known_persons: set[int] | None = None,
    part_name: str | None = None,
) -> dict[str, PushResult]:
    """Validate every view's rows (pandas frames or Arrow tables), dead-letter refused rows, then push the
    accepted ones: each person's latest row online, every row offline as one new part file per view.

    `known_persons` skips the `omop.person` lookup when the caller derived the rows from the lake itself;
    `part_name` names the offline part files so that a retried batch replaces its own files (no duplicates).
    Raises `FeaturePushError` after dead-lettering when any row was refused (`strict`)."""
    results: dict[str, PushResult] = {}
    accepted: dict[str, pd.DataFrame] = {}
    for view, df in frames.items():
        good, rejected, total = _validate(settings, view, df, con, known_persons, source)
        results[view] = PushResult(view, rejected=rejected)
        results[view].total = total
        if len(good):
            accepted[view] = good
    if accepted:
        push_rows_many(settings, accepted, part_name=part_name)
    for view, good in accepted.items():
        results[view].accepted = len(good)
        results[view].online = len(set(good[JOIN_KEY].to_pylist() if hasattr(good, "num_rows") else good[JOIN_KEY]))
    refused = [r for res in results.values() for r in res.rejected]
    if refused and strict:
        first = "; ".join(sorted({r["reason"] for r in refused})[:3])
        views = ", ".join(repr(v) for v, r in results.items() if r.rejected)
        total = sum(r.total for r in results.values())
        raise FeaturePushError(
            f"feature push to {views} refused {len(refused)} of {total} row(s) ({first}); refused rows "
            "are in features.rejected and the deadletter topic; the other rows were pushed whole",
            rejected=len(refused),
            accepted=sum(r.accepted for r in results.values()),
        )
    return results


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
    return push_frames(settings, {view: df}, con=con, source=source, strict=strict)[view]


def to_push_frame(view: str, df: pd.DataFrame) -> pd.DataFrame:
    """Exactly the view's schema (types, column order, `created` timestamp) for Feast."""
    return to_push_table(view, df).to_pandas()


def to_push_table(view: str, df: pd.DataFrame | pa.Table, created: datetime | None = None) -> pa.Table:
    import pyarrow as pa

    schema = view_schema(VIEW_BY_NAME[view])
    if isinstance(df, pa.Table):
        stamp = pa.array([created or utcnow()] * df.num_rows, schema.field(CREATED).type)
        return df.append_column(CREATED, stamp).select(schema.names).cast(schema)
    df = df.copy()
    df[CREATED] = created or utcnow()
    return pa.Table.from_pandas(df[[f.name for f in schema]], schema=schema, preserve_index=False)


def push_rows(settings: Settings, view: str, df: pd.DataFrame) -> None:
    """Push already-validated rows of one view: all offline, each person's latest online."""
    push_rows_many(settings, {view: df})


def push_rows_many(settings: Settings, frames: Mapping[str, pd.DataFrame], *, part_name: str | None = None) -> None:
    """Push already-validated rows: online first (what freshness is about), then offline. Both are idempotent
    for the same rows and `part_name`, so a caller that retries after a failure rewrites the same values."""
    now = utcnow()
    tables = {view: to_push_table(view, df, now) for view, df in frames.items()}
    write_online(settings, tables)
    append_offline(settings, tables, part_name=part_name)


def write_online(settings: Settings, tables: Mapping[str, pa.Table]) -> None:
    """Each person's latest row per view into the online store as one prepared batch (`online.py`), with cached
    feature view objects (Feast's `push`/`write_to_online_store` re-read every view from the registry on each
    call)."""
    from feature_store.online import latest_per_person, write_tables

    store = open_store(settings)
    views = feature_views(store)
    try:
        write_tables(store, views, {view: latest_per_person(table) for view, table in tables.items()})
    except Exception as err:
        names = ", ".join(repr(v) for v in tables)
        raise FeatureStoreError(f"feast online write to {names} failed: {type(err).__name__}: {err}") from err


def append_offline(settings: Settings, tables: Mapping[str, pa.Table], *, part_name: str | None = None) -> None:
    """One new Parquet part file per view in the live offline store, written to a temporary name and renamed,
    so a reader never sees a half-written file (Feast's own offline push rewrites the view's whole file in
    place: O(history) per push, and a crash mid-write loses the file)."""
    import uuid

    import pyarrow.parquet as pq

    paths = live_paths(settings)
    ensure_parquet(paths)
    name = part_name or f"{utcnow():%Y%m%d%H%M%S%f}-{uuid.uuid4().hex[:12]}"
    for view, table in tables.items():
        folder = paths.part_dir(view)
        final = folder / f"{name}.parquet"
        tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            pq.write_table(table, tmp)
            tmp.replace(final)
        except Exception as err:
            tmp.unlink(missing_ok=True)
            raise FeatureStoreError(f"offline write to {view!r} failed: {type(err).__name__}: {err}") from err
    compact_most_fragmented(paths, list(tables))


COMPACT_AT = 16  # small part files per view before they are merged
SMALL_PART = 1 << 20  # bytes; parts at least this big are left alone (so a merge never rewrites the history)


def _small_parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.parquet") if p.name != EMPTY_PART and p.stat().st_size < SMALL_PART)


def compact_most_fragmented(paths: RepoPaths, views: list[str], *, at: int = COMPACT_AT) -> int:
    """Compact at most ONE of `views` per push: the one with the most small parts, if over `at`. Every push adds
    one part per view, so all views cross the threshold together; merging them all in the same push stalled a
    steady stream (~0.85 s once per 64 pushes). One view per push removes ~`at` parts while the push adds one
    per view, so the part count stays bounded and no push pays for more than one small merge."""
    counts = {view: len(_small_parts(paths.part_dir(view))) for view in views}
    worst = max(counts, key=lambda v: counts[v], default=None)
    return compact_offline(paths, worst, at=at) if worst is not None and counts[worst] > at else 0


def compact_offline(paths: RepoPaths, view: str, *, at: int = COMPACT_AT) -> int:
    """Merge the view's small part files into one when there are more than `at` of them (reading many tiny
    files is what makes an offline read slow). The merged file is renamed into place before the merged parts
    are removed, so no row is ever missing; a reader in between can see a row twice, which Feast's
    point-in-time join tolerates (identical event and created timestamps). Returns the number of parts merged."""
    import fcntl

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = paths.part_dir(view)
    if len(_small_parts(folder)) <= at:
        return 0
    with open(folder / ".compact.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another process is compacting this view
        small = _small_parts(folder)
        if len(small) < 2:
            return 0
        merged = pa.concat_tables([pq.read_table(p) for p in small])
        name = f"{small[-1].stem}-c{len(small)}"
        tmp = folder / f".{name}.tmp"
        pq.write_table(merged, tmp)
        tmp.replace(folder / f"{name}.parquet")
        for p in small:
            p.unlink(missing_ok=True)
        return len(small)
