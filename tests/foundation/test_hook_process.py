"""`HookProcess`: a stream hook in its own process (real spawned processes, no fakes)."""

from __future__ import annotations

import os
import signal
from functools import partial

import psutil
import pytest

from careloop.hook_process import HookProcess, HookProcessError
from tests.foundation.hook_workers import EchoHook, broken_factory


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_hook_runs_warm_in_its_own_process_keeps_state_and_stops():
    hook = HookProcess(partial(EchoHook, "m1"), name="echo").start()
    try:
        child = hook.pid
        first, second = hook({"batch": 1}), hook({"batch": 2})
    finally:
        hook.close()
    assert child not in (None, os.getpid())
    assert first == {"pid": child, "marker": "m1", "warmed": True, "calls": 1, "batch": 1}
    assert second["calls"] == 2 and second["pid"] == child  # one child, built once
    assert hook.pid is None and _gone(child)


def test_hook_errors_are_raised_and_a_dead_child_is_replaced():
    with HookProcess(partial(EchoHook, "m2"), name="echo") as hook:
        child = hook.pid
        with pytest.raises(HookProcessError, match="echo hook failed: ValueError: asked to fail on batch 3"):
            hook({"fail": True, "batch": 3})
        assert hook({"batch": 4})["pid"] == child  # an error does not cost the process
        os.kill(child, signal.SIGKILL)
        with pytest.raises(HookProcessError, match="died while running"):
            hook({"batch": 5})
        again = hook({"batch": 5})  # the runner's retry: a new child, built afresh
        assert again["pid"] != child and again["calls"] == 1


def test_a_hook_that_cannot_be_built_fails_start_clearly():
    hook = HookProcess(broken_factory, name="broken")
    with pytest.raises(HookProcessError, match="broken hook could not start: RuntimeError: the hook cannot be built"):
        hook.start()
    assert hook.pid is None


def test_the_child_exits_when_its_parent_is_killed(tmp_path):
    """A stream process killed with SIGKILL cannot close its hooks: their process notices and exits."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = (
        "from functools import partial; import sys, time\n"
        "from careloop.hook_process import HookProcess\n"
        "from tests.foundation.hook_workers import EchoHook\n"
        "h = HookProcess(partial(EchoHook, 'orphan')).start()\n"
        "print(h({'batch': 1})['pid'], flush=True)\n"
        "time.sleep(600)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=repo, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert not _gone(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child)
