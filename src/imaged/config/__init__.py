"""Configuration: one YAML file, validated by pydantic; each domain package owns its section.

The names below load lazily: a section module (imaged.registry.config) imports
imaged.config.base, and the root model imports every section, so loading it eagerly here
would make the import order matter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imaged.config.loader import ConfigError, load, load_text
    from imaged.config.models import Config

__all__ = ["Config", "ConfigError", "load", "load_text"]


def __getattr__(name: str) -> Any:
    if name == "Config":
        from imaged.config.models import Config

        return Config
    if name in ("ConfigError", "load", "load_text"):
        from imaged.config import loader

        return getattr(loader, name)
    raise AttributeError(name)
