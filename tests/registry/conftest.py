"""Fixtures of the registry client tests: real docker-registry instances seeded once per session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from imaged.registry.config import RegistriesConfig
from tests.support.images import MultiPlatformImage, push_multiplatform_image, push_test_image
from tests.support.registry import Registry

USER, PASSWORD = "alice", "correct horse battery staple"


@dataclass(frozen=True)
class Seeded:
    registry: Registry
    oci: str  # test/app:v1, OCI manifest, 2 layers
    docker: str  # test/docker:v1, Docker schema2
    multi: MultiPlatformImage  # test/multi:v1

    @property
    def host(self) -> str:
        return self.registry.host


def make_config(**kw: Any) -> RegistriesConfig:
    """A RegistriesConfig with fast retries (tests must not sleep long)."""
    kw.setdefault("retries", {"attempts": 3, "base_delay": 0.01, "max_delay": 0.05})
    kw.setdefault("timeouts", {"connect": 5, "read": 10})
    return RegistriesConfig.model_validate(kw)


@pytest.fixture(scope="session")
def seeded() -> Iterator[Seeded]:
    with Registry() as reg:
        yield Seeded(
            reg,
            push_test_image(reg, "test/app", "v1", layers=2),
            push_test_image(reg, "test/docker", "v1", schema="docker"),
            push_multiplatform_image(reg, "test/multi", "v1"),
        )


@pytest.fixture(scope="session")
def basic_registry() -> Iterator[tuple[Registry, str]]:
    with Registry(htpasswd={USER: PASSWORD}) as reg:
        yield reg, push_test_image(reg, "private/app", "v1")


@pytest.fixture(scope="session")
def token_registry() -> Iterator[tuple[Registry, str]]:
    with Registry(token_auth=True, htpasswd={USER: PASSWORD}) as reg:
        yield reg, push_test_image(reg, "private/app", "v1")


@pytest.fixture(scope="session")
def tls_registry() -> Iterator[tuple[Registry, str]]:
    with Registry(tls=True) as reg:
        yield reg, push_test_image(reg, "secure/app", "v1")
