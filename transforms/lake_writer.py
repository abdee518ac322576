"""Committing one batch of mapped results to the OMOP lake: upserts keyed by FHIR logical id, deletes, version
bookkeeping, observation periods, data-quality results, lineage edges and the status row — in ONE transaction.

Exactly-once *effect* comes from here, not from Kafka: a result is applied only if its source version is newer
than the one recorded in `omop.fhir_source_versions`; an identical re-delivery (same content hash) or a late older
version changes nothing; rows are replaced by id, so replaying a batch after a crash converges to the same lake.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from careloop.duck import catalog_gate, transaction
from careloop.events import utcnow
from transforms.ids import omop_id
from transforms.mapping import PK

if TYPE_CHECKING:
    import duckdb

    from lineage import LineageWriter

EVENT_DATES = {
    "visit_occurrence": "visit_start_date",
    "condition_occurrence": "condition_start_date",
    "drug_exposure": "drug_exposure_start_date",
    "procedure_occurrence": "procedure_date",
    "measurement": "measurement_date",
    "observation": "observation_date",
    "image_occurrence": "image_occurrence_date",
}
EVENT_END_DATES = {"visit_occurrence": "visit_end_date", "drug_exposure": "drug_exposure_end_date",
                   "condition_occurrence": "condition_end_date"}  # fmt: skip
SEVERITY = {"no_person": "deadletter", "no_date": "deadletter", "invalid_resource": "deadletter"}
CATEGORY = {"unmapped_code": "completeness", "no_code": "completeness", "value_absent": "completeness",
            "no_birth_date": "completeness", "death_without_date": "completeness", "unit_missing": "completeness",
            "partial_date": "conformance", "unit_unknown": "conformance", "unit_incompatible": "conformance",
            "no_person": "conformance", "no_date": "conformance", "invalid_resource": "conformance",
            "value_not_representable": "conformance", "concept_not_in_vocabulary": "conformance",
            "implausible_value": "plausibility", "event_before_birth": "plausibility",
            "event_after_death": "plausibility", "end_before_start": "plausibility",
            "unit_converted": "conformance"}  # fmt: skip


@dataclass
class BatchOutcome:
    """What one committed batch did (also the payload of the stream's `on_batch_committed` hooks)."""

    batch_id: str
    snapshot_id: int | None = None
    applied: int = 0
    deleted: int = 0
    stale: int = 0
    skipped: int = 0
    deadletters: list[dict[str, Any]] = field(default_factory=list)
    rows_written: int = 0
    rows_deleted: int = 0
    rows_by_table: dict[str, int] = field(default_factory=dict)
    person_ids: set[int] = field(default_factory=set)
    person_keys: set[str] = field(default_factory=set)
    min_event_time: datetime | None = None
    max_event_time: datetime | None = None


def _ts(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _rank(vid: Any) -> int | None:
    if vid is None:  # the common case: no versionId (raising and catching would cost more than the whole check)
        return None
    try:
        return int(str(vid))
    except (TypeError, ValueError):
        return None


def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
    """>0 when source version `a` is newer than `b`: numeric meta.versionId, then meta.lastUpdated, then the Kafka
    position (same partition: one person's events are ordered) as the last resort."""
    ra, rb = _rank(a.get("version_id")), _rank(b.get("version_id"))
    if ra is not None and rb is not None and ra != rb:
        return 1 if ra > rb else -1
    ta, tb = _ts(a.get("last_updated")), _ts(b.get("last_updated"))
    if ta is not None and tb is not None and ta != tb:
        return 1 if ta > tb else -1
    if (ra is not None and rb is not None) or (ta is not None and tb is not None):
        return 0
    sa, sb = tuple(a.get("seq") or (0, 0)), tuple(b.get("seq") or (0, 0))
    return (sa > sb) - (sa < sb)


def fhir_node(src: dict[str, Any]) -> str:
    return f"{src['resource_type']}/{src['resource_id']}/_history/{src.get('version_id') or 'unversioned'}"


def _arrow(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    import pyarrow as pa

    return pa.table({c: [r.get(c) for r in rows] for c in columns})  # lists: pyarrow infers in C (2x pa.array)


SRC_COLUMNS = ("status", "kind", "resource_type", "resource_id", "person_key", "version_id", "version_rank",
               "last_updated", "last_updated_ts", "content_hash", "event_id", "kafka_ref", "node", "part",
               "off")  # fmt: skip


@dataclass
class Prepared:
    """A mapped batch in columnar form: what the lake commit needs, built where the batch was mapped (the mapping
    worker), so that the committing process touches no result dict and no row dict.

    Every Arrow table has a `_res` column: the index of the result (source event) a row came from; the commit
    keeps only the rows of the results it applies (newer than the lake's version) with one vectorised filter."""

    src: Any  # pa.Table, one row per result: _res + SRC_COLUMNS
    tables: dict[str, Any]  # OMOP table -> pa.Table of its rows (+ _res), columns as the mapping produced them
    row_map: Any  # pa.Table: _res, omop_table, omop_row_id, person_id, shared
    flags: Any  # pa.Table: _res, omop_table, omop_row_id, check_name, detail
    deadletters: list[dict[str, Any]] = field(default_factory=list)
    min_event_time: datetime | None = None
    max_event_time: datetime | None = None

    @property
    def size(self) -> int:
        return self.src.num_rows


def _str(value: Any) -> str | None:
    """Source metadata as text: a payload's `meta.lastUpdated` may be any JSON type, and one odd event must not make
    the batch's Arrow column untypeable (the lake columns are VARCHAR; `compare` parses text)."""
    return None if value is None else str(value)


def _iso(value: Any) -> str | None:
    t = _ts(value)
    return None if t is None else t.isoformat()


def prepare(results: list[dict[str, Any]], start: int = 0) -> Prepared:
    """Result dicts (from `FhirToOmop`) -> `Prepared`; `start` is the index of the first result in its batch."""
    import pyarrow as pa

    src: dict[str, list[Any]] = {c: [] for c in ("_res", *SRC_COLUMNS)}
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    rows_res: dict[str, list[int]] = defaultdict(list)
    rm: dict[str, list[Any]] = {c: [] for c in ("_res", "omop_table", "omop_row_id", "person_id", "shared")}
    fl: dict[str, list[Any]] = {c: [] for c in ("_res", "omop_table", "omop_row_id", "check_name", "detail")}
    out = Prepared(src=None, tables={}, row_map=None, flags=None)
    for i, r in enumerate(results, start):
        s = r["src"]
        seq = s.get("seq") or (0, 0)
        vid = s.get("version_id")
        for c, v in (("_res", i), ("status", r["status"]), ("kind", s.get("kind")),
                     ("resource_type", _str(s.get("resource_type"))), ("resource_id", _str(s.get("resource_id"))),
                     ("person_key", _str(s.get("person_key"))), ("version_id", _str(vid)), ("version_rank", _rank(vid)),
                     ("last_updated", _str(s.get("last_updated"))), ("last_updated_ts", _iso(s.get("last_updated"))),
                     ("content_hash", _str(s.get("content_hash"))), ("event_id", _str(s.get("event_id"))),
                     ("kafka_ref", s.get("kafka_ref")),
                     ("node", fhir_node(s) if s.get("resource_type") and s.get("resource_id") else None),
                     ("part", seq[0] or 0), ("off", seq[1] or 0)):  # fmt: skip
            src[c].append(v)
        t = _ts(s.get("occurred_at"))
        if t is not None:
            out.min_event_time = t if out.min_event_time is None else min(out.min_event_time, t)
            out.max_event_time = t if out.max_event_time is None else max(out.max_event_time, t)
        if r["status"] == "deadletter":
            out.deadletters.append(r)
            continue  # never loaded: its rows (none, after the quality check) are not versioned either
        for row in r["rows"]:
            table, row_id, data = row["table"], row["id"], row["row"]
            rows[table].append(data)
            rows_res[table].append(i)
            rm["_res"].append(i)
            rm["omop_table"].append(table)
            rm["omop_row_id"].append(row_id)
            rm["person_id"].append(data.get("person_id"))
            rm["shared"].append(bool(row.get("shared")))
            for check, detail in row["flags"]:
                fl["_res"].append(i)
                fl["omop_table"].append(table)
                fl["omop_row_id"].append(row_id)
                fl["check_name"].append(check)
                fl["detail"].append(detail[:500])
    out.src = pa.table({**src, "_res": pa.array(src["_res"], pa.int64()), "part": pa.array(src["part"], pa.int64()),
                        "off": pa.array(src["off"], pa.int64()),
                        "version_rank": pa.array(src["version_rank"], pa.int64())})  # fmt: skip
    for table, trows in rows.items():
        names = list(dict.fromkeys(k for r in trows for k in r))
        out.tables[table] = pa.table({**{c: [r.get(c) for r in trows] for c in names},
                                      "_res": pa.array(rows_res[table], pa.int64())})  # fmt: skip
    out.row_map = pa.table({"_res": pa.array(rm["_res"], pa.int64()),
                            "omop_table": pa.array(rm["omop_table"], pa.string()),
                            "omop_row_id": pa.array(rm["omop_row_id"], pa.int64()),
                            "person_id": pa.array(rm["person_id"], pa.int64()),
                            "shared": pa.array(rm["shared"], pa.bool_())})  # fmt: skip
    out.flags = pa.table({"_res": pa.array(fl["_res"], pa.int64()),
                          "omop_table": pa.array(fl["omop_table"], pa.string()),
                          "omop_row_id": pa.array(fl["omop_row_id"], pa.int64()),
                          "check_name": pa.array(fl["check_name"], pa.string()),
                          "detail": pa.array(fl["detail"], pa.string())})  # fmt: skip
    return out


def merge(parts: list[Prepared]) -> Prepared:
    """Prepared chunks of one batch (in batch order) -> one `Prepared`."""
    import pyarrow as pa

    if len(parts) == 1:
        return parts[0]
    if not parts:
        return prepare([])
    parts = sorted(parts, key=lambda p: p.src["_res"][0].as_py() if p.src.num_rows else -1)
    out = Prepared(src=pa.concat_tables([p.src for p in parts], promote_options="permissive"), tables={},
                   row_map=pa.concat_tables([p.row_map for p in parts]),
                   flags=pa.concat_tables([p.flags for p in parts]))  # fmt: skip
    for table in dict.fromkeys(t for p in parts for t in p.tables):
        out.tables[table] = pa.concat_tables([p.tables[table] for p in parts if table in p.tables],
                                             promote_options="permissive")  # fmt: skip
    for p in parts:
        out.deadletters.extend(p.deadletters)
        for t in (p.min_event_time, p.max_event_time):
            if t is not None:
                out.min_event_time = t if out.min_event_time is None else min(out.min_event_time, t)
                out.max_event_time = t if out.max_event_time is None else max(out.max_event_time, t)
    return out


def concat_batches(batches: list[Prepared]) -> Prepared:
    """Several prepared *batches* (each indexed from 0, in Kafka order) -> one, committed as one transaction: the
    stream merges batches that wait for the commit thread, so a backlog pays the commit's fixed cost once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(batches) == 1:
        return batches[0]

    def shift(t: Any, by: int) -> Any:
        i = t.column_names.index("_res")
        return t.set_column(i, "_res", pc.add(t["_res"], pa.scalar(by, pa.int64())))

    parts, base = [], 0
    for b in batches:
        parts.append(Prepared(src=shift(b.src, base), tables={k: shift(t, base) for k, t in b.tables.items()},
                              row_map=shift(b.row_map, base), flags=shift(b.flags, base), deadletters=b.deadletters,
                              min_event_time=b.min_event_time, max_event_time=b.max_event_time))  # fmt: skip
        base += b.size
    return merge(parts)


def _meta(cols: dict[str, list[Any]], j: int) -> dict[str, Any]:
    """What `compare` reads of the result at position `j` of a prepared batch's source columns."""
    return {"version_id": cols["version_id"][j], "last_updated": cols["last_updated"][j],
            "seq": (cols["part"][j], cols["off"][j])}  # fmt: skip


def _event_columns(tables: dict[str, Any]) -> dict[str, tuple[list[Any], list[Any], list[Any], list[Any]]]:
    """(row ids, person ids, event dates, end dates) of the event tables among `tables` (observation periods and
    the before-birth/after-death checks read only these)."""
    out = {}
    for table, date_col in EVENT_DATES.items():
        data = tables.get(table)
        if data is None:
            continue
        names = set(data.column_names)

        def col(c: str, data: Any = data, names: set[str] = names) -> list[Any]:
            return data[c].to_pylist() if c in names else [None] * data.num_rows

        out[table] = (col(PK[table]), col("person_id"), col(date_col), col(EVENT_END_DATES.get(table, date_col)))
    return out


class LakeWriter:
    """Applies mapped batches to the lake. One instance per process; `commit` is one transaction."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self._columns: dict[str, list[tuple[str, str]]] = {}

    def columns(self, table: str) -> list[tuple[str, str]]:
        if table not in self._columns:
            self._columns[table] = [
                (r[0], r[1])
                for r in self.con.execute(
                    "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
                    "AND schema_name = 'omop' AND table_name = ? ORDER BY column_index",
                    [table],
                ).fetchall()
            ]
        return self._columns[table]

    # -- deciding -----------------------------------------------------------------------------------------------
    @staticmethod
    def _winners(p: Prepared, cols: dict[str, list[Any]]) -> tuple[dict[tuple[str, str], int], int]:
        """Newest result per source resource within the batch (dead letters are not versioned): key -> position."""
        status, rt, rid, part, off = (cols[c] for c in ("status", "resource_type", "resource_id", "part", "off"))
        best: dict[tuple[str, str], int] = {}
        superseded = 0
        for j in sorted(range(p.size), key=lambda j: (part[j], off[j])):
            if status[j] == "deadletter" or not rid[j] or not rt[j]:
                continue
            k = (rt[j], rid[j])
            prev = best.get(k)
            if prev is not None:
                superseded += 1
                if compare(_meta(cols, j), _meta(cols, prev)) < 0:
                    continue
            best[k] = j
        return best, superseded

    def _existing(self, con: duckdb.DuckDBPyConnection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        if not keys:
            return {}
        import pyarrow as pa

        keys_t = pa.table({"resource_type": [k[0] for k in keys], "resource_id": [k[1] for k in keys]})
        con.register("_keys", keys_t)
        try:
            rows = con.execute(
                "SELECT v.resource_type, v.resource_id, v.version_id, v.last_updated::VARCHAR, v.content_hash, "
                "v.deleted, v.kafka_ref FROM omop.fhir_source_versions v "
                "JOIN _keys k USING (resource_type, resource_id)"
            ).fetchall()
        finally:
            con.unregister("_keys")
        out = {}
        for rt, rid, vid, lu, ch, deleted, kref in rows:
            parts = (kref or "").rsplit("/", 2)
            seq = (int(parts[1]), int(parts[2])) if len(parts) == 3 and parts[1].isdigit() else (0, 0)
            out[(rt, rid)] = {"version_id": vid, "last_updated": lu, "content_hash": ch, "deleted": deleted,
                              "seq": seq}  # fmt: skip
        return out

    # -- committing ---------------------------------------------------------------------------------------------
    def commit(self, results: list[dict[str, Any]] | Prepared, *, batch_id: str | None = None,
               run_id: str | None = None, lineage: LineageWriter | None = None,
               status: dict[str, Any] | None = None) -> BatchOutcome:  # fmt: skip
        """Apply `results` (result dicts from `FhirToOmop`, or their `prepare`d columnar form) in one lake
        transaction (retried as a whole on commit conflicts)."""
        prepared = results if isinstance(results, Prepared) else prepare(results)
        outcome_box: list[BatchOutcome] = []

        def body(con: duckdb.DuckDBPyConnection) -> None:
            outcome_box.clear()
            outcome_box.append(self._apply(con, prepared, batch_id or uuid.uuid4().hex, run_id, lineage, status))

        transaction(self.con, body)
        outcome = outcome_box[0]
        with catalog_gate(self.con):
            outcome.snapshot_id = self.con.execute("SELECT * FROM ducklake_current_snapshot('lake')").fetchone()[0]
        return outcome

    def _apply(
        self,
        con: duckdb.DuckDBPyConnection,
        p: Prepared,
        batch_id: str,
        run_id: str | None,
        lineage: LineageWriter | None,
        status: dict[str, Any] | None,
    ) -> BatchOutcome:
        import pyarrow as pa
        import pyarrow.compute as pc

        now = utcnow()
        out = BatchOutcome(batch_id=batch_id, deadletters=list(p.deadletters), min_event_time=p.min_event_time,
                           max_event_time=p.max_event_time)  # fmt: skip
        cols = {c: p.src[c].to_pylist() for c in ("_res", "status", "resource_type", "resource_id", "person_key",
                                                  "version_id", "last_updated", "content_hash", "part",
                                                  "off")}  # fmt: skip
        best, superseded = self._winners(p, cols)
        out.stale += superseded
        existing = self._existing(con, list(best))
        st, ch = cols["status"], cols["content_hash"]
        applied: dict[tuple[str, str], int] = {}
        for k, j in best.items():
            old = existing.get(k)
            is_delete = st[j] in ("deleted", "retracted")
            if old is not None:
                same = old["content_hash"] is not None and old["content_hash"] == ch[j]
                if (same and bool(old["deleted"]) == is_delete) or compare(_meta(cols, j), old) < 0:
                    out.stale += 1
                    continue
            applied[k] = j
        skipped_types: Counter[str] = Counter()
        for (rt, _), j in applied.items():
            if st[j] == "skipped":
                out.skipped += 1
                skipped_types[rt] += 1
            elif st[j] in ("deleted", "retracted"):
                out.deleted += 1
            else:
                out.applied += 1
            if cols["person_key"][j]:
                out.person_keys.add(cols["person_key"][j])
        # keep only the rows (and bookkeeping) of applied results: one vectorised filter per table
        res = cols["_res"]
        every = len(applied) == p.size - len(p.deadletters)  # dead letters have no rows: nothing to filter out
        order = [res[j] for j in applied.values()]
        keep = pa.array(order, pa.int64())

        def pick(t: Any) -> Any:
            return t if every or not t.num_rows else t.filter(pc.is_in(t["_res"], value_set=keep))

        row_map, flags_t = pick(p.row_map), pick(p.flags)
        src = p.src if len(applied) == p.size else p.src.take(pa.array(list(applied.values()), pa.int64()))
        new_tables = {t: self._dedupe(t, pick(data), order) for t, data in p.tables.items()}
        new_tables = {t: data for t, data in new_tables.items() if data.num_rows}
        touched_persons = set(row_map["person_id"].to_pylist()) - {None}
        # Rows in the lake that this batch replaces: those of earlier versions of the applied resources, and any
        # row whose (deterministic) id is written again. Every lake row is in fhir_row_map, so one lookup finds them.
        known = [k for k in applied if k in existing]  # only these can have rows or a version in the lake
        shared: dict[str, set[int]] = defaultdict(set)
        sh = row_map.filter(row_map["shared"]) if row_map.num_rows else row_map
        for table, rid in zip(sh["omop_table"].to_pylist(), sh["omop_row_id"].to_pylist(), strict=True):
            shared[table].add(rid)
        old_rows, existing_ids, shrunk = self._old_rows(con, known, shared)
        touched_persons |= shrunk
        # delete replaced and superseded rows, then insert (row-level idempotency: ids are deterministic)
        for table in set(old_rows) | set(existing_ids):
            ids = old_rows.get(table, set()) | existing_ids.get(table, set())
            if not ids:
                continue
            pk = PK[table]
            con.register("_ids", pa.table({"id": pa.array(list(ids), pa.int64())}))
            try:
                con.execute(f"DELETE FROM omop.{table} WHERE {pk} IN (SELECT id FROM _ids)")
            finally:
                con.unregister("_ids")
            new_ids = set(new_tables[table][PK[table]].to_pylist()) if table in new_tables else set()
            out.rows_deleted += len(old_rows.get(table, set()) - new_ids)
        for table, data in new_tables.items():
            self._insert_arrow(con, table, data)
            out.rows_written += data.num_rows
            out.rows_by_table[table] = data.num_rows
        self._insert_bookkeeping(con, src, row_map, now)
        out.person_ids = touched_persons
        events = _event_columns(new_tables)
        self._observation_periods(con, touched_persons, shrunk, events)
        checks, check_tables = flags_t["check_name"].to_pylist(), flags_t["omop_table"].to_pylist()
        flag_counts: Counter[tuple[str, str]] = Counter(zip(checks, check_tables, strict=True))
        if flags_t.num_rows:
            con.register("_fl", flags_t)
            try:
                con.execute("INSERT INTO omop.dq_flags (batch_id, omop_table, omop_row_id, check_name, detail, "
                            "flagged_at) SELECT ?, omop_table, omop_row_id, check_name, detail, ? FROM _fl",
                            [batch_id, now])  # fmt: skip
            finally:
                con.unregister("_fl")
        self._insert(con, "dq_flags", self._sql_checks(con, events, batch_id, now, flag_counts))
        self._dq_results(con, batch_id, run_id, now, flag_counts, {t: d.num_rows for t, d in new_tables.items()},
                         out)  # fmt: skip
        self._insert(con, "skipped_resources", [
            {"batch_id": batch_id, "resource_type": t, "reason": "resource type not mapped to the OMOP CDM", "n": n,
             "recorded_at": now} for t, n in skipped_types.items()])  # fmt: skip
        if lineage is not None:
            lineage.max_buffer = max(lineage.max_buffer, 1 << 40)  # never self-flush inside our transaction
            self._insert_edges(con, src, row_map, lineage.run_id)
            lineage.write_into(con)
        if status is not None:
            row = {**status, "batch_id": batch_id, "run_id": run_id, "committed_at": utcnow(),
                   "rows_written": out.rows_written, "rows_deleted": out.rows_deleted,
                   "dead_letters": len(out.deadletters), "skipped": out.skipped, "stale": out.stale,
                   "min_event_time": out.min_event_time, "max_event_time": out.max_event_time}  # fmt: skip
            self._insert(con, "stream_status", [row])
        return out

    @staticmethod
    def _dedupe(table: str, data: Any, order: list[int]) -> Any:
        """One row per id: when two applied results write the same row id (rows shared between resources), the
        later result in applied order wins (then the later row), as one dict keyed by id would have it."""
        if data.num_rows < 2:
            return data
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = data[PK[table]]
        if pc.count_distinct(ids).as_py() == data.num_rows:
            return data
        rank = {r: k for k, r in enumerate(order)}
        last: dict[Any, tuple[int, int]] = {}
        for pos, (rid, r) in enumerate(zip(ids.to_pylist(), data["_res"].to_pylist(), strict=True)):
            key = (rank.get(r, -1), pos)
            if rid not in last or key > last[rid]:
                last[rid] = key
        return data.take(pa.array(sorted(pos for _, pos in last.values()), pa.int64()))

    @staticmethod
    def _insert_bookkeeping(con: duckdb.DuckDBPyConnection, src: Any, row_map: Any, now: datetime) -> None:
        """The applied sources' row map and versions (what the next batch's upsert/delete decisions read)."""
        if not src.num_rows:
            return
        con.register("_src", src)
        con.register("_rm", row_map)
        try:
            if row_map.num_rows:
                con.execute(
                    "INSERT INTO omop.fhir_row_map (resource_type, resource_id, omop_table, omop_row_id, person_id) "
                    "SELECT s.resource_type, s.resource_id, m.omop_table, m.omop_row_id, m.person_id "
                    "FROM _rm m JOIN _src s USING (_res)"
                )
            con.execute(
                "INSERT INTO omop.fhir_source_versions (resource_type, resource_id, person_key, version_id, "
                "version_rank, last_updated, deleted, content_hash, event_id, kafka_ref, updated_at) "
                "SELECT resource_type, resource_id, person_key, version_id, version_rank, "
                "CAST(last_updated_ts AS TIMESTAMPTZ), status IN ('deleted', 'retracted'), content_hash, event_id, "
                "kafka_ref, ? FROM _src",
                [now],
            )
        finally:
            con.unregister("_src")
            con.unregister("_rm")

    @staticmethod
    def _insert_edges(con: duckdb.DuckDBPyConnection, src: Any, row_map: Any, run_id: str | None) -> None:
        """Lineage per record, built in SQL from the applied sources and their row map (attrs JSON as
        `LineageWriter.edge_rows` writes it): kafka -> fhir/dicom version
        ("carried") and fhir/dicom version -> omop row ("mapped_to")."""
        from lineage import insert_edges_from

        con.register("_src", src)
        con.register("_rm", row_map)
        try:
            insert_edges_from(
                con,
                "SELECT 'kafka', kafka_ref, CASE WHEN kind = 'fhir' THEN 'fhir' ELSE 'dicom' END, node, 'carried', "
                "json_object('event_id', event_id)::VARCHAR FROM _src WHERE kafka_ref IS NOT NULL "
                "UNION ALL "
                "SELECT s.kind, s.node, 'omop', m.omop_table || '/' || m.omop_row_id, 'mapped_to', "
                "json_object('event_id', s.event_id, 'kafka', s.kafka_ref)::VARCHAR "
                "FROM _rm m JOIN _src s USING (_res)",
                run_id=run_id,
            )
        finally:
            con.unregister("_src")
            con.unregister("_rm")

    def _old_rows(
        self,
        con: duckdb.DuckDBPyConnection,
        keys: list[tuple[str, str]],
        new_rows: dict[str, dict[int, dict[str, Any]]],
    ) -> tuple[dict[str, set[int]], dict[str, set[int]], set[int]]:
        """(rows of earlier versions of `keys`, new row ids already in the lake, persons whose rows went away);
        also drops the row-map and version entries of `keys` (re-inserted by the caller)."""
        old: dict[str, set[int]] = defaultdict(set)
        existing: dict[str, set[int]] = defaultdict(set)
        shrunk: set[int] = set()
        if not keys and not new_rows:  # a batch of first-seen resources: nothing in the lake to replace
            return old, existing, shrunk
        con.register("_applied", _arrow([{"resource_type": t, "resource_id": i} for t, i in keys],
                                        ["resource_type", "resource_id"]))  # fmt: skip
        con.register("_new", _arrow([{"omop_table": t, "omop_row_id": i} for t, rows in new_rows.items() for i in rows],
                                    ["omop_table", "omop_row_id"]))  # fmt: skip
        try:
            for table, rid, pid, mine in con.execute(
                "SELECT m.omop_table, m.omop_row_id, m.person_id, a.resource_type IS NOT NULL FROM omop.fhir_row_map m "
                "LEFT JOIN _applied a USING (resource_type, resource_id) "
                "LEFT JOIN _new n ON n.omop_table = m.omop_table AND n.omop_row_id = m.omop_row_id "
                "WHERE a.resource_type IS NOT NULL OR n.omop_row_id IS NOT NULL"
            ).fetchall():
                if mine:
                    old[table].add(rid)
                    if pid is not None:
                        shrunk.add(pid)
                else:
                    existing[table].add(rid)
            if old:
                con.execute("DELETE FROM omop.fhir_row_map WHERE (resource_type, resource_id) IN "
                            "(SELECT resource_type, resource_id FROM _applied)")  # fmt: skip
            if keys:
                con.execute("DELETE FROM omop.fhir_source_versions WHERE (resource_type, resource_id) IN "
                            "(SELECT resource_type, resource_id FROM _applied)")  # fmt: skip
        finally:
            con.unregister("_applied")
            con.unregister("_new")
        return old, existing, shrunk

    def _insert(self, con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        names = list(dict.fromkeys(k for r in rows for k in r))
        self._insert_arrow(con, table, _arrow(rows, names))

    def _insert_arrow(self, con: duckdb.DuckDBPyConnection, table: str, data: Any) -> None:
        """Insert an Arrow table into omop.`table`, cast to the lake's column types; columns it lacks are NULL."""
        if not data.num_rows:
            return
        cols = self.columns(table)
        have = set(data.column_names) - {"_res"}
        extra = have - {c for c, _ in cols}
        if extra:
            raise ValueError(f"omop.{table} has no column(s) {sorted(extra)}")
        select = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' if c in have else f'CAST(NULL AS {t}) AS "{c}"'
                           for c, t in cols)  # fmt: skip
        con.register("_rows", data)
        try:
            con.execute(f"INSERT INTO omop.{table} SELECT {select} FROM _rows")
        finally:
            con.unregister("_rows")

    def _observation_periods(self, con: duckdb.DuckDBPyConnection, persons: set[int], shrunk: set[int],
                             events: dict[str, tuple[list[Any], ...]]) -> None:  # fmt: skip
        """Keep one observation period per person spanning their events: widened incrementally from this batch's
        rows, recomputed from all their events when rows of theirs were removed."""
        if not persons:
            return
        span: dict[int, list[str]] = {}
        for _, pids, starts, ends in events.values():
            for p, s0, end in zip(pids, starts, ends, strict=True):
                if p is None or s0 is None or p in shrunk:
                    continue
                e0 = max(s0, end or s0)
                cur = span.get(p)
                span[p] = [min(cur[0], s0), max(cur[1], e0)] if cur else [s0, e0]
        con.register("_persons", _arrow([{"person_id": p} for p in persons], ["person_id"]))
        try:
            stored = {
                p: [s0, e0]
                for p, s0, e0 in con.execute(
                    "SELECT person_id, observation_period_start_date::VARCHAR, observation_period_end_date::VARCHAR "
                    "FROM omop.observation_period WHERE person_id IN (SELECT person_id FROM _persons)"
                ).fetchall()
            }
        finally:
            con.unregister("_persons")
        for p, (s0, e0) in stored.items():
            if p in shrunk:
                continue
            cur = span.get(p)
            span[p] = [min(cur[0], s0), max(cur[1], e0)] if cur else [s0, e0]
        if shrunk:
            con.register("_shrunk", _arrow([{"person_id": p} for p in shrunk], ["person_id"]))
            try:
                spans = " UNION ALL ".join(
                    f"SELECT person_id, {d} AS s, {EVENT_END_DATES.get(t, d)} AS e FROM omop.{t} "
                    f"WHERE person_id IN (SELECT person_id FROM _shrunk)"
                    for t, d in EVENT_DATES.items()
                )
                for p, s0, e0 in con.execute(
                    f"SELECT person_id, min(s)::VARCHAR, max(greatest(s, coalesce(e, s)))::VARCHAR FROM ({spans}) "
                    "GROUP BY person_id"
                ).fetchall():
                    span[p] = [s0, e0]
            finally:
                con.unregister("_shrunk")
        # Only periods that change are rewritten: a batch of new persons (or of events inside known periods)
        # deletes nothing, and skips the DELETE's scan of the table.
        changed = {p for p in span if stored.get(p) != span[p]}
        gone = {p for p in stored if p not in span} | {p for p in changed if p in stored}
        if gone:
            con.register("_gone", _arrow([{"person_id": p} for p in gone], ["person_id"]))
            try:
                con.execute("DELETE FROM omop.observation_period WHERE person_id IN (SELECT person_id FROM _gone)")
            finally:
                con.unregister("_gone")
        self._insert(con, "observation_period", [
            {"observation_period_id": omop_id("observation_period", p), "person_id": p,
             "observation_period_start_date": s0, "observation_period_end_date": e0,
             "period_type_concept_id": 44814724} for p, (s0, e0) in span.items() if p in changed])  # fmt: skip

    def _sql_checks(
        self,
        con: duckdb.DuckDBPyConnection,
        events: dict[str, tuple[list[Any], ...]],
        batch_id: str,
        now: datetime,
        counts: Counter[tuple[str, str]],
    ) -> list[dict[str, Any]]:
        """DQD plausibility checks that need other rows: events before birth or > 60 days after death (flagged,
        loaded). Birth and death dates of the batch's persons come from the lake (one small query on person/death,
        after this batch's inserts) rather than joining whole event tables."""
        persons = {p for _, pids, _, _ in events.values() for p in pids} - {None}
        if not persons:
            return []
        con.register("_p", _arrow([{"person_id": p} for p in persons], ["person_id"]))
        try:
            found = con.execute(
                "SELECT p.person_id, p.year_of_birth, p.month_of_birth, p.day_of_birth, d.death_date "
                "FROM omop.person p LEFT JOIN omop.death d USING (person_id) "
                "WHERE p.person_id IN (SELECT person_id FROM _p)"
            ).fetchall()
        finally:
            con.unregister("_p")
        birth: dict[int, str] = {}
        late: dict[int, str] = {}
        for pid, y, m, d, death in found:
            if y:
                birth[pid] = f"{y:04d}-{m or 1:02d}-{d or 1:02d}"
            if death is not None:
                late[pid] = (death + timedelta(days=60)).isoformat()
        flags: list[dict[str, Any]] = []
        for table, (ids, pids, days, _) in events.items():
            date_col = EVENT_DATES[table]
            for rid, pid, day in zip(ids, pids, days, strict=True):
                if day is None or pid is None:
                    continue
                check = None
                if pid in birth and day < birth[pid]:
                    check = "event_before_birth"
                elif pid in late and day > late[pid]:
                    check = "event_after_death"
                if check:
                    flags.append({"batch_id": batch_id, "omop_table": table, "omop_row_id": rid, "check_name": check,
                                  "detail": f"{date_col} {day}", "flagged_at": now})  # fmt: skip
                    counts[(check, table)] += 1
        return flags

    def _dq_results(self, con: duckdb.DuckDBPyConnection, batch_id: str, run_id: str | None, now: datetime,
                    counts: Counter[tuple[str, str]], totals: dict[str, int], out: BatchOutcome) -> None:  # fmt: skip
        rows = []
        for (check, table), n in sorted(counts.items()):
            total = totals.get(table, 0)
            rows.append({"batch_id": batch_id, "run_id": run_id, "checked_at": now, "check_name": check,
                         "category": CATEGORY.get(check, "conformance"), "cdm_table": table, "cdm_field": None,
                         "severity": "flag", "num_violated": n, "num_rows": total,
                         "pct_violated": n / total if total else None})  # fmt: skip
        dl = Counter(r.get("check") or "invalid_resource" for r in out.deadletters)
        for check, n in sorted(dl.items()):
            rows.append({"batch_id": batch_id, "run_id": run_id, "checked_at": now, "check_name": check,
                         "category": CATEGORY.get(check, "conformance"), "cdm_table": None, "cdm_field": None,
                         "severity": "deadletter", "num_violated": n, "num_rows": len(out.deadletters),
                         "pct_violated": None})  # fmt: skip
        self._insert(con, "dq_results", rows)
