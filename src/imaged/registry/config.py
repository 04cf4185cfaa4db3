"""The `registries` configuration section (placeholder until the registry client lands)."""

from __future__ import annotations

from imaged.config.base import Section


class RegistriesConfig(Section):
    pass
