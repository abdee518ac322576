"""careloop spine: settings, event envelope, topic registry, Kafka wrappers, local broker control.

Kept import-light on purpose: `careloop --help` must not pay for Beam, Feast, Ray or torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from careloop.errors import CareloopError, ConfigError

__all__ = ["CareloopError", "ConfigError", "__version__"]
