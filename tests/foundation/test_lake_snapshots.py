"""The lake's snapshot log read from DuckLake's catalog tables (careloop.duck.snapshot_changes / snapshot_time) must
say what `ducklake_snapshots()` says, for every kind of change (`ducklake_snapshots()` itself lists every snapshot
of the lake on each call, which a stream makes slower by the hour)."""

from __future__ import annotations

from careloop.duck import connect, snapshot_changes, snapshot_time

NAMING = {"schemas_created", "tables_created", "views_created"}  # their values keep the catalog's quoting


def test_snapshot_log_from_the_catalog_equals_ducklake_snapshots(lake_settings):
    con = connect(lake_settings)
    try:
        for sql in (
            "CREATE SCHEMA s",
            'CREATE TABLE s."a,b" (i INTEGER, v VARCHAR)',
            "INSERT INTO s.\"a,b\" VALUES (1, 'x')",  # small: inlined in the catalog
            "INSERT INTO s.\"a,b\" SELECT range, 'y' FROM range(2, 20000)",  # a data file
            "INSERT INTO s.\"a,b\" SELECT range, 'z' FROM range(20000, 40000)",
            "CALL ducklake_merge_adjacent_files('lake', 'a,b', schema => 's')",
            'DELETE FROM s."a,b" WHERE i = 1',
            'DELETE FROM s."a,b" WHERE i < 100',
            'ALTER TABLE s."a,b" ADD COLUMN w INTEGER',
            'CREATE VIEW s.v AS SELECT i FROM s."a,b"',
            "CREATE TABLE s.t (i INTEGER)",
            "DROP TABLE s.t",
        ):
            con.execute(sql)
        expected = con.execute("SELECT snapshot_id, changes, snapshot_time FROM ducklake_snapshots('lake') ORDER BY 1")
        expected = expected.fetchall()
        last = expected[-1][0]
        got = dict(snapshot_changes(con, -1, last))
        assert list(got) == [s for s, _, _ in expected]
        kinds = set()
        for snapshot, changes, at in expected:
            assert set(got[snapshot]) == set(changes), snapshot
            assert {k: v for k, v in got[snapshot].items() if k not in NAMING} == {
                k: v for k, v in changes.items() if k not in NAMING
            }, snapshot
            assert snapshot_time(con, snapshot) == at
            kinds |= set(changes)
        # every kind the feature store's vocabulary cache tells apart was exercised
        assert {"tables_inserted_into", "tables_deleted_from", "inlined_insert", "merge_adjacent"} <= kinds
        assert [s for s, _ in snapshot_changes(con, last - 3, last)] == [last - 2, last - 1, last]
        assert snapshot_changes(con, last, last + 5) == [] and snapshot_time(con, last + 1) is None
    finally:
        con.close()
