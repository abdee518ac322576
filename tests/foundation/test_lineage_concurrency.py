from __future__ import annotations

import subprocess
import sys
import time

from careloop.settings import load_settings
from lineage import open_store


def test_two_writer_processes_and_a_reader(tmp_path) -> None:
    home = str(tmp_path / "h")
    settings = load_settings(home=home)
    open_store(settings).close()  # create the schema once, as any first stage would
    batches, per_batch = 15, 200
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.foundation.lineage_worker", home, name, str(batches), str(per_batch)]
        )
        for name in ("a", "b")
    ]
    seen: list[int] = []
    while any(w.poll() is None for w in writers):
        # every read sees a committed state: whole batches only, never a half-written one
        reader = open_store(settings, read_only=True)
        n = reader.execute("SELECT count(*) FROM lineage.edges").fetchone()[0]
        reader.close()
        assert n % per_batch == 0
        seen.append(n)
        time.sleep(0.2)
    assert [w.returncode for w in writers] == [0, 0]
    con = open_store(settings, read_only=True)
    assert con.execute("SELECT count(*) FROM lineage.edges").fetchone()[0] == 2 * batches * per_batch
    assert con.execute("SELECT count(DISTINCT src_id) FROM lineage.edges").fetchone()[0] == 2 * batches * per_batch
    assert con.execute("SELECT count(*) FROM lineage.ingest_events").fetchone()[0] == 2 * batches
    runs = con.execute("SELECT job, status FROM lineage.runs ORDER BY job").fetchall()
    assert runs == [("writer-a", "succeeded"), ("writer-b", "succeeded")]
    assert seen == sorted(seen)  # monotone: readers never go back in time
