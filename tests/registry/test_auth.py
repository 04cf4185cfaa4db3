"""WWW-Authenticate parsing, the token cache and redaction."""

from __future__ import annotations

import pytest

from imaged.registry.auth import (
    MIN_TOKEN_LIFETIME,
    Challenge,
    Credentials,
    TokenCache,
    basic_header,
    parse_www_authenticate,
    redact_url,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/nginx:pull,push"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/nginx:pull,push",
                    },
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        ("Basic", [Challenge("basic", {})]),
        ("BEARER Realm=https://x/token", [Challenge("bearer", {"realm": "https://x/token"})]),
        (
            'Bearer realm = "a" , error="invalid_token", error_description="expired \\"x\\""',
            [
                Challenge(
                    "bearer", {"realm": "a", "error": "invalid_token", "error_description": 'expired "x"'}
                )
            ],
        ),
        (
            'Basic realm="x", Bearer realm="y",service="s"',
            [Challenge("basic", {"realm": "x"}), Challenge("bearer", {"realm": "y", "service": "s"})],
        ),
        (
            "Basic YWxhZGRpbjpvcGVuc2VzYW1l==, Bearer realm=a",
            [Challenge("basic", {}), Challenge("bearer", {"realm": "a"})],
        ),
        ("Negotiate", [Challenge("negotiate", {})]),
        ("", []),
        (",, ,", []),
        ('Bearer realm="unterminated', [Challenge("bearer", {})]),
        ('Bearer realm="a", "garbage', [Challenge("bearer", {"realm": "a"})]),
    ],
)
def test_parse_www_authenticate(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == expected


def test_parse_never_raises_on_junk() -> None:
    for junk in ['="', "=", '"', "a=b=c", "\x00\x01", "Bearer ,,,,=,,", "Bearer realm=" + "x" * 10000]:
        assert isinstance(parse_www_authenticate(junk), list)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_cache_expiry_and_keys() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    alice, bob = Credentials("alice", "pw"), Credentials("bob", "pw")
    cache.put("h:1", "repository:a:pull", alice, "T1", 300)
    assert cache.get("h:1", "repository:a:pull", alice) == "T1"
    # Different credentials, scope or host never share a token.
    assert cache.get("h:1", "repository:a:pull", bob) is None
    assert cache.get("h:1", "repository:b:pull", alice) is None
    assert cache.get("h:2", "repository:a:pull", alice) is None
    clock.now += 300 - 11
    assert cache.get("h:1", "repository:a:pull", alice) == "T1"
    clock.now += 2  # inside the safety margin: treated as expired
    assert cache.get("h:1", "repository:a:pull", alice) is None
    # Tiny or missing lifetimes count as the spec's minimum.
    cache.put("h:1", "s", alice, "T2", 1)
    clock.now += MIN_TOKEN_LIFETIME - 11
    assert cache.get("h:1", "s", alice) == "T2"
    cache.drop("h:1", "s", alice)
    assert cache.get("h:1", "s", alice) is None


def test_token_cache_is_bounded() -> None:
    cache = TokenCache(max_entries=3, clock=Clock())
    for i in range(10):
        cache.put("h", f"s{i}", Credentials(), f"T{i}", 300)
    assert len(cache) == 3
    assert cache.get("h", "s9", Credentials()) == "T9"
    assert cache.get("h", "s0", Credentials()) is None


def test_credentials_do_not_show_secrets() -> None:
    c = Credentials("alice", "s3cret-pw", None)
    assert "s3cret-pw" not in repr(c) and "s3cret-pw" not in str(c)
    assert "s3cret-pw" not in c.fingerprint
    assert Credentials("alice", "other").fingerprint != c.fingerprint
    assert c.basic() == basic_header("alice", "s3cret-pw") == "Basic YWxpY2U6czNjcmV0LXB3"
    assert Credentials(identity_token="tok").basic() is None


def test_redact_url() -> None:
    assert redact_url("https://user:pw@s3.example.com:8443/b/k?X-Amz-Signature=abc#f") == (
        "https://s3.example.com:8443/b/k"
    )
    assert redact_url("http://[::1]:5000/v2/x?token=t") == "http://[::1]:5000/v2/x"
