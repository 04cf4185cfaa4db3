"""Configuration: one YAML file, validated by pydantic; each domain package owns its section."""

from __future__ import annotations

from imaged.config.loader import ConfigError, load, load_text
from imaged.config.models import Config

__all__ = ["Config", "ConfigError", "load", "load_text"]
