"""Beam mapping of micro-batches in a persistent worker process, so that the stream maps batch N+1 while the main
process commits batch N to the lake (two cores busy instead of one).

The worker runs the same `FhirToOmop` functions on its own in-process FnApiRunner; batches travel as files (the
framed JSON lines the main process already writes), so nothing large is pickled on the way in. The worker also
builds the columnar form the lake commit needs (`Prepared`: per-table Arrow tables, row map, flags, version
sources), so the committing process does no per-row Python work; that comes back through the pool's pipe (Arrow
buffers pickle as flat bytes). The worker is started once with the vocabulary (a spawn context: the main process
has Kafka and DuckDB threads, which must not be forked).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from careloop.memory import gc_paused
from transforms.vocab import Vocabulary

_VOCAB: Vocabulary | None = None


def _init(codes: dict[Any, Any], units: dict[str, int]) -> None:
    global _VOCAB
    _VOCAB = Vocabulary(codes, units)
    gc.freeze()  # the vocabulary and the imported modules are permanent: the collector need not walk them
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A stream process killed with SIGKILL cannot stop its workers: they notice the re-parenting and exit."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _map_file(path: str, out_dir: str, chunk: int) -> Any:
    from transforms.pipeline import read_prepared, run_batch_file

    assert _VOCAB is not None, "worker not initialised"
    with gc_paused():
        return read_prepared(run_batch_file(path, out_dir, _VOCAB, chunk=chunk, columnar=True))


def _warm() -> int:
    import transforms.pipeline  # noqa: F401  (imports Beam once, before the first batch)

    return os.getpid()


class MappingPool:
    """`submit(path, out_dir)` -> Future of the result files; `close()` stops the worker processes."""

    def __init__(self, vocab: Vocabulary, workers: int = 1, *, chunk: int = 500) -> None:
        self.workers = workers
        self.chunk = chunk
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init, initargs=(vocab.codes, vocab.units))  # fmt: skip
        self._warmup = [self._pool.submit(_warm) for _ in range(workers)]

    def submit(self, path: str, out_dir: str) -> Future[Any]:
        """Map the batch file at `path`; the future's result is the batch in columnar form
        (`transforms.lake_writer.Prepared`: Arrow tables, pickled back through the pool's pipe)."""
        return self._pool.submit(_map_file, path, out_dir, self.chunk)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def default_workers() -> int:
    """One mapping process when there is a second core for it, none (map in-process) on one core."""
    return 1 if (os.cpu_count() or 1) >= 2 else 0
