"""Beam mapping of micro-batches in a persistent worker process, so that the stream maps batch N+1 while the main
process commits batch N to the lake (two cores busy instead of one).

The worker runs the same `FhirToOmop` functions on its own in-process FnApiRunner — one pipeline for the worker's
life, fed batch files through a queue (`transforms.pipeline.FeedMapper`: no pipeline build per batch). Batches
travel as files (the framed JSON lines the main process already writes), so nothing large is pickled on the way
in. The worker also builds the columnar form the lake commit needs (`Prepared`: per-table Arrow tables, row map,
flags, version sources), so the committing process does no per-row Python work; that comes back as pickled files
(Arrow buffers pickle as flat bytes: loading 10k events' worth costs the committing process milliseconds). The
worker is started once with the vocabulary (a spawn context: the main process has Kafka and DuckDB threads, which
must not be forked).
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

# Events per Beam element in the stream's batches: each chunk's Arrow tables cost a fixed overhead to build and to
# pickle (measured per 10k events: 500-event chunks 0.05 s pickle + 0.03 s load, 5,000-event chunks < 0.01 s each),
# and the in-process runner runs the elements of one batch one after another anyway.
COLUMNAR_CHUNK = 5000

_VOCAB: Vocabulary | None = None
_FEED: Any = None


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


def _feed(chunk: int) -> Any:
    """This worker's long-lived Beam pipeline (`transforms.pipeline.FeedMapper`), rebuilt if it failed."""
    global _FEED
    from transforms.pipeline import FeedMapper

    assert _VOCAB is not None, "worker not initialised"
    if _FEED is None or _FEED.failed is not None:
        _FEED = FeedMapper(_VOCAB, chunk)
    return _FEED


def _map_file(path: str, out_dir: str, chunk: int) -> list[str]:
    with gc_paused():
        return _feed(chunk).map_file(path, out_dir)


def _warm(chunk: int) -> int:
    _feed(chunk)  # imports Beam and starts the pipeline before the first batch
    return os.getpid()


class MappingPool:
    """`submit(path, out_dir)` -> Future of the result files; `close()` stops the worker processes."""

    def __init__(self, vocab: Vocabulary, workers: int = 1, *, chunk: int = COLUMNAR_CHUNK) -> None:
        self.workers = workers
        self.chunk = chunk
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init, initargs=(vocab.codes, vocab.units))  # fmt: skip
        self._warmup = [self._pool.submit(_warm, chunk) for _ in range(workers)]

    def submit(self, path: str, out_dir: str) -> Future[list[str]]:
        """Map the batch file at `path`; the future's result is the files of its columnar form (pickled
        `transforms.lake_writer.Prepared` chunks, for `transforms.pipeline.read_prepared`)."""
        return self._pool.submit(_map_file, path, out_dir, self.chunk)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def default_workers() -> int:
    """One mapping process when there is a second core for it, none (map in-process) on one core."""
    return 1 if (os.cpu_count() or 1) >= 2 else 0
