"""Feature-store errors: one clear operator-facing line each (the CLI prints them and exits 1)."""

from __future__ import annotations

from careloop.errors import CareloopError


class FeatureStoreError(CareloopError):
    """The feature store could not do what was asked (the message says why)."""


class GovernanceError(FeatureStoreError):
    """A model asked for a feature its task may not use as an input."""


class FeaturePushError(FeatureStoreError):
    """A push was refused (unknown entity, wrong type, missing timestamp); the rows went to the dead letters."""

    def __init__(self, message: str, rejected: int = 0, accepted: int = 0) -> None:
        super().__init__(message)
        self.rejected = rejected
        self.accepted = accepted
