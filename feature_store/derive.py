"""Feature derivation in SQL over the OMOP lake (DuckDB), in event time, at one lake snapshot.

For each person, feature rows are computed *as of* each of their event times (the time of every measurement,
visit, condition, drug start/end and imaging study) from the rows with an event time at or before it: a late or
corrected event therefore changes exactly the rows from its event time on. The same query serves the stream hook
(the touched persons, from the batch's earliest event time) and the backfill (all persons, a time range).
Reading `AT (VERSION => snapshot)` makes every result reproducible from the recorded lake snapshot id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from careloop.duck import catalog_gate, open_catalog
from careloop.duck import snapshot_time as lake_snapshot_time
from feature_store import vocab
from feature_store.concepts import (
    CONDITIONS,
    GENDER,
    LABS,
    MEDICATION_CLASSES,
    RACE,
    VISIT_EMERGENCY,
    VISIT_INPATIENT,
    VITALS,
)
from feature_store.definitions import VIEWS, VITAL_STATS, VITAL_WINDOWS

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

TS_FMT = "%Y-%m-%dT%H:%M:%S+00:00"  # node-id format of feature event times in lineage (`view/entity/time`)
FLOAT_DECIMALS = 9  # rounding makes parallel float aggregation order irrelevant to reproducibility
# Which OMOP table feeds which view (for `omop row -> feature value` lineage edges).
TABLE_VIEWS = {
    "measurement": ("vitals", "labs"),
    "visit_occurrence": ("utilization",),
    "condition_occurrence": ("conditions",),
    "drug_exposure": ("medications",),
    "image_occurrence": ("imaging",),
}


@dataclass
class Derived:
    """Wide feature rows (`person_id`, `event_timestamp`, every feature) and the lineage edges that produced them."""

    snapshot_id: int
    rows: pa.Table
    edges: pa.Table


def current_snapshot(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT id FROM lake.current_snapshot()").fetchall()[0][0])


def _in_list(values: object) -> str:
    return ", ".join(str(int(v)) for v in values)  # ints only: safe to inline


def _values(rows: list[tuple], names: str, alias: str = "t") -> str:
    def lit(v: object) -> str:
        if isinstance(v, str):
            return "'" + v.replace("'", "''") + "'"
        return "NULL" if v is None else repr(v)

    body = ", ".join("(" + ", ".join(lit(v) for v in r) + ")" for r in rows)
    return f"(VALUES {body}) AS {alias}({names})"


def _case(expr: str, mapping: dict[int, str]) -> str:
    return "CASE " + expr + " " + " ".join(f"WHEN {k} THEN '{v}'" for k, v in mapping.items()) + " END"


_TEMP = ("_fs_g", "_fs_m", "_fs_v", "_fs_c", "_fs_d", "_fs_i", "_fs_pay", "_fs_person", "_fs_persons", "_fs_unbounded")


def _measure_rules() -> str:
    rows = []
    for kind, measures in (("vital", VITALS), ("lab", LABS)):
        for m in measures:
            for c in m.concepts:
                for u in m.units:
                    rows.append(
                        (
                            c,
                            m.key,
                            kind,
                            u.unit_concept_id,
                            u.unit_source,
                            float(u.factor),
                            float(u.offset),
                            float(m.plausible[0]),
                            float(m.plausible[1]),
                        )
                    )
    return _values(rows, "concept_id, key, kind, unit_concept_id, unit_source, factor, off, lo, hi", "r")


def _set_rows(sets: tuple) -> tuple[str, str]:
    ids = [(c, s.key) for s in sets for c in s.concepts]
    pats = [(p, s.key) for s in sets for p in s.name_patterns] or [("\x00never\x00", "_none")]
    return _values(ids, "concept_id, key"), _values(pats, "pattern, key", "p")


HISTORY_SLACK = timedelta(days=366)  # > every window (365 days): rows older than grid - this never count


def _prepare(
    con: duckdb.DuckDBPyConnection,
    snap: int,
    persons: list[int] | None,
    lo: datetime | None = None,
    unbounded: list[int] | None = None,
) -> None:
    """Temp tables of the (touched) persons' normalized OMOP rows. With `lo` (naive UTC), windowed sources keep
    only rows that can still count at an as-of time >= lo + HISTORY_SLACK (every window is <= 365 days), so
    the work follows the persons' recent history, not their whole history; condition flags ("ever") keep all.
    The `unbounded` persons keep their whole history (their latest point may be older than the bound)."""
    at = f"AT (VERSION => {snap})"
    pf = "" if persons is None else "WHERE person_id IN (SELECT person_id FROM _fs_persons)"
    if persons is not None:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _fs_persons AS SELECT DISTINCT unnest(?::BIGINT[]) AS person_id",
            [sorted({int(p) for p in persons})],
        )
    low = "" if lo is None else f"TIMESTAMP '{lo:%Y-%m-%d %H:%M:%S}'"
    exempt = ""
    if lo is not None and unbounded:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _fs_unbounded AS SELECT DISTINCT unnest(?::BIGINT[]) AS person_id",
            [sorted({int(p) for p in unbounded})],
        )
        exempt = " OR person_id IN (SELECT person_id FROM _fs_unbounded)"

    def after(*exprs: str) -> str:  # the row can still be in a window at/after the bound
        if not low:
            return ""
        expr = f"greatest({', '.join(exprs)})" if len(exprs) > 1 else exprs[0]
        return f" AND ({expr} > {low}{exempt})"

    def on_or_after(date_column: str) -> str:
        """The same bound on a plain DATE column, which DuckLake can prune data files by (min/max per file), so
        the scan skips old files instead of growing with the lake. `*_date` is the date of `*_datetime` in the
        CDM; two days of slack cover a time-zone shift between them, and a NULL date keeps the row."""
        if lo is None:
            return ""
        return f" AND ({date_column} >= DATE '{lo - timedelta(days=2):%Y-%m-%d}' OR {date_column} IS NULL{exempt})"

    # concept sets expanded with their descendants, cached per vocabulary version (vocab.py)
    vocab.ensure(
        con,
        snap,
        {
            "cond": [(c, s.key) for s in CONDITIONS for c in s.concepts],
            "drug": [(c, s.key) for s in MEDICATION_CLASSES for c in s.concepts],
        },
    )
    _, drug_pats = _set_rows(MEDICATION_CLASSES)

    def src(table: str, filtered: bool = True) -> str:
        return f"(SELECT * FROM omop.{table} {at} {pf if filtered else ''})"

    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _fs_person0 AS
        SELECT person_id, person_source_value, birth_datetime, year_of_birth, month_of_birth, day_of_birth,
               gender_concept_id, race_concept_id, ethnicity_concept_id
        FROM omop.person {at} {pf};

        CREATE OR REPLACE TEMP TABLE _fs_d0 AS
        SELECT drug_exposure_id AS row_id, person_id, drug_concept_id,
               coalesce(drug_exposure_start_datetime, CAST(drug_exposure_start_date AS TIMESTAMP)) AS ts,
               coalesce(CAST(drug_exposure_end_date AS TIMESTAMP) + INTERVAL 1 DAY,
                        CAST(drug_exposure_start_date AS TIMESTAMP) + to_days(CAST(days_supply AS INTEGER)),
                        CAST(drug_exposure_start_date AS TIMESTAMP) + INTERVAL 1 DAY) AS end_ts
        FROM omop.drug_exposure {at} {pf or "WHERE true"} {after("ts", "end_ts")};
    """)
    _sparse(
        con,
        "_fs_pay0",
        "payer_plan_period",
        snap,
        pf,
        f"""
        SELECT person_id, CAST(payer_plan_period_start_date AS TIMESTAMP) AS start_ts,
               CAST(payer_plan_period_end_date AS TIMESTAMP) + INTERVAL 1 DAY AS end_ts,
               payer_concept_id, payer_source_value
        FROM omop.payer_plan_period {at} {pf or "WHERE true"} {after("start_ts", "end_ts")}""",
    )
    vocab.lookup_names(
        con,
        snap,
        "SELECT race_concept_id FROM _fs_person0 UNION ALL SELECT ethnicity_concept_id FROM _fs_person0 "
        "UNION ALL SELECT payer_concept_id FROM _fs_pay0 WHERE payer_concept_id <> 0 "
        "UNION ALL SELECT drug_concept_id FROM _fs_d0",
    )
    names = vocab.NAME_TABLE

    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _fs_person AS
        SELECT p.person_id, p.person_source_value,
               coalesce(p.birth_datetime, make_timestamp(p.year_of_birth, coalesce(p.month_of_birth, 7),
                        coalesce(p.day_of_birth, 1), 0, 0, 0)) AS birth,
               coalesce(CASE p.gender_concept_id {" ".join(f"WHEN {k} THEN '{v}'" for k, v in GENDER.items())} END,
                        'U') AS sex,
               CASE WHEN coalesce(p.race_concept_id, 0) = 0 THEN NULL
                    ELSE coalesce(rc.concept_name, {_case("p.race_concept_id", RACE)},
                                  CAST(p.race_concept_id AS VARCHAR)) END AS race,
               CASE WHEN coalesce(p.ethnicity_concept_id, 0) = 0 THEN NULL
                    ELSE coalesce(ec.concept_name, CAST(p.ethnicity_concept_id AS VARCHAR)) END AS ethnicity
        FROM _fs_person0 p
        LEFT JOIN {names} rc ON rc.concept_id = p.race_concept_id
        LEFT JOIN {names} ec ON ec.concept_id = p.ethnicity_concept_id;

        CREATE OR REPLACE TEMP TABLE _fs_m AS
        SELECT m.measurement_id AS row_id, m.person_id,
               coalesce(m.measurement_datetime, CAST(m.measurement_date AS TIMESTAMP)) AS ts,
               r.key, r.kind, m.value_as_number * r.factor + r.off AS value
        FROM {src("measurement")} m
        JOIN {_measure_rules()} ON r.concept_id = m.measurement_concept_id
             AND (m.unit_concept_id = r.unit_concept_id
                  OR (coalesce(m.unit_concept_id, 0) = 0 AND m.unit_source_value = r.unit_source))
        WHERE m.value_as_number IS NOT NULL
          AND m.value_as_number * r.factor + r.off BETWEEN r.lo AND r.hi
          {after("coalesce(m.measurement_datetime, CAST(m.measurement_date AS TIMESTAMP))")}
          {on_or_after("m.measurement_date")};

        CREATE OR REPLACE TEMP TABLE _fs_v AS
        SELECT visit_occurrence_id AS row_id, person_id, visit_concept_id,
               coalesce(visit_start_datetime, CAST(visit_start_date AS TIMESTAMP)) AS ts,
               coalesce(visit_end_datetime, CAST(visit_end_date AS TIMESTAMP),
                        visit_start_datetime, CAST(visit_start_date AS TIMESTAMP)) AS end_ts
        FROM omop.visit_occurrence {at} {pf or "WHERE true"} {after("ts", "end_ts")};

        CREATE OR REPLACE TEMP TABLE _fs_c AS
        SELECT c.condition_occurrence_id AS row_id, c.person_id, s.key,
               coalesce(c.condition_start_datetime, CAST(c.condition_start_date AS TIMESTAMP)) AS ts
        FROM {src("condition_occurrence")} c
        JOIN (SELECT concept_id, key FROM {vocab.SET_TABLE} WHERE kind = 'cond') s
             ON s.concept_id = c.condition_concept_id;

        CREATE OR REPLACE TEMP TABLE _fs_d AS
        WITH cls AS (
            SELECT concept_id, key FROM {vocab.SET_TABLE} WHERE kind = 'drug'
            UNION
            SELECT c.concept_id, p.key FROM {names} c JOIN {drug_pats}
                ON lower(c.concept_name) LIKE '%' || p.pattern || '%'
            WHERE c.domain_id = 'Drug' AND c.concept_id IN (SELECT drug_concept_id FROM _fs_d0)
        )
        SELECT d.*, cls.key FROM _fs_d0 d LEFT JOIN cls ON cls.concept_id = d.drug_concept_id;

        CREATE OR REPLACE TEMP TABLE _fs_pay AS
        SELECT pp.person_id, pp.start_ts, pp.end_ts,
               coalesce(pc.concept_name, pp.payer_source_value, CAST(pp.payer_concept_id AS VARCHAR)) AS payer
        FROM _fs_pay0 pp
        LEFT JOIN {names} pc ON pc.concept_id = pp.payer_concept_id AND pp.payer_concept_id <> 0;
    """)
    _sparse(
        con,
        "_fs_i",
        "image_occurrence",
        snap,
        pf,
        f"""
        SELECT image_occurrence_id AS row_id, person_id,
               coalesce(image_occurrence_datetime, CAST(image_occurrence_date AS TIMESTAMP)) AS ts,
               image_study_uid, coalesce(modality_source_value, CAST(modality_concept_id AS VARCHAR)) AS modality,
               manufacturer, manufacturer_model_name AS model
        FROM omop.image_occurrence {at} {pf or "WHERE true"} {after("ts")} {on_or_after("image_occurrence_date")}""",
    )


def _sparse(con: duckdb.DuckDBPyConnection, name: str, table: str, snap: int, pf: str, select: str) -> None:
    """`CREATE TEMP TABLE name AS select` for a lake table that is often empty for the touched persons (imaging,
    payer periods). Reading a DuckLake table costs ~2.5 ms per referenced column even when it has no rows
    (measured), so a one-column probe decides first, or the snapshot log alone when the table was never written
    (a probe of an empty table still cost ~13-20 ms); with no rows, the (cached, empty) normalized table is
    copied instead of binding every column of the lake table."""
    template = f"_fs_tpl{name}"
    con.execute("CREATE TEMP TABLE IF NOT EXISTS _fs_templates(name VARCHAR)")  # (duckdb_tables() binds the lake)
    have = con.execute("SELECT count(*) FROM _fs_templates WHERE name = ?", [template]).fetchall()[0][0]
    if have and (
        vocab.never_written(con, table, snap)  # the snapshot log says empty: not even a probe
        or not con.execute(f"SELECT count(*) FROM omop.{table} AT (VERSION => {snap}) {pf}").fetchall()[0][0]
    ):
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {template}")
        return
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {select}")
    if not have:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {template} AS SELECT * FROM {name} LIMIT 0")
        con.execute("INSERT INTO _fs_templates VALUES (?)", [template])


def _grid(
    con: duckdb.DuckDBPyConnection,
    start: datetime | None,
    end: datetime | None,
    since: datetime | None,
    include_latest: bool,
    known_at: datetime | None = None,
) -> None:
    """As-of points: each person's event times in [start, end] and >= since; plus, when `include_latest`, the
    person's latest point <= end (so a stream batch always refreshes the current online value, even when
    a delete removed the batch's own event).

    Besides event times, the grid has each event's *window exit* times (event + 7/30/365 days, a visit's end +
    30/365 days, a payer period's start/end) up to `known_at` (the snapshot's commit time, so the grid is a
    function of the snapshot): a windowed count/mean/min/max/trend only changes when an event enters or leaves
    its window, so with those points a point-in-time join sees windows decay exactly."""
    base, params = ["ts IS NOT NULL", "person_id IN (SELECT person_id FROM _fs_person)"], []
    if end is not None:
        base.append("ts <= ?")
        params.append(_naive_utc(end))
    sel, sel_params = [], []
    for value in (start, since):
        if value is not None:
            sel.append("ts >= ?")
            sel_params.append(_naive_utc(value))
    exits = []
    if known_at is not None:
        vital_windows = sorted({*VITAL_WINDOWS, 365})
        exits = [
            *(f"SELECT person_id, ts + INTERVAL {w} DAY FROM _fs_m WHERE kind = 'vital'" for w in vital_windows),
            "SELECT person_id, ts + INTERVAL 365 DAY FROM _fs_m WHERE kind = 'lab'",
            *(f"SELECT person_id, {c} + INTERVAL {w} DAY FROM _fs_v" for c in ("ts", "end_ts") for w in (30, 365)),
            "SELECT person_id, ts + INTERVAL 365 DAY FROM _fs_i",
            "SELECT person_id, start_ts FROM _fs_pay",
            "SELECT person_id, end_ts FROM _fs_pay",
        ]
    exit_sql = (
        f"UNION ALL SELECT person_id, ts FROM ({' UNION ALL '.join(exits)}) x(person_id, ts) WHERE ts <= ?"
        if exits
        else ""
    )
    exit_params = [_naive_utc(known_at)] if exits and known_at is not None else []
    latest = "UNION SELECT person_id, max(ts) FROM e GROUP BY person_id" if include_latest else ""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _fs_g AS
        WITH e AS (
            SELECT DISTINCT person_id, ts FROM (
                SELECT person_id, ts FROM _fs_m UNION ALL SELECT person_id, ts FROM _fs_v
                UNION ALL SELECT person_id, ts FROM _fs_c UNION ALL SELECT person_id, ts FROM _fs_d
                UNION ALL SELECT person_id, end_ts FROM _fs_d UNION ALL SELECT person_id, ts FROM _fs_i
                {exit_sql}
            ) x WHERE {" AND ".join(base)}
        )
        SELECT person_id, ts FROM e WHERE {" AND ".join(sel) or "true"} {latest}
    """,
        exit_params + params + sel_params,
    )


def snapshot_time(con: duckdb.DuckDBPyConnection, snapshot_id: int) -> datetime:
    """When a lake snapshot was committed (UTC)."""
    got = lake_snapshot_time(con, snapshot_id)
    if got is None:
        from feature_store.errors import FeatureStoreError

        raise FeatureStoreError(f"lake snapshot {snapshot_id} does not exist")
    return got


def _naive_utc(value: datetime) -> datetime:
    """Lake timestamps are naive UTC; aware inputs are converted, naive inputs are taken as UTC."""
    from datetime import UTC

    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


def _r(expr: str) -> str:
    return f"round({expr}, {FLOAT_DECIMALS})"


def _measure_columns() -> list[tuple[str, str, str]]:
    """(feature name, measure key, statistic column of the long measure table), in the views' column order."""
    cols = []
    for m in VITALS:
        cols.append((f"{m.key}_latest", m.key, "latest"))
        cols += [(f"{m.key}_{s}_{w}d", m.key, f"{s}_{w}d") for w in VITAL_WINDOWS for s in VITAL_STATS]
    for m in LABS:
        cols += [(f"{m.key}_{s}", m.key, s) for s in ("latest", "trend_365d", "count_365d")]
    return cols


def _measures_sql() -> str:
    """Measurement statistics *long*: one row per (grid point, measure) that has values in the 365-day window,
    with `gi`, the grid point's row in the (person, time)-ordered feature rows. Pivoting ~90 `FILTER`ed
    aggregates in SQL cost ~70 ms per call however few the rows (binding and per-aggregate state, measured);
    ~10 aggregates grouped by measure plus a scatter in `_widen` cost a few."""
    stats = [("latest", "arg_max(m.value, row(m.ts, m.row_id))")]
    for w in VITAL_WINDOWS:
        for s, agg in zip(VITAL_STATS, ("avg", "min", "max"), strict=True):
            stats.append((f"{s}_{w}d", f"{agg}(m.value) FILTER (WHERE m.ts > g.ts - INTERVAL {w} DAY)"))
    stats.append(("trend_365d", "regr_slope(m.value, epoch(m.ts) / 31557600.0)"))
    return f"""
    SELECT g.gi, m.key, {", ".join(f"{_r(e)} AS {name}" for name, e in stats)}, count(m.row_id) AS count_365d
    FROM (SELECT row_number() OVER (ORDER BY person_id, ts) - 1 AS gi, person_id, ts FROM _fs_g) g
    JOIN _fs_m m ON m.person_id = g.person_id AND m.ts <= g.ts AND m.ts > g.ts - INTERVAL 365 DAY
    GROUP BY g.gi, m.key
    """


def _widen(rows: pa.Table, long: pa.Table) -> pa.Table:
    """The feature rows with the measurement features scattered in from the long table (`_measures_sql`), placed
    after the demographics as the views declare them. A measure without values at a grid point is NULL (its
    count 0), as a `FILTER`ed aggregate over no rows would be."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = rows.num_rows
    gi = long.column("gi").to_numpy()
    keys = long.column("key")
    where = {k: pc.equal(keys, k).to_numpy(zero_copy_only=False) for k in {m.key for m in (*VITALS, *LABS)}}
    measures = {}
    for name, key, stat in _measure_columns():
        at = where[key]
        values = long.column(stat).filter(pa.array(at))
        valid = ~values.is_null().to_numpy(zero_copy_only=False)
        integer = stat.startswith("count")
        out = np.zeros(n, dtype=np.int64 if integer else np.float64)
        out[gi[at][valid]] = values.to_numpy(zero_copy_only=False)[valid]
        if integer:
            measures[name] = pa.array(out)
        else:
            present = np.zeros(n, dtype=bool)
            present[gi[at][valid]] = True
            measures[name] = pa.array(out, mask=~present)
    first = rows.column_names.index("person_source_value") + 1  # after the demographics
    names = [*rows.column_names[:first], *measures, *rows.column_names[first:]]
    columns = {**{c: rows.column(c) for c in rows.column_names}, **measures}
    return pa.table([columns[c] for c in names], names=names)


def _features_sql() -> str:
    """Every non-measurement feature, one row per grid point, in (person, time) order (see `_widen`)."""
    inpatient, emergency = _in_list(VISIT_INPATIENT), _in_list(VISIT_EMERGENCY)

    def days(w: int) -> str:
        lo = f"greatest(v.ts, g.ts - INTERVAL {w} DAY)"
        return (
            f"CAST(coalesce(sum(greatest(0, date_diff('day', {lo}, least(v.end_ts, g.ts)))) FILTER (WHERE "
            f"v.visit_concept_id IN ({inpatient})), 0) AS BIGINT) AS inpatient_days_{w}d"
        )

    cond_flags = [f"coalesce(bool_or(c.key = '{s.key}'), false) AS hx_{s.key}" for s in CONDITIONS]
    med_flags = [f"coalesce(bool_or(d.key = '{s.key}'), false) AS med_{s.key}" for s in MEDICATION_CLASSES]
    return f"""
    WITH dem AS (
        SELECT g.person_id, g.ts, round(date_diff('day', p.birth, g.ts) / 365.25, 4) AS age_years, p.sex, p.race,
               p.ethnicity,
               (SELECT arg_max(payer, start_ts) FROM _fs_pay pp WHERE pp.person_id = g.person_id
                  AND pp.start_ts <= g.ts AND pp.end_ts > g.ts) AS payer_type,
               p.person_source_value
        FROM _fs_g g JOIN _fs_person p USING (person_id)
    ), util AS (
        SELECT g.person_id, g.ts,
               count(v.row_id) FILTER (WHERE v.ts > g.ts - INTERVAL 30 DAY) AS visits_30d,
               count(v.row_id) FILTER (WHERE v.ts > g.ts - INTERVAL 365 DAY) AS visits_365d,
               count(v.row_id) FILTER (WHERE v.ts > g.ts - INTERVAL 30 DAY AND v.visit_concept_id IN ({emergency}))
                   AS ed_visits_30d,
               count(v.row_id) FILTER (WHERE v.ts > g.ts - INTERVAL 365 DAY AND v.visit_concept_id IN ({emergency}))
                   AS ed_visits_365d,
               {days(30)}, {days(365)}
        FROM _fs_g g LEFT JOIN _fs_v v ON v.person_id = g.person_id AND v.ts <= g.ts
             AND v.end_ts > g.ts - INTERVAL 365 DAY
        GROUP BY g.person_id, g.ts
    ), cond AS (
        SELECT g.person_id, g.ts, {", ".join(cond_flags)}
        FROM _fs_g g LEFT JOIN _fs_c c ON c.person_id = g.person_id AND c.ts <= g.ts
        GROUP BY g.person_id, g.ts
    ), med AS (
        SELECT g.person_id, g.ts, {", ".join(med_flags)}, count(DISTINCT d.drug_concept_id) AS active_drug_count
        FROM _fs_g g LEFT JOIN _fs_d d ON d.person_id = g.person_id AND d.ts <= g.ts AND d.end_ts > g.ts
        GROUP BY g.person_id, g.ts
    ), img AS (
        SELECT g.person_id, g.ts, count(DISTINCT i.image_study_uid) AS imaging_studies_365d,
               arg_max(i.modality, row(i.ts, i.row_id)) AS last_modality,
               arg_max(i.manufacturer, row(i.ts, i.row_id)) AS last_scanner_manufacturer,
               arg_max(i.model, row(i.ts, i.row_id)) AS last_scanner_model
        FROM _fs_g g LEFT JOIN _fs_i i ON i.person_id = g.person_id AND i.ts <= g.ts
             AND i.ts > g.ts - INTERVAL 365 DAY
        GROUP BY g.person_id, g.ts
    )
    SELECT person_id, timezone('UTC', ts) AS event_timestamp, * EXCLUDE (person_id, ts)
    FROM dem JOIN util USING (person_id, ts) JOIN cond USING (person_id, ts)
         JOIN med USING (person_id, ts) JOIN img USING (person_id, ts)
    ORDER BY person_id, ts
    """


def _edges_sql() -> str:
    parts = []
    sources = {
        "measurement": "_fs_m",
        "visit_occurrence": "_fs_v",
        "condition_occurrence": "_fs_c",
        "drug_exposure": "_fs_d",
        "image_occurrence": "_fs_i",
    }
    for table, views in TABLE_VIEWS.items():
        for view in views:
            where = ""
            if table == "measurement":
                where = f"AND s.kind = '{'vital' if view == 'vitals' else 'lab'}'"
            parts.append(
                f"SELECT DISTINCT 'omop' AS src_kind, '{table}/' || s.row_id AS src_id, 'feature' AS dst_kind, "
                f"'{view}/' || s.person_id || '/' || strftime(s.ts, '{TS_FMT}') AS dst_id "
                f"FROM {sources[table]} s JOIN _fs_g g ON g.person_id = s.person_id AND g.ts = s.ts {where}"
            )
    return " UNION ALL ".join(parts)


def derive(
    con: duckdb.DuckDBPyConnection,
    *,
    snapshot_id: int | None = None,
    persons: list[int] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    since: datetime | None = None,
    include_latest: bool = False,
    with_edges: bool = True,
    bound_history: bool = True,
) -> Derived:
    """Feature rows for `persons` (all when None) at each of their event times in [start, end] (and >= since),
    computed from the lake as it was at `snapshot_id` (the current snapshot when None).

    With a lower time bound (`start`/`since`), only the history that can still count at or after it is read
    (every window is <= 365 days; condition flags read all history), so a stream batch costs what its persons'
    recent history costs. A person with no event at or after the bound (`include_latest` keeps their latest
    point, e.g. after a delete or a demographics change) keeps their whole history, in the same single pass."""
    snap = current_snapshot(con) if snapshot_id is None else int(snapshot_id)
    bounds = [_naive_utc(v) for v in (start, since) if v is not None]
    first = max(bounds) if bounds else None
    lo = first - HISTORY_SLACK if first is not None and bound_history else None
    own = _begin(con)
    ok = False
    try:
        unbounded: list[int] = []
        if lo is not None and include_latest:
            unbounded = [] if persons is None else _without_events_since(con, snap, persons, first, end)
        while True:
            if lo is not None and include_latest and (persons is None or len(unbounded) >= len(set(persons))):
                lo, unbounded = None, []  # nobody (or nobody known) benefits from the bound: one plain read
            _prepare(con, snap, persons, lo, unbounded)
            _grid(con, start, end, since, include_latest, snapshot_time(con, snap))
            if lo is None or not include_latest:
                break
            # The probe looks at raw rows; the grid only at the rows features use. A person whose events since the
            # bound are all unused (e.g. a measurement in no feature's concept set) needs their whole history too.
            missed = con.execute(
                "SELECT person_id FROM _fs_person EXCEPT SELECT person_id FROM _fs_g WHERE ts >= ? "
                "EXCEPT SELECT unnest(?::BIGINT[])",
                [first, unbounded],
            ).fetchall()
            if not missed:
                break
            unbounded = sorted({*unbounded, *(int(r[0]) for r in missed)})
        rows = _widen(con.execute(_features_sql()).to_arrow_table(), con.execute(_measures_sql()).to_arrow_table())
        edges = con.execute(_edges_sql()).to_arrow_table() if with_edges else None
        ok = True
    finally:
        for t in (*_TEMP, "_fs_person0", "_fs_d0", "_fs_pay0"):
            con.execute(f"DROP TABLE IF EXISTS temp.main.{t}")
        if own:
            with catalog_gate(con):
                con.execute("COMMIT" if ok else "ROLLBACK")
    if edges is None:
        import pyarrow as pa

        edges = pa.table({k: pa.array([], pa.string()) for k in ("src_kind", "src_id", "dst_kind", "dst_id")})
    return Derived(snap, rows, edges)


def _without_events_since(
    con: duckdb.DuckDBPyConnection, snap: int, persons: list[int], first: datetime, end: datetime | None
) -> list[int]:
    """The persons with no feature event in [first, end]: their latest as-of point lies before the history bound,
    so they are read whole. One query; its date conditions let DuckLake skip old data files."""
    at = f"AT (VERSION => {snap})"
    day = f"DATE '{first - timedelta(days=2):%Y-%m-%d}'"
    hi = _naive_utc(end) if end is not None else datetime.max

    def probe(table: str, ts: str, date_column: str) -> str:
        return (
            f"SELECT person_id FROM omop.{table} {at} WHERE person_id IN (SELECT unnest($p)) "
            f"AND ({date_column} >= {day} OR {date_column} IS NULL) AND {ts} >= $first AND {ts} <= $hi"
        )

    def ts(column: str, date_column: str) -> str:
        return f"coalesce({column}, CAST({date_column} AS TIMESTAMP))"

    probes = [
        probe("measurement", ts("measurement_datetime", "measurement_date"), "measurement_date"),
        probe("visit_occurrence", ts("visit_start_datetime", "visit_start_date"), "visit_start_date"),
        probe("condition_occurrence", ts("condition_start_datetime", "condition_start_date"), "condition_start_date"),
        probe("drug_exposure", ts("drug_exposure_start_datetime", "drug_exposure_start_date"),
              "drug_exposure_start_date"),
        probe("image_occurrence", ts("image_occurrence_datetime", "image_occurrence_date"), "image_occurrence_date"),
    ]  # fmt: skip
    wanted = sorted({int(p) for p in persons})
    found = con.execute(
        f"SELECT unnest($p) AS person_id EXCEPT ({' UNION '.join(probes)})",
        {"p": wanted, "first": first, "hi": hi},
    ).fetchall()
    return sorted(int(r[0]) for r in found)


def _begin(con: duckdb.DuckDBPyConnection) -> bool:
    """One read transaction around a derivation (unless the caller has one): DuckLake then loads the lake's
    metadata once instead of once per query (measured: ~5 ms per lake query saved). Returns whether it began one."""
    import duckdb

    try:
        con.execute("BEGIN TRANSACTION")
    except duckdb.TransactionException:
        return False
    with catalog_gate(con):  # the stream's hot path: see careloop.duck on the catalog gate
        open_catalog(con)
    return True


def split_views(rows: pa.Table) -> dict[str, pa.Table]:
    """The wide derivation result as one table per feature view (`person_id`, `event_timestamp`, its features)."""
    return {v.name: rows.select(["person_id", "event_timestamp", *(f.name for f in v.features)]) for v in VIEWS}


def _empty_rows(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The derivation's schema with no rows (a lake without persons)."""
    return derive(con, persons=[], with_edges=False).rows
