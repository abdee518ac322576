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

from careloop.duck import transaction
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
    def winners(results: list[dict[str, Any]]) -> tuple[dict[tuple[str, str], dict[str, Any]], int]:
        """Newest result per source resource within the batch (dead letters are not versioned)."""
        best: dict[tuple[str, str], dict[str, Any]] = {}
        superseded = 0
        for r in sorted(results, key=lambda r: tuple(r["src"].get("seq") or (0, 0))):
            src = r["src"]
            if r["status"] == "deadletter" or not src.get("resource_id") or not src.get("resource_type"):
                continue
            k = (src["resource_type"], src["resource_id"])
            if k in best:
                superseded += 1
                if compare(src, best[k]["src"]) < 0:
                    continue
            best[k] = r
        return best, superseded

    def _existing(self, con: duckdb.DuckDBPyConnection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        if not keys:
            return {}
        keys_t = _arrow([{"resource_type": t, "resource_id": i} for t, i in keys], ["resource_type", "resource_id"])
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
    def commit(self, results: list[dict[str, Any]], *, batch_id: str | None = None, run_id: str | None = None,
               lineage: LineageWriter | None = None, status: dict[str, Any] | None = None) -> BatchOutcome:  # fmt: skip
        """Apply `results` (from `FhirToOmop`) in one lake transaction (retried as a whole on commit conflicts)."""
        outcome_box: list[BatchOutcome] = []

        def body(con: duckdb.DuckDBPyConnection) -> None:
            outcome_box.clear()
            outcome_box.append(self._apply(con, results, batch_id or uuid.uuid4().hex, run_id, lineage, status))

        transaction(self.con, body)
        outcome = outcome_box[0]
        outcome.snapshot_id = self.con.execute("SELECT * FROM ducklake_current_snapshot('lake')").fetchone()[0]
        return outcome

    def _apply(
        self,
        con: duckdb.DuckDBPyConnection,
        results: list[dict[str, Any]],
        batch_id: str,
        run_id: str | None,
        lineage: LineageWriter | None,
        status: dict[str, Any] | None,
    ) -> BatchOutcome:
        now = utcnow()
        out = BatchOutcome(batch_id=batch_id)
        for r in results:
            t = _ts(r["src"].get("occurred_at"))
            if t is not None:
                out.min_event_time = t if out.min_event_time is None else min(out.min_event_time, t)
                out.max_event_time = t if out.max_event_time is None else max(out.max_event_time, t)
            if r["status"] == "deadletter":
                out.deadletters.append(r)
        best, superseded = self.winners(results)
        out.stale += superseded
        existing = self._existing(con, list(best))
        applied: dict[tuple[str, str], dict[str, Any]] = {}
        for k, r in best.items():
            old = existing.get(k)
            src = r["src"]
            is_delete = r["status"] in ("deleted", "retracted")
            if old is not None:
                same = old["content_hash"] is not None and old["content_hash"] == src.get("content_hash")
                if (same and bool(old["deleted"]) == is_delete) or compare(src, old) < 0:
                    out.stale += 1
                    continue
            applied[k] = r
        new_rows: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        touched_persons: set[int] = set()
        row_map, versions, flags, edges = [], [], [], []
        shared_ids: dict[str, set[int]] = defaultdict(set)
        flag_counts: Counter[tuple[str, str]] = Counter()
        for (rt, rid), r in applied.items():
            src = r["src"]
            if r["status"] == "skipped":
                out.skipped += 1
            elif r["status"] in ("deleted", "retracted"):
                out.deleted += 1
            else:
                out.applied += 1
            if src.get("person_key"):
                out.person_keys.add(src["person_key"])
            versions.append({"resource_type": rt, "resource_id": rid, "person_key": src.get("person_key"),
                             "version_id": src.get("version_id"), "version_rank": _rank(src.get("version_id")),
                             "last_updated": _ts(src.get("last_updated")),
                             "deleted": r["status"] in ("deleted", "retracted"),
                             "content_hash": src.get("content_hash"), "event_id": src.get("event_id"),
                             "kafka_ref": src.get("kafka_ref"), "updated_at": now})  # fmt: skip
            node = fhir_node(src)
            if src.get("kafka_ref"):
                edges.append(("kafka", src["kafka_ref"], "fhir" if src["kind"] == "fhir" else "dicom", node,
                              "carried", {"event_id": src.get("event_id")}))  # fmt: skip
            for row in r["rows"]:
                table, row_id = row["table"], row["id"]
                new_rows[table][row_id] = row["row"]
                if row.get("shared"):
                    shared_ids[table].add(row_id)
                pid = row["row"].get("person_id")
                row_map.append({"resource_type": rt, "resource_id": rid, "omop_table": table, "omop_row_id": row_id,
                                "person_id": pid})  # fmt: skip
                if pid is not None:
                    touched_persons.add(pid)
                edges.append((src["kind"], node, "omop", f"{table}/{row_id}", "mapped_to",
                              {"event_id": src.get("event_id"), "kafka": src.get("kafka_ref")}))  # fmt: skip
                for check, detail in row["flags"]:
                    flags.append({"batch_id": batch_id, "omop_table": table, "omop_row_id": row_id,
                                  "check_name": check, "detail": detail[:500], "flagged_at": now})  # fmt: skip
                    flag_counts[(check, table)] += 1
        # Rows in the lake that this batch replaces: those of earlier versions of the applied resources, and any
        # row whose (deterministic) id is written again. Every lake row is in fhir_row_map, so one lookup finds them.
        known = [k for k in applied if k in existing]  # only these can have rows or a version in the lake
        shared = {t: {rid for rid in rows if rid in shared_ids.get(t, ())} for t, rows in new_rows.items()}
        old_rows, existing_ids, shrunk = self._old_rows(con, known, {t: r for t, r in shared.items() if r})
        touched_persons |= shrunk
        # delete replaced and superseded rows, then insert (row-level idempotency: ids are deterministic)
        for table in set(old_rows) | set(existing_ids):
            ids = old_rows.get(table, set()) | existing_ids.get(table, set())
            if not ids:
                continue
            pk = PK[table]
            con.register("_ids", _arrow([{"id": i} for i in ids], ["id"]))
            try:
                con.execute(f"DELETE FROM omop.{table} WHERE {pk} IN (SELECT id FROM _ids)")
            finally:
                con.unregister("_ids")
            out.rows_deleted += len(old_rows.get(table, set()) - set(new_rows.get(table, {})))
        for table, rows in new_rows.items():
            self._insert(con, table, list(rows.values()))
            out.rows_written += len(rows)
            out.rows_by_table[table] = len(rows)
        self._insert(con, "fhir_row_map", row_map)
        self._insert(con, "fhir_source_versions", versions)
        out.person_ids = touched_persons
        self._observation_periods(con, touched_persons, shrunk, new_rows)
        flags.extend(self._sql_checks(con, new_rows, batch_id, now, flag_counts))
        self._insert(con, "dq_flags", flags)
        self._dq_results(con, batch_id, run_id, now, flag_counts, new_rows, out)
        skipped_types = Counter(r["src"]["resource_type"] for r in applied.values() if r["status"] == "skipped")
        self._insert(con, "skipped_resources", [
            {"batch_id": batch_id, "resource_type": t, "reason": "resource type not mapped to the OMOP CDM", "n": n,
             "recorded_at": now} for t, n in skipped_types.items()])  # fmt: skip
        if lineage is not None:
            lineage.max_buffer = max(lineage.max_buffer, 1 << 40)  # never self-flush inside our transaction
            lineage.edge_rows(edges)
            lineage.write_into(con)
        if status is not None:
            row = {**status, "batch_id": batch_id, "run_id": run_id, "committed_at": utcnow(),
                   "rows_written": out.rows_written, "rows_deleted": out.rows_deleted,
                   "dead_letters": len(out.deadletters), "skipped": out.skipped, "stale": out.stale,
                   "min_event_time": out.min_event_time, "max_event_time": out.max_event_time}  # fmt: skip
            self._insert(con, "stream_status", [row])
        return out

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
        cols = self.columns(table)
        known = {c for c, _ in cols}
        extra = {k for r in rows for k in r} - known
        if extra:
            raise ValueError(f"omop.{table} has no column(s) {sorted(extra)}")
        data = _arrow(rows, [c for c, _ in cols])
        select = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in cols)
        con.register("_rows", data)
        try:
            con.execute(f"INSERT INTO omop.{table} SELECT {select} FROM _rows")
        finally:
            con.unregister("_rows")

    def _observation_periods(self, con: duckdb.DuckDBPyConnection, persons: set[int], shrunk: set[int],
                             new_rows: dict[str, dict[int, dict[str, Any]]]) -> None:  # fmt: skip
        """Keep one observation period per person spanning their events: widened incrementally from this batch's
        rows, recomputed from all their events when rows of theirs were removed."""
        if not persons:
            return
        span: dict[int, list[str]] = {}
        for table, date_col in EVENT_DATES.items():
            end_col = EVENT_END_DATES.get(table, date_col)
            for row in new_rows.get(table, {}).values():
                p, s0 = row.get("person_id"), row.get(date_col)
                if p is None or s0 is None or p in shrunk:
                    continue
                e0 = max(s0, row.get(end_col) or s0)
                cur = span.get(p)
                span[p] = [min(cur[0], s0), max(cur[1], e0)] if cur else [s0, e0]
        con.register("_persons", _arrow([{"person_id": p} for p in persons], ["person_id"]))
        try:
            for p, s0, e0 in con.execute(
                "SELECT person_id, observation_period_start_date::VARCHAR, observation_period_end_date::VARCHAR "
                "FROM omop.observation_period WHERE person_id IN (SELECT person_id FROM _persons)"
            ).fetchall():
                if p in shrunk:
                    continue
                cur = span.get(p)
                span[p] = [min(cur[0], s0), max(cur[1], e0)] if cur else [s0, e0]
            if shrunk:
                con.register("_shrunk", _arrow([{"person_id": p} for p in shrunk], ["person_id"]))
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
                con.unregister("_shrunk")
            con.execute("DELETE FROM omop.observation_period WHERE person_id IN (SELECT person_id FROM _persons)")
        finally:
            con.unregister("_persons")
        self._insert(con, "observation_period", [
            {"observation_period_id": omop_id("observation_period", p), "person_id": p,
             "observation_period_start_date": s0, "observation_period_end_date": e0,
             "period_type_concept_id": 44814724} for p, (s0, e0) in span.items()])  # fmt: skip

    def _sql_checks(
        self,
        con: duckdb.DuckDBPyConnection,
        new_rows: dict[str, dict[int, dict[str, Any]]],
        batch_id: str,
        now: datetime,
        counts: Counter[tuple[str, str]],
    ) -> list[dict[str, Any]]:
        """DQD plausibility checks that need other rows: events before birth or > 60 days after death (flagged,
        loaded). Birth and death dates of the batch's persons come from the lake (one small query on person/death,
        after this batch's inserts) rather than joining whole event tables."""
        persons = {r.get("person_id") for t in EVENT_DATES for r in new_rows.get(t, {}).values()} - {None}
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
        for table, date_col in EVENT_DATES.items():
            for rid, row in new_rows.get(table, {}).items():
                pid, day = row.get("person_id"), row.get(date_col)
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
                    counts: Counter[tuple[str, str]], new_rows: dict[str, dict[int, dict[str, Any]]],
                    out: BatchOutcome) -> None:  # fmt: skip
        rows = []
        for (check, table), n in sorted(counts.items()):
            total = len(new_rows.get(table, {}))
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
