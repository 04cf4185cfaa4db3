"""Reference parsing and normalization (the distribution/reference grammar docker and CRI use)."""

from __future__ import annotations

import pytest

from imaged.errors import InvalidArgument
from imaged.oci.digest import validate_digest
from imaged.registry.reference import (
    canonical_domain,
    canonical_repository,
    normalize_host,
    parse,
    registry_host,
)

D = "sha256:" + "a" * 64
D512 = "sha512:" + "b" * 128


@pytest.mark.parametrize(
    ("ref", "domain", "path", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", "latest", None),
        ("nginx:1.27", "docker.io", "library/nginx", "1.27", None),
        ("library/nginx", "docker.io", "library/nginx", "latest", None),
        ("docker.io/nginx", "docker.io", "library/nginx", "latest", None),
        ("docker.io/library/nginx:latest", "docker.io", "library/nginx", "latest", None),
        ("index.docker.io/library/nginx", "docker.io", "library/nginx", "latest", None),
        ("registry-1.docker.io/foo/bar:v2", "docker.io", "foo/bar", "v2", None),
        ("registry.hub.docker.com/foo/bar", "docker.io", "foo/bar", "latest", None),
        ("user/repo", "docker.io", "user/repo", "latest", None),
        # Docker Hub's names whatever their case; other hosts as written (records, address, port:
        # the policy compares them in one spelling, verify.matching).
        ("INDEX.DOCKER.IO/library/nginx", "docker.io", "library/nginx", "latest", None),
        ("Docker.IO/nginx", "docker.io", "library/nginx", "latest", None),
        ("GHCR.io/org/app:V1", "GHCR.io", "org/app", "V1", None),
        ("ghcr.io:443/org/app", "ghcr.io:443", "org/app", "latest", None),
        ("MyReg/app", "MyReg", "app", "latest", None),
        ("localhost/foo", "localhost", "foo", "latest", None),
        ("localhost:5000/foo:v1", "localhost:5000", "foo", "v1", None),
        ("127.0.0.1:5000/a/b/c:v1", "127.0.0.1:5000", "a/b/c", "v1", None),
        ("[::1]:5000/foo:v1", "[::1]:5000", "foo", "v1", None),
        ("[fe80::1]/foo", "[fe80::1]", "foo", "latest", None),
        ("ghcr.io/org/img@" + D, "ghcr.io", "org/img", None, D),
        ("ghcr.io/org/img:v1@" + D, "ghcr.io", "org/img", "v1", D),
        ("x@" + D512, "docker.io", "library/x", None, D512),
        ("example.com:5000", "docker.io", "library/example.com", "5000", None),  # as docker reads it
        (
            "my-registry.local:443/a_b/c__d/e-f.g:tag_1.0-x",
            "my-registry.local:443",
            "a_b/c__d/e-f.g",
            "tag_1.0-x",
            None,
        ),
    ],
)
def test_parse_normalizes(ref: str, domain: str, path: str, tag: str | None, digest: str | None) -> None:
    r = parse(ref)
    assert (r.domain, r.path, r.tag, r.digest) == (domain, path, tag, digest)


def test_forms() -> None:
    r = parse("nginx")
    assert str(r) == "docker.io/library/nginx:latest"
    assert r.repository == "docker.io/library/nginx"
    assert r.familiar() == "nginx:latest"
    assert r.object == "latest"
    assert r.pinned(D) == f"docker.io/library/nginx@{D}"
    assert parse(f"nginx:1@{D}").object == D
    assert str(parse(f"nginx:1@{D}")) == f"docker.io/library/nginx:1@{D}"
    assert parse("nginx", default_tag=False).tag is None
    assert parse("ghcr.io/a/b:v").familiar() == "ghcr.io/a/b:v"
    assert parse("nginx").with_digest(D).pinned() == f"docker.io/library/nginx@{D}"
    with pytest.raises(ValueError):
        parse("nginx").pinned()


def test_registry_host() -> None:
    assert registry_host("docker.io") == "registry-1.docker.io"
    assert registry_host("ghcr.io") == "ghcr.io"
    assert registry_host(parse("index.docker.io/x/y").domain) == "registry-1.docker.io"


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        ("", "empty"),
        (" nginx", "white space"),
        ("nginx latest", "white space"),
        ("nginx:", "bad tag"),
        ("nginx:bad$tag", "bad tag"),
        ("nginx:" + "t" * 129, "bad tag"),
        ("nginx@", "empty digest"),
        ("nginx@sha256:abc", "64 lowercase hex"),
        ("nginx@sha256:" + "A" * 64, "64 lowercase hex"),
        ("nginx@md5:" + "a" * 32, "only sha256 and sha512"),
        ("nginx@sha512:abc", "128 lowercase hex"),
        ("@" + D, "no repository name"),
        (D, "image id"),
        ("a" * 64, "image id"),
        ("example.com/Foo", "lowercase"),
        ("example.com:port/foo", "bad registry host"),
        ("foo//bar", "bad repository path"),
        ("-foo/bar", "bad repository path"),
        ("foo/bar-", "bad repository path"),
        ("ghcr.io/" + "a" * 300, "longer than"),
        ("x" * 5000, "longer than 1024"),
        ("x" * 1025, "longer than 1024"),
        ("127.0.0.1:65536/a/b", "out of range"),
        ("127.0.0.1:0/a/b", "out of range"),
        ("ghcr.io:00000/a/b", "out of range"),
        ("[::1]:70000/a/b", "out of range"),
    ],
)
def test_invalid(ref: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse(ref)
    assert fragment in e.value.message


def test_invalid_reference_message_names_it() -> None:
    with pytest.raises(InvalidArgument) as e:
        parse("nginx@sha256:abc")
    assert "nginx@sha256:abc" in e.value.message


def test_validate_digest() -> None:
    assert validate_digest(D) == D
    assert validate_digest(D512) == D512
    for bad in ("", "sha256", "sha256:", "sha256:" + "a" * 63, "sha256:" + "g" * 64, "md5:" + "a" * 32):
        with pytest.raises(InvalidArgument):
            validate_digest(bad)


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("127.0.0.1:05000", "127.0.0.1:5000"),
        ("127.0.0.1:000005000", "127.0.0.1:5000"),
        ("ghcr.io:0443", "ghcr.io"),
        ("GHCR.IO:443", "ghcr.io"),
        ("ghcr.io:80", "ghcr.io:80"),  # HTTPS on port 80 is another server
        ("registry-1.docker.io:0443", "docker.io"),
        ("localhost:80", "localhost"),  # plain HTTP: its port is 80
        ("localhost:443", "localhost:443"),
        ("127.0.0.1:080", "127.0.0.1"),
        ("[::1]:80", "[::1]"),
        ("[::1]:0443", "[::1]:443"),
    ],
)
def test_canonical_domain(host: str, canonical: str) -> None:
    assert canonical_domain(host) == canonical


def test_canonical_domain_follows_the_scheme_of_each_spelling() -> None:
    plain = {"lan.example", "lan.example:80"}
    assert canonical_domain("lan.example:80", lambda h: h in plain) == "lan.example"
    assert canonical_domain("lan.example:443", lambda h: h in plain) == "lan.example:443"
    # `lan.example:80` reached in plain HTTP, `lan.example` in HTTPS: two servers.
    assert canonical_domain("lan.example:80", lambda h: h == "lan.example:80") == "lan.example:80"


def test_canonical_repository_and_normalize_host() -> None:
    assert canonical_repository("registry-1.docker.io:443/nginx") == "docker.io/library/nginx"
    assert canonical_repository("127.0.0.1:05000/demo/app") == "127.0.0.1:5000/demo/app"
    assert normalize_host("127.0.0.1:05000") == "127.0.0.1:5000"
    assert normalize_host("Index.Docker.IO") == "docker.io"
    assert normalize_host("ghcr.io:443") == "ghcr.io:443"  # config keys and addresses keep the port
