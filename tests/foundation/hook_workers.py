"""Hooks built inside a `HookProcess` child (importable by module path, as a spawned process needs)."""

from __future__ import annotations

import os
from typing import Any


class EchoHook:
    """Returns where and what it ran; raises on a commit that asks for it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.warmed = False
        self.calls = 0

    def warm(self) -> None:
        self.warmed = True

    def __call__(self, commit: Any) -> dict[str, Any]:
        self.calls += 1
        if commit.get("fail"):
            raise ValueError(f"asked to fail on batch {commit['batch']}")
        return {"pid": os.getpid(), "marker": self.marker, "warmed": self.warmed, "calls": self.calls, **commit}


def broken_factory() -> Any:
    raise RuntimeError("the hook cannot be built: settings missing")
