"""Image signature verification: policy, signature discovery, verifiers, trust roots, cache.

Entry point: `ImageVerifier` (service.py) with `Verdict` results; configuration in config.py.
"""

# imaged.config's package import pulls in the root model, which imports our config section:
# importing it first keeps `import imaged.verify...` from meeting a half-initialized module.
import imaged.config  # noqa: F401  # isort: skip
from imaged.verify.config import VerificationConfig, config_warnings
from imaged.verify.service import ImageVerifier, MatchedRule, Verdict

__all__ = ["ImageVerifier", "MatchedRule", "Verdict", "VerificationConfig", "config_warnings"]
