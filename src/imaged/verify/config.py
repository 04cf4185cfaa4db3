"""The `verification` configuration section (placeholder until the verifier lands)."""

from __future__ import annotations

from imaged.config.base import Section


class VerificationConfig(Section):
    pass
