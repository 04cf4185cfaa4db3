"""Image signature verification: policy, signature discovery, verifiers, trust roots, cache.

Entry point: `ImageVerifier` (service.py) with `Verdict` results; configuration in config.py.
The engine is imported lazily: the root config model imports this package for its section,
and must not drag in (or cycle through) registry and sigstore code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# imaged.config's package import pulls in the root model, which imports our config section:
# importing it first keeps `import imaged.verify...` from meeting a half-initialized module.
import imaged.config  # noqa: F401  # isort: skip
from imaged.verify.config import VerificationConfig, config_warnings

if TYPE_CHECKING:
    from imaged.verify.service import ImageVerifier, MatchedRule, Verdict

__all__ = ["ImageVerifier", "MatchedRule", "Verdict", "VerificationConfig", "config_warnings"]


def __getattr__(name: str) -> Any:
    if name in ("ImageVerifier", "MatchedRule", "Verdict"):
        from imaged.verify import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
