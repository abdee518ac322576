"""Errors that the CLI turns into one clear line instead of a traceback."""

from __future__ import annotations


class CareloopError(Exception):
    """An expected, operator-facing failure: the message is the whole story."""


class ConfigError(CareloopError):
    """A setting is missing or invalid; the message names the setting."""


class BrokerError(CareloopError):
    """The Kafka broker could not be started, reached or stopped."""


class LakeError(CareloopError):
    """The DuckLake catalog could not be opened (for example, extensions missing)."""
