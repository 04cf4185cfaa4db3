"""The `verification` section: schema, every validation error with its rule index, warnings."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from imaged.config import ConfigError, load_text
from imaged.verify.config import VerificationConfig, config_advice, config_warnings


def _pub_pem(key: Any) -> str:
    pem: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


EC_KEY = ec.generate_private_key(ec.SECP256R1())
P256_PEM = _pub_pem(EC_KEY)
P384_PEM = _pub_pem(ec.generate_private_key(ec.SECP384R1()))
RSA_PEM = _pub_pem(rsa.generate_private_key(65537, 2048))
ED_PEM = _pub_pem(ed25519.Ed25519PrivateKey.generate())
SMALL_RSA_PEM = _pub_pem(rsa.generate_private_key(65537, 1024))
K1_PEM = _pub_pem(ec.generate_private_key(ec.SECP256K1()))


def _cert_pem() -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(EC_KEY.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(EC_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


CERT_PEM = _cert_pem()
KEYLESS = {"issuer": "https://accounts.google.com", "subject": "a@example.com"}


def load(doc: dict[str, Any]) -> VerificationConfig:
    return VerificationConfig.model_validate(doc)


def errors(doc: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        load(doc)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


def test_defaults() -> None:
    c = VerificationConfig()
    assert c.rules == ()
    assert c.no_match == "allow"
    assert c.trusted_root is None and c.tuf_refresh is True
    t = c.tuf
    assert (t.url, t.root, t.source_url) == (None, None, "https://tuf-repo-cdn.sigstore.dev")
    assert (t.refresh_interval, t.max_age, t.timeout) == (86400.0, 7 * 86400.0, 60.0)
    assert (c.cache.success_ttl, c.cache.failure_ttl, c.cache.max_entries) == (300.0, 30.0, 1024)


def test_reference_schema_camel_case() -> None:
    c = load(
        {
            "rules": [
                {
                    "image": "registry.k8s.io/*",
                    "keyless": {"issuer": "https://accounts.google.com", "subject": "krel@k8s.io"},
                },
                {
                    "image": "ghcr.io/siderolabs/*",
                    "keyless": {
                        "issuerRegex": "^https://token\\.actions\\.",
                        "subjectRegex": "@siderolabs\\.com$",
                    },
                },
                {"image": "my-registry/*", "publicKey": {"certificate": P256_PEM}},
                {"image": "no-verify/*", "skip": True},
                {"image": "localhost:3000/*", "deny": True},
            ],
            "noMatch": "deny",
            "tufRefresh": True,
            "cache": {"successTtl": "10m", "failureTtl": "1m30s", "maxEntries": 10},
        }
    )
    assert c.rules[0].image == "registry.k8s.io/*"
    assert c.rules[1].keyless is not None and c.rules[1].keyless.subject_regex == "@siderolabs\\.com$"
    assert c.rules[2].public_key is not None and c.rules[2].public_key.certificate == P256_PEM
    assert c.no_match == "deny" and c.tuf_refresh
    assert (c.cache.success_ttl, c.cache.failure_ttl, c.cache.max_entries) == (600.0, 90.0, 10)


def test_snake_case_names_accepted_too() -> None:
    c = load({"rules": [{"image": "a.io/*", "public_key": {"certificate": P256_PEM}}], "no_match": "deny"})
    assert c.rules[0].public_key is not None and c.no_match == "deny"


@pytest.mark.parametrize(
    "pem", [P256_PEM, P384_PEM, RSA_PEM, ED_PEM, CERT_PEM], ids=["p256", "p384", "rsa", "ed25519", "cert"]
)
def test_public_key_pem_kinds(pem: str) -> None:
    load({"rules": [{"image": "a.io/*", "publicKey": {"certificate": pem}}]})


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"keyless": KEYLESS}, "image pattern is required"),
        ({"image": "", "keyless": KEYLESS}, "image pattern is required"),
        ({"image": "a.io/*", "skip": True, "deny": True}, "skip and deny are mutually exclusive"),
        (
            {"image": "a.io/*", "skip": True, "keyless": KEYLESS},
            "a skip or deny rule cannot have keyless or publicKey",
        ),
        (
            {"image": "a.io/*", "deny": True, "publicKey": {"certificate": P256_PEM}},
            "a skip or deny rule cannot have keyless or publicKey",
        ),
        ({"image": "a.io/*"}, "a rule needs one of keyless or publicKey"),
        (
            # keyless and publicKey together are two authorities (any one verifies); 3 of 2 cannot
            {"image": "a.io/*", "keyless": KEYLESS, "publicKey": {"certificate": P256_PEM}, "threshold": 3},
            "threshold 3 is more than the rule's 2 authorities",
        ),
        (
            {"image": "a.io/*", "keyless": {"subject": "a@b.c"}},
            "keyless.issuer (or keyless.issuerRegex) is required",
        ),
        (
            {"image": "a.io/*", "keyless": {"issuer": "https://i"}},
            "keyless.subject or keyless.subjectRegex is required",
        ),
        ({"image": "a.io/*", "publicKey": {}}, "publicKey.certificate is required"),
        ({"image": "a.io/*", "publicKey": {"certificate": "  "}}, "publicKey.certificate is required"),
        (
            {"image": "a.io/*", "keyless": {"issuerRegex": "(", "subject": "a"}},
            "keyless.issuerRegex '(' is not a valid regular expression",
        ),
        (
            {"image": "a.io/*", "keyless": {"issuer": "i", "subjectRegex": "[a-"}},
            "keyless.subjectRegex '[a-' is not a valid regular expression",
        ),
        (
            {"image": "a.io/*", "publicKey": {"certificate": "not a pem"}},
            "publicKey.certificate: no PEM block found",
        ),
        (
            {
                "image": "a.io/*",
                "publicKey": {"certificate": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
            },
            "publicKey.certificate: cannot parse PUBLIC KEY PEM",
        ),
        (
            {
                "image": "a.io/*",
                "publicKey": {"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"},
            },
            "publicKey.certificate: cannot parse CERTIFICATE PEM",
        ),
        (
            {
                "image": "a.io/*",
                "publicKey": {
                    "certificate": "-----BEGIN RSA PRIVATE KEY-----\nAA\n-----END RSA PRIVATE KEY-----"
                },
            },
            "unsupported PEM block 'RSA PRIVATE KEY'",
        ),
        (
            {"image": "a.io/*", "publicKey": {"certificate": P256_PEM + P384_PEM}},
            "expected one PEM block, found 2",
        ),
        (
            {"image": "a.io/*", "publicKey": {"certificate": SMALL_RSA_PEM}},
            "RSA key of 1024 bits is too small",
        ),
        ({"image": "a.io/*", "publicKey": {"certificate": K1_PEM}}, "unsupported elliptic curve secp256k1"),
        ({"image": "a.io/app@sha256:" + "a" * 64, "skip": True}, "names a digest"),
        ({"image": "a.io/app:v1", "skip": True}, "names a tag"),
        ({"image": "a.io//app", "skip": True}, "empty path component"),
        ({"image": "a.io/app name", "skip": True}, "has characters no repository name contains"),
        ({"image": "ghcr.io/MyOrg/*", "skip": True}, "upper-case letters in its repository path"),
        ({"image": "registry.corp.example", "skip": True}, "write 'registry.corp.example/*'"),
    ],
)
def test_rule_validation_errors(rule: dict[str, Any], message: str) -> None:
    good = {"image": "ok.io/*", "skip": True}
    errs = errors({"rules": [good, rule]})
    assert len(errs) == 1
    loc, msg = errs[0]
    assert loc == ("rules", 1)  # every error names its rule
    assert message in msg


def test_all_problems_of_a_rule_are_reported_together() -> None:
    [(loc, msg)] = errors({"rules": [{"skip": True, "deny": True, "keyless": {"subjectRegex": "("}}]})
    assert loc == ("rules", 0)
    for part in (
        "image pattern is required",
        "skip and deny are mutually exclusive",
        "a skip or deny rule cannot have keyless or publicKey",
        "keyless.issuer (or keyless.issuerRegex) is required",
        "keyless.subjectRegex '(' is not a valid regular expression",
    ):
        assert part in msg


def test_errors_in_several_rules_each_carry_their_index() -> None:
    errs = errors(
        {
            "rules": [
                {"image": "a.io/*"},
                {"image": "b.io/*", "skip": True},
                {"image": "c.io/*", "deny": True, "skip": True},
            ]
        }
    )
    assert [loc for loc, _ in errs] == [("rules", 0), ("rules", 2)]


def test_loader_names_the_rule_in_the_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("verification:\n  rules:\n    - image: a.io/*\n      skip: true\n    - image: b.io/*\n")
    assert "verification.rules[1]" in str(info.value)
    assert "needs one of keyless or publicKey" in str(info.value)


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"noMatch": "maybe"}, ("noMatch",)),
        ({"cache": {"successTtl": "5 minutes"}}, ("cache", "successTtl")),
        ({"cache": {"failureTtl": -1}}, ("cache", "failureTtl")),
        ({"cache": {"maxEntries": -1}}, ("cache", "maxEntries")),
        ({"rules": [{"image": "a.io/*", "skip": True, "extra": 1}]}, ("rules", 0, "extra")),
        ({"unknown": True}, ("unknown",)),
    ],
)
def test_section_errors(doc: dict[str, Any], where: tuple[Any, ...]) -> None:
    assert [loc for loc, _ in errors(doc)] == [where]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), (90, 90.0), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("500ms", 0.5), ("0", 0.0)],
)
def test_durations(text: Any, seconds: float) -> None:
    assert load({"cache": {"successTtl": text}}).cache.success_ttl == seconds


def test_trusted_root_missing_file_is_refused(tmp_path: Any) -> None:
    [(_, msg)] = errors({"trustedRoot": str(tmp_path / "nope.json")})
    assert "trustedRoot: cannot read" in msg and "nope.json" in msg


def test_trusted_root_not_a_trust_root_is_refused(tmp_path: Any) -> None:
    p = tmp_path / "root.json"
    p.write_text('{"mediaType": "something/else"}')
    [(_, msg)] = errors({"trustedRoot": str(p)})
    assert "not a Sigstore trusted root" in msg


SECRET = "c2VjcmV0UGFzc3dvcmQ"


def _embedded_root() -> dict[str, Any]:
    import importlib.resources

    data = (
        importlib.resources.files("sigstore._store")
        .joinpath("https%3A%2F%2Ftuf-repo-cdn.sigstore.dev", "trusted_root.json")
        .read_bytes()
    )
    doc: dict[str, Any] = json.loads(data)
    return doc


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        # Another JSON file (a registry credentials file): its keys and values are not echoed.
        ({"auths": {f"{SECRET}.example.com": {"auth": SECRET}}}, "mediaType"),
        # A trusted root with a value of the wrong kind or form.
        (_embedded_root() | {"mediaType": {"a": SECRET}}, "mediaType"),
        (
            _embedded_root()
            | {"tlogs": [{**_embedded_root()["tlogs"][0], "publicKey": {"rawBytes": SECRET + "!"}}]},
            "tlogs",
        ),
    ],
)
def test_trusted_root_errors_name_the_field_not_the_content(
    tmp_path: Any, doc: dict[str, Any], where: str
) -> None:
    """PolicyService.Test and the log show these messages: what a file holds must not leak."""
    p = tmp_path / "root.json"
    p.write_text(json.dumps(doc))
    [(_, msg)] = errors({"trustedRoot": str(p)})
    assert "not a Sigstore trusted root" in msg and where in msg, msg
    assert SECRET not in msg and "input_value" not in msg, msg


def test_tuf_root_errors_do_not_show_the_content(tmp_path: Any) -> None:
    p = tmp_path / "root.json"
    p.write_text(json.dumps({"signed": {"_type": SECRET}, "signatures": []}))
    [(_, msg)] = errors({"tuf": {"url": "https://m.example", "root": str(p)}})
    assert "not TUF metadata" in msg and SECRET not in msg, msg


def test_trusted_root_valid_file(tmp_path: Any) -> None:
    import importlib.resources

    data = (
        importlib.resources.files("sigstore._store")
        .joinpath("https%3A%2F%2Ftuf-repo-cdn.sigstore.dev", "trusted_root.json")
        .read_bytes()
    )
    p = tmp_path / "root.json"
    p.write_bytes(data)
    assert load({"trustedRoot": str(p)}).trusted_root == str(p)


# -- tuf ------------------------------------------------------------------------------------------


def _tuf_root(tmp_path: Any) -> str:
    from tests.support.tufrepo import TufRepository

    repo = TufRepository()
    try:
        return str(repo.write_initial_root(tmp_path / "root.json"))
    finally:
        repo.close()


def test_tuf_private_repository(tmp_path: Any) -> None:
    root = _tuf_root(tmp_path)
    c = load({"tuf": {"url": "https://tuf.internal.example/", "root": root, "refreshInterval": "6h"}})
    assert c.tuf.source_url == "https://tuf.internal.example" and c.tuf.root == root
    assert c.tuf.refresh_interval == 6 * 3600.0
    # The public-good instance named explicitly needs no root: sigstore-python ships it.
    assert load({"tuf": {"url": "https://tuf-repo-cdn.sigstore.dev"}}).tuf.root is None


@pytest.mark.parametrize(
    ("tuf", "message"),
    [
        ({"url": "ftp://mirror.example"}, "url must be an http(s) URL"),
        ({"url": "https://mirror.example"}, "root (the repository's initial root.json) is required"),
        ({"url": "https://m.example", "root": "/nonexistent/root.json"}, "root: cannot read /nonexistent"),
        ({"refreshInterval": "500ms"}, "refreshInterval must be at least 1s"),
        ({"timeout": 0}, "timeout must be at least 1s"),
        ({"maxAge": -1}, "greater than or equal to 0"),
        ({"refresh": "1h"}, "Extra inputs are not permitted"),
    ],
)
def test_tuf_refused(tuf: dict[str, Any], message: str) -> None:
    [(_, msg)] = errors({"tuf": tuf})
    assert message in msg


@pytest.mark.parametrize(
    "url",
    ["https://mirror:S3cretPw@tuf.example", "https://token@tuf.example/repo", "http://u:S3cretPw@[::1]:8080"],
)
def test_tuf_url_with_credentials_is_refused(tmp_path: Any, url: str) -> None:
    """They would end up in the state directory's name, the log and Verify messages."""
    [(_, msg)] = errors({"tuf": {"url": url, "root": _tuf_root(tmp_path)}})
    assert "url must not hold credentials" in msg
    assert "S3cretPw" not in msg and "token" not in msg


def test_tuf_root_must_be_tuf_root_metadata(tmp_path: Any) -> None:
    from tests.support.tufrepo import TufRepository

    p = tmp_path / "root.json"
    p.write_text('{"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}')
    [(_, msg)] = errors({"tuf": {"url": "https://m.example", "root": str(p)}})
    assert "not TUF metadata" in msg
    repo = TufRepository()
    try:
        repo.publish(b"{}")
        p.write_bytes(repo.timestamp_json())
    finally:
        repo.close()
    [(_, msg)] = errors({"tuf": {"url": "https://m.example", "root": str(p)}})
    assert "TUF timestamp metadata, not root" in msg


# -- warnings -----------------------------------------------------------------------------------


def test_unanchored_regexes_warn() -> None:
    c = load(
        {
            "rules": [
                {"image": "a.io/*", "keyless": {"issuer": "i", "subjectRegex": "@example\\.com$"}},
                {
                    "image": "b.io/*",
                    "keyless": {"issuerRegex": "^https://token$", "subjectRegex": "^x@example\\.com$"},
                },
                {"image": "c.io/*", "keyless": {"issuerRegex": "accounts", "subject": "s"}},
            ]
        }
    )
    w = config_warnings(c)
    assert len(w) == 2
    assert w[0].startswith("rules[0] ('a.io/*'): keyless.subjectRegex '@example\\\\.com$' is not anchored")
    assert w[1].startswith("rules[2] ('c.io/*'): keyless.issuerRegex 'accounts' is not anchored")


@pytest.mark.parametrize(
    ("earlier", "later", "shadowed"),
    [
        ("*", "ghcr.io/app", True),
        ("ghcr.io/*", "ghcr.io/org/app", True),
        ("ghcr.io/org/app", "ghcr.io/org/app", True),
        ("docker.io/*", "nginx", True),
        ("index.docker.io/*", "docker.io/library/nginx", True),
        ("ghcr.io/*/app", "ghcr.io/a*/app", True),
        ("ghcr.io/org/*", "ghcr.io/*", False),
        ("ghcr.io/org/app", "ghcr.io/org/*", False),
        ("a*", "*a", False),
        ("ghcr.io/*", "quay.io/*", False),
        ("*/app", "ghcr.io/*", False),
    ],
)
def test_shadowed_rules_warn(earlier: str, later: str, shadowed: bool) -> None:
    c = load({"rules": [{"image": earlier, "skip": True}, {"image": later, "deny": True}]})
    w = config_warnings(c)
    assert bool(w) == shadowed, w
    if shadowed:
        assert w[0] == (
            f"rules[1] ({later!r}) is never used: rules[0] ({earlier!r}) matches every image it matches, "
            "and the first matching rule wins"
        )


@pytest.mark.parametrize(
    ("doc", "advised"),
    [
        ({"rules": [{"image": "a.io/*", "deny": True}]}, True),
        ({"rules": [{"image": "a.io/*", "publicKey": {"certificate": P256_PEM}}]}, True),
        ({"rules": [{"image": "a.io/*", "deny": True}], "noMatch": "deny"}, False),
        ({"rules": [{"image": "a.io/*", "deny": True}, {"image": "*", "skip": True}]}, False),
        ({"rules": [{"image": "a.io/*", "skip": True}]}, False),
        ({}, False),
    ],
)
def test_host_rules_with_no_match_allow_get_advice(doc: dict[str, Any], advised: bool) -> None:
    advice = config_advice(load(doc))
    assert bool(advice) == advised, advice
    if advised:
        assert "noMatch: deny" in advice[0] and "localhost and 127.0.0.1" in advice[0]
