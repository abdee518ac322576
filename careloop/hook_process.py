"""Run a stream hook in its own process, so that it does not share the stream's interpreter lock.

The stream runner calls its hooks from a thread while the main thread commits the next batch. A hook that makes
many short calls into C libraries (the feature hook runs ~40 DuckDB statements per batch) has to win the
interpreter lock back after each of them from a main thread that is busy in Python, and loses: measured, the
feature hook took 0.23 s alone and 5.8 s next to one busy Python thread. In its own process it needs no lock the
runner holds; the runner's hook thread only waits on a pipe.

`HookProcess(factory)` is itself a hook (`hook(commit) -> result`): the factory builds the real hook inside the
child once (so its imports, connections and caches live there; its optional `warm()` runs at start), each call
pickles the commit to the child and returns the child's result or raises its error. A dead child is reported as
an error (the runner retries the hook, which starts a new child): a failing hook never loses a batch, because the
runner commits Kafka offsets only after its hooks succeeded.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import traceback
from collections.abc import Callable
from typing import Any

from careloop.errors import CareloopError
from careloop.memory import gc_paused

log = logging.getLogger(__name__)
_STOP = None


class HookProcessError(CareloopError):
    """The hook failed in its process, or its process died."""


def _serve(conn: Any, factory: Callable[[], Callable[[Any], Any]], parent: int) -> None:
    """Child main loop: build the hook, then answer one call at a time; exit with the parent or on `_STOP`."""
    import gc

    try:
        hook = factory()
        warm = getattr(hook, "warm", None)  # optional: pay start-up costs before the first batch
        if callable(warm):
            warm()
    except BaseException as err:  # reported to the parent, which raises it
        conn.send(("error", f"{type(err).__name__}: {err}", traceback.format_exc()))
        return
    gc.freeze()  # imports and the hook's caches are permanent: the collector need not walk them again
    conn.send(("ready", os.getpid(), None))
    try:
        while True:
            if not conn.poll(0.5):
                if os.getppid() != parent:  # the stream was killed (SIGKILL): nobody will ever call again
                    return
                continue
            commit = conn.recv()
            if commit is _STOP:
                return
            try:
                with gc_paused():
                    result = hook(commit)
                conn.send(("ok", result, None))
            except Exception as err:  # the parent raises it; the runner retries
                conn.send(("error", f"{type(err).__name__}: {err}", traceback.format_exc()))
    except (EOFError, OSError):
        return  # the parent closed the pipe
    finally:
        close = getattr(hook, "close", None)
        if callable(close):
            close()


class HookProcess:
    """A stream hook that runs `factory()` in a child process (started by `start()` or the first call)."""

    def __init__(self, factory: Callable[[], Callable[[Any], Any]], *, name: str = "hook",
                 start_timeout_s: float = 120.0) -> None:  # fmt: skip
        self.factory = factory
        self.name = name
        self.start_timeout_s = start_timeout_s
        self._proc: Any = None
        self._conn: Any = None

    def __repr__(self) -> str:
        return f"HookProcess({self.name})"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def start(self) -> HookProcess:
        """Start the child and wait until its hook is built (imports and connections), so that the first batch
        does not pay for them. A no-op while the child is alive."""
        if self._proc is not None and self._proc.is_alive():
            return self
        self.close()
        ctx = multiprocessing.get_context("spawn")  # the runner has Kafka and DuckDB threads: never fork it
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, self.factory, os.getpid()), name=f"careloop-{self.name}",
                           daemon=True)  # fmt: skip
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        kind, value, detail = self._receive(self.start_timeout_s, "starting")
        if kind != "ready":
            self.close()
            log.warning("%s hook could not start:\n%s", self.name, detail)
            raise HookProcessError(f"{self.name} hook could not start: {value}")
        return self

    def __call__(self, commit: Any) -> Any:
        self.start()
        try:
            self._conn.send(commit)
        except (BrokenPipeError, OSError) as err:
            self.close()
            raise HookProcessError(f"{self.name} hook process is gone ({err}); it restarts on the next call") from err
        kind, value, detail = self._receive(None, "running")
        if kind == "error":
            log.warning("%s hook failed in its process:\n%s", self.name, detail)
            raise HookProcessError(f"{self.name} hook failed: {value}")
        return value

    def _receive(self, timeout: float | None, doing: str) -> tuple[str, Any, Any]:
        try:
            if timeout is not None and not self._conn.poll(timeout):
                self.close()
                raise HookProcessError(f"{self.name} hook did not answer within {timeout:.0f} s while {doing}")
            return self._conn.recv()
        except (EOFError, OSError) as err:
            code = self._proc.exitcode if self._proc is not None else None
            self.close()
            raise HookProcessError(
                f"{self.name} hook process died while {doing} (exit code {code}); it restarts on the next call"
            ) from err

    def close(self) -> None:
        """Stop the child (it finishes the call it is in); kill it by PID if it does not stop within 10 s."""
        proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        if conn is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(_STOP)
        if proc is not None:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        if conn is not None:
            conn.close()

    def __enter__(self) -> HookProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
