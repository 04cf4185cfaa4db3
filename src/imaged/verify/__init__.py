"""Image signature verification: policy, signature discovery, verifiers, trust roots, cache.

Entry point: `ImageVerifier` (service.py) with `Verdict` results; configuration in config.py.
The engine is imported lazily: the root config model imports this package for its section,
and must not drag in registry and sigstore code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imaged.verify.config import VerificationConfig, config_warnings

if TYPE_CHECKING:
    from imaged.verify.service import ImageVerifier, MatchedRule, Verdict

__all__ = ["ImageVerifier", "MatchedRule", "Verdict", "VerificationConfig", "config_warnings"]


def __getattr__(name: str) -> Any:
    if name in ("ImageVerifier", "MatchedRule", "Verdict"):
        from imaged.verify import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
