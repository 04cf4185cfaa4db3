"""Rule patterns: normalization and glob matching against normalized repositories; first match wins."""

from __future__ import annotations

import pytest

from imaged.registry.reference import parse
from imaged.verify.matching import Glob, normalize_pattern, pattern_problem


@pytest.mark.parametrize(
    ("pattern", "normalized"),
    [
        ("nginx", "docker.io/library/nginx"),
        ("nginx*", "docker.io/library/nginx*"),
        ("myorg/app", "docker.io/myorg/app"),
        ("myorg/*", "docker.io/myorg/*"),
        ("docker.io/nginx", "docker.io/library/nginx"),
        ("docker.io/*", "docker.io/*"),
        ("docker.io/nginx*", "docker.io/library/nginx*"),
        ("index.docker.io/nginx*", "docker.io/library/nginx*"),
        ("docker.io/*miner*", "docker.io/*miner*"),  # a leading star spans namespaces: left alone
        ("ghcr.io:443/org/*", "ghcr.io/org/*"),
        ("index.docker.io/*", "docker.io/*"),
        ("registry-1.docker.io/library/nginx", "docker.io/library/nginx"),
        ("registry.hub.docker.com/myorg/*", "docker.io/myorg/*"),
        ("index.docker.io/nginx", "docker.io/library/nginx"),
        ("GHCR.io/org/*", "ghcr.io/org/*"),
        ("localhost/app", "localhost/app"),
        ("localhost:5000/*", "localhost:5000/*"),
        ("*", "*"),
        ("*/app", "*/app"),
        ("*.example.com/*", "*.example.com/*"),
        ("registry.k8s.io/*", "registry.k8s.io/*"),
    ],
)
def test_normalize_pattern(pattern: str, normalized: str) -> None:
    assert normalize_pattern(pattern) == normalized


@pytest.mark.parametrize(
    ("pattern", "image", "matches"),
    [
        # `*` matches any run of characters, `/` included
        ("registry.k8s.io/*", "registry.k8s.io/kube-apiserver:v1.30.0", True),
        ("registry.k8s.io/*", "registry.k8s.io/a/b/c@sha256:" + "a" * 64, True),
        ("registry.k8s.io/*", "registry.k8s.io.evil.com/x", False),
        ("registry.k8s.io/*", "evil.com/registry.k8s.io/x", False),
        ("ghcr.io/org/*", "ghcr.io/org/app", True),
        ("ghcr.io/org/*", "ghcr.io/org2/app", False),
        ("ghcr.io/org*", "ghcr.io/org2/app", True),
        ("ghcr.io/*/app", "ghcr.io/a/b/app", True),
        ("ghcr.io/*/app", "ghcr.io/a/app2", False),
        ("*", "anything.io/x/y", True),
        ("*", "nginx", True),
        # exact patterns match the repository, never a prefix, whatever the tag or digest
        ("ghcr.io/org/app", "ghcr.io/org/app:v1", True),
        ("ghcr.io/org/app", "ghcr.io/org/app@sha256:" + "b" * 64, True),
        ("ghcr.io/org/app", "ghcr.io/org/app-2", False),
        # Docker Hub in all its spellings
        ("docker.io/*", "nginx", True),
        ("docker.io/*", "index.docker.io/library/nginx", True),
        ("index.docker.io/*", "nginx:1.27", True),
        ("index.docker.io/*", "docker.io/myorg/app", True),
        ("docker.io/library/*", "nginx", True),
        ("docker.io/library/*", "myorg/app", False),
        ("nginx", "docker.io/library/nginx:latest", True),
        ("nginx", "index.docker.io/nginx", True),
        ("nginx", "ghcr.io/nginx", False),
        ("myorg/*", "myorg/app", True),
        ("myorg/*", "docker.io/myorg/app", True),
        ("myorg/*", "ghcr.io/myorg/app", False),
        ("docker.io/nginx", "nginx", True),
        # a rule cannot be escaped by another spelling of the same registry
        ("docker.io/*", "INDEX.DOCKER.IO/library/nginx", True),
        ("docker.io/*", "Registry-1.Docker.IO:443/library/nginx", True),
        ("nginx", "INDEX.DOCKER.IO/nginx", True),
        ("ghcr.io/org/*", "ghcr.io:443/org/app", True),
        ("ghcr.io/org/*", "GHCR.IO:443/org/app", True),
        ("ghcr.io:443/org/*", "ghcr.io/org/app", True),
        ("ghcr.io/org/*", "ghcr.io:8443/org/app", False),
        ("localhost/*", "localhost:443/app", False),
        ("docker.io/*miner*", "docker.io/evil/xmrminer", True),
        ("ghcr.io/org/*", "GHCR.IO/org/app", True),
        ("myreg/*", "MyReg/app", False),  # a one-label host is not Docker Hub's `myreg` namespace
        # `?`, `[` and `.` are literals
        ("ghcr.io/a.c", "ghcr.io/abc", False),
        ("localhost:5000/*", "localhost:5000/test/app", True),
        ("localhost:5000/*", "localhost:5001/test/app", False),
        ("*.example.com/*", "registry.example.com/app", True),
        ("*.example.com/*", "example.com/app", False),
        # a `*` in the host stays in the host: a repository path is no host (issue 19)
        ("*.example.com/*", "evil.io/x/registry.example.com/app", False),
        ("*.example.com/*", "127.0.0.1:5000/evil/mirror.example.com/app", False),
        ("*.example.com/*", "a.b.example.com/app", True),
        ("*/app", "ghcr.io/app", True),
        ("*/app", "ghcr.io/org/app", False),
        ("127.0.0.1:*/sec/*", "127.0.0.1:5000/sec/app", True),
        ("127.0.0.1:*/sec/*", "127.0.0.1:5000/x/sec/app", False),
        ("ghcr.io/*/app", "ghcr.io/a/b/app", True),  # the path keeps its `*` across `/`
        # ports: leading zeros and the scheme's own port are the same registry
        ("127.0.0.1:5000/demo/*", "127.0.0.1:05000/demo/app", True),
        ("127.0.0.1:5000/demo/*", "127.0.0.1:000005000/demo/app", True),
        ("127.0.0.1:05000/demo/*", "127.0.0.1:5000/demo/app", True),
        ("ghcr.io/org/*", "ghcr.io:0443/org/app", True),
        ("nginx", "registry-1.docker.io:0443/library/nginx", True),
        ("nginx", "registry-1.docker.io:443/nginx", True),
        ("localhost/*", "localhost:80/app", True),
        ("localhost/*", "localhost:080/app", True),
    ],
)
def test_glob_matches(pattern: str, image: str, matches: bool) -> None:
    assert Glob.compile(pattern).matches(parse(image).repository) is matches


def test_registry_host_case_does_not_matter() -> None:
    assert Glob.compile("GHCR.IO/org/*").matches(parse("ghcr.io/org/app").repository)
    assert Glob.compile("ghcr.io/org/*").matches(parse("GHCR.IO/org/app").repository)
    assert not Glob.compile("ghcr.io/Org/*").matches(parse("ghcr.io/org/app").repository)


@pytest.mark.parametrize(
    ("pattern", "image", "matches"),
    [
        # A wildcard host's port is compared as a reference's is: HTTPS's own :443 and leading
        # zeros are not part of the spelling rules compare.
        ("*.example.com:443/*", "a.example.com:443/x/y:v1", True),
        ("*.example.com:443/*", "a.example.com/x/y:v1", True),
        ("*.example.com:0443/*", "a.example.com/x:v1", True),
        ("reg*.example.com:05000/*", "reg1.example.com:5000/x:v1", True),
        ("reg*.example.com:5000/*", "reg1.example.com:05000/x:v1", True),
        ("reg*.example.com:5000/*", "reg1.example.com/x:v1", False),
        # A `*` in the host name stays in the name: no port unless one is written; `:*` is any
        # port, or none.
        ("*.example.com/*", "a.example.com:8443/x:v1", False),
        ("reg*/*", "reg.example.com:5000/x:v1", False),
        ("*/*", "reg.example.com:5000/x:v1", True),  # a host of `*` alone: every registry
        ("*/x", "127.0.0.1:5000/x:v1", True),
        ("*/x", "127.0.0.1:5000/y/x:v1", False),
        ("*/app", "127.0.0.1:5000/app", True),
        ("*.example.com:*/*", "a.example.com:8443/x:v1", True),
        ("*.example.com:*/*", "a.example.com/x:v1", True),
        ("*.example.com:*/*", "a.example.com:443/x:v1", True),
        ("*.example.com:84*/*", "a.example.com:8443/x:v1", True),
        ("*.example.com:84*/*", "a.example.com/x:v1", False),
        ("127.0.0.1:*/sec/*", "127.0.0.1/sec/app", True),
        ("*.Example.com/*", "a.example.com/x:v1", True),
        # A literal Docker Hub alias beside a wildcard port is Docker Hub.
        ("index.docker.io:*/*", "nginx", True),
    ],
)
def test_wildcard_host_is_compared_canonically(pattern: str, image: str, matches: bool) -> None:
    assert Glob.compile(pattern).matches(parse(image).repository) is matches


@pytest.mark.parametrize(
    ("pattern", "normalized"),
    [
        ("*.example.com:443/*", "*.example.com/*"),
        ("*.example.com:0443/*", "*.example.com/*"),
        ("reg*.example.com:05000/*", "reg*.example.com:5000/*"),
        ("*.EXAMPLE.com:*/*", "*.example.com:*/*"),
        ("registry-1.docker.io:*/*", "docker.io:*/*"),
    ],
)
def test_wildcard_host_normalization(pattern: str, normalized: str) -> None:
    assert normalize_pattern(pattern) == normalized


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("*.docker.io/*", "write 'docker.io/*'"),
        ("registry*.docker.io/library/*", "write 'docker.io/library/*'"),
        ("*.hub.docker.com/*", "Docker Hub"),
        ("*.example.com:0*/*", "leading zero"),
        ("*.example.com:70000/*", "port"),
        ("*.example.com:0/*", "port"),
        ("*.example.com:http/*", "port"),
    ],
)
def test_wildcard_hosts_that_can_never_match_are_refused(pattern: str, reason: str) -> None:
    problem = pattern_problem(pattern)
    assert problem is not None and reason in problem, problem


@pytest.mark.parametrize(
    "pattern", ["*.io/*", "*docker.io/*", "*.com/*", "*.example.com:*/*", "*.example.com:8*/*", "*/*"]
)
def test_wildcard_hosts_that_can_match_load(pattern: str) -> None:
    assert pattern_problem(pattern) is None
