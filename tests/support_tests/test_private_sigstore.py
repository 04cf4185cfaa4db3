"""The private Sigstore fixture is right, judged by sigstore-python and plain `cryptography`, never by imaged.

If these pass, a Verify test that fails on material from tests.support.sigstore points at imaged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pathlib
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store
from sigstore.errors import Error as SigstoreError
from sigstore.models import Bundle, TrustedRoot
from sigstore.verify import Verifier
from sigstore.verify.policy import Identity

from tests.conftest import FIXTURES
from tests.support.registry import Registry
from tests.support.sigstore import (
    ANN_BUNDLE,
    ANN_CERTIFICATE,
    ANN_CHAIN,
    ANN_SIGNATURE,
    BUNDLE_MEDIA_TYPE,
    OCI_EMPTY,
    OCI_EMPTY_DIGEST,
    OCI_INDEX,
    BundleSignature,
    CTLog,
    Leaf,
    LegacySignature,
    OciPusher,
    PrivateSigstore,
    StaticKey,
    legacy_signature_tag,
    pae,
    referrers_tag,
)

VECTORS = FIXTURES / "vectors"
DIGEST = "sha256:" + hashlib.sha256(b"an image manifest").hexdigest()
OTHER_DIGEST = "sha256:" + hashlib.sha256(b"another image manifest").hexdigest()
REF = "127.0.0.1:5000/test/app"
EMAIL, ISSUER = "alice@example.com", "https://accounts.example.com"
WORKFLOW = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"
GHA = "https://token.actions.githubusercontent.com"


@pytest.fixture(scope="module")
def ps() -> PrivateSigstore:
    return PrivateSigstore()


@pytest.fixture(scope="module")
def trusted_root_path(ps: PrivateSigstore, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return ps.write_trusted_root(tmp_path_factory.mktemp("trust") / "trusted_root.json")


@pytest.fixture(scope="module")
def verifier(trusted_root_path: pathlib.Path) -> Verifier:
    return Verifier(trusted_root=TrustedRoot.from_file(str(trusted_root_path)))


@pytest.fixture(scope="module")
def leaf(ps: PrivateSigstore) -> Leaf:
    return ps.issue_leaf(EMAIL, ISSUER)


def sigstore_verify(verifier: Verifier, sig: BundleSignature | bytes, identity: str, issuer: str) -> bytes:
    raw = sig.json_bytes if isinstance(sig, BundleSignature) else sig
    payload_type, payload = verifier.verify_dsse(
        Bundle.from_json(raw), Identity(identity=identity, issuer=issuer)
    )
    assert payload_type == "application/vnd.in-toto+json"
    return payload


def expect_sigstore_failure(verifier: Verifier, raw: bytes, identity: str, issuer: str, needle: str) -> None:
    """sigstore-python refuses, for the reason the test meant (not some unrelated parse error)."""
    with pytest.raises(SigstoreError) as info:
        sigstore_verify(verifier, raw, identity, issuer)
    assert needle.lower() in str(info.value).lower(), str(info.value)


def edit(sig: BundleSignature, change: Any) -> bytes:
    doc = json.loads(sig.json_bytes)
    change(doc)
    return json.dumps(doc).encode()


# -- trusted root --------------------------------------------------------------------------------


def test_trusted_root_shape_matches_public_good(ps: PrivateSigstore, trusted_root_path: pathlib.Path) -> None:
    ours = json.loads(trusted_root_path.read_bytes())
    real = json.loads((VECTORS / "trust" / "sigstore-public-good.trusted_root.json").read_bytes())
    assert (
        ours["mediaType"] == real["mediaType"] == "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
    )
    for section in ("tlogs", "ctlogs", "certificateAuthorities"):
        assert set(ours[section][0]) == set(real[section][0]), section
    tlog = ours["tlogs"][0]
    assert base64.b64decode(tlog["logId"]["keyId"]) == ps.rekor_log_id
    der = base64.b64decode(tlog["publicKey"]["rawBytes"])
    assert hashlib.sha256(der).digest() == ps.rekor_log_id
    root = TrustedRoot.from_file(str(trusted_root_path))
    assert len(root.get_fulcio_certs()) == 2
    start = datetime.fromisoformat(ours["certificateAuthorities"][0]["validFor"]["start"])
    assert start < ps.now


def test_same_seed_and_time_give_identical_material() -> None:
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    a, b = PrivateSigstore(now=now), PrivateSigstore(now=now)
    assert a.trusted_root_json() == b.trusted_root_json()
    la, lb = a.issue_leaf(EMAIL, ISSUER), b.issue_leaf(EMAIL, ISSUER)
    assert la.der == lb.der
    assert a.sign_bundle(DIGEST, la).json_bytes == b.sign_bundle(DIGEST, lb).json_bytes
    assert PrivateSigstore(seed=b"other", now=now).trusted_root_json() != a.trusted_root_json()


# -- certificates --------------------------------------------------------------------------------


def test_leaf_is_fulcio_shaped(ps: PrivateSigstore, leaf: Leaf) -> None:
    cert = leaf.certificate
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(minutes=10)
    assert cert.not_valid_before_utc <= ps.now <= cert.not_valid_after_utc
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.RFC822Name) == [EMAIL]
    v1 = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")).value
    v2 = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")).value
    assert isinstance(v1, x509.UnrecognizedExtension) and v1.value == ISSUER.encode()
    assert isinstance(v2, x509.UnrecognizedExtension)
    assert v2.value == b"\x0c" + bytes([len(ISSUER)]) + ISSUER.encode()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CODE_SIGNING in eku
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    scts = cert.extensions.get_extension_for_class(x509.PrecertificateSignedCertificateTimestamps).value
    assert len(scts) == 1


def test_leaf_issuer_variants_and_othername(ps: PrivateSigstore) -> None:
    v1_oid, v2_oid = (x509.ObjectIdentifier(f"1.3.6.1.4.1.57264.1.{n}") for n in (1, 8))

    def ext(leaf: Leaf, oid: x509.ObjectIdentifier) -> bytes | None:
        try:
            value = leaf.certificate.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            return None
        assert isinstance(value, x509.UnrecognizedExtension)
        return value.value

    both = ps.issue_leaf(EMAIL, ISSUER, issuer_v1="https://a.example", issuer_v2="https://b.example")
    assert ext(both, v1_oid) == b"https://a.example"
    assert ext(both, v2_oid) == b"\x0c\x11https://b.example"
    v2_only = ps.issue_leaf(EMAIL, ISSUER, issuer_v1=False)
    assert ext(v2_only, v1_oid) is None and ext(v2_only, v2_oid) is not None
    none = ps.issue_leaf(EMAIL, None)
    assert ext(none, v1_oid) is None and ext(none, v2_oid) is None
    other = ps.issue_leaf("alice!example.com", ISSUER, san_kind="othername")
    san = other.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    [name] = san.get_values_for_type(x509.OtherName)
    assert name.type_id.dotted_string == "1.3.6.1.4.1.57264.1.7"
    assert name.value == b"\x0c\x11alice!example.com"


def _verify_sct_by_hand(cert: x509.Certificate, issuer: x509.Certificate, ct_pem: bytes) -> None:
    """RFC 6962 3.2 digitally-signed struct for a precert entry, rebuilt here from the spec."""
    sct = cert.extensions.get_extension_for_class(x509.PrecertificateSignedCertificateTimestamps).value[0]
    ct_key = serialization.load_pem_public_key(ct_pem)
    assert isinstance(ct_key, ec.EllipticCurvePublicKey)
    spki = ct_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert sct.log_id == hashlib.sha256(spki).digest()
    issuer_spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tbs = cert.tbs_precertificate_bytes
    ts = int(sct.timestamp.replace(tzinfo=UTC).timestamp() * 1000)
    signed = (
        struct.pack("!BBQH", 0, 0, ts, 1)
        + hashlib.sha256(issuer_spki).digest()
        + len(tbs).to_bytes(3, "big")
        + tbs
        + struct.pack("!H", len(sct.extension_bytes))
        + sct.extension_bytes
    )
    ct_key.verify(sct.signature, signed, ec.ECDSA(hashes.SHA256()))


def test_sct_verifies_against_ct_key(ps: PrivateSigstore, leaf: Leaf) -> None:
    _verify_sct_by_hand(leaf.certificate, ps.fulcio.intermediate, ps.ct_public_pem)
    rogue = ps.issue_leaf(EMAIL, ISSUER, ct_log=CTLog(ps.rogue_key()))
    with pytest.raises((InvalidSignature, AssertionError)):
        _verify_sct_by_hand(rogue.certificate, ps.fulcio.intermediate, ps.ct_public_pem)


def _chain_at(leaf: Leaf, roots: list[x509.Certificate], when: datetime) -> None:
    ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    ca = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    verifier = (
        PolicyBuilder().store(Store(roots)).time(when).extension_policies(ca_policy=ca, ee_policy=ee)
    ).build_client_verifier()
    verifier.verify(leaf.certificate, list(leaf.chain[:-1]))


def test_chain_verifies_at_integrated_time_only(ps: PrivateSigstore, leaf: Leaf) -> None:
    _chain_at(leaf, [ps.fulcio.root], ps.now)
    with pytest.raises(x509.verification.VerificationError):
        _chain_at(leaf, [ps.fulcio.root], ps.now + timedelta(minutes=30))
    late = ps.issue_leaf_outside_validity(EMAIL, ISSUER)
    with pytest.raises(x509.verification.VerificationError):
        _chain_at(late, [ps.fulcio.root], ps.now)
    with pytest.raises(x509.verification.VerificationError):
        _chain_at(leaf, [PrivateSigstore(seed=b"foreign").fulcio.root], ps.now)


# -- bundles, judged by sigstore-python ----------------------------------------------------------


def test_sigstore_python_verifies_keyless_bundle(verifier: Verifier, ps: PrivateSigstore, leaf: Leaf) -> None:
    sig = ps.sign_bundle(DIGEST, leaf)
    statement = json.loads(sigstore_verify(verifier, sig, EMAIL, ISSUER))
    assert statement == {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"digest": {"sha256": DIGEST.removeprefix("sha256:")}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
    }
    assert sig.bundle["mediaType"] == BUNDLE_MEDIA_TYPE
    entry = sig.bundle["verificationMaterial"]["tlogEntries"][0]
    assert entry["kindVersion"] == {"kind": "dsse", "version": "0.0.1"}
    assert len(entry["inclusionProof"]["hashes"]) >= 2  # a real multi-level tree, not a single leaf


def test_sigstore_python_verifies_many_entries_and_uri_identity(
    verifier: Verifier, ps: PrivateSigstore
) -> None:
    gha = ps.issue_leaf(WORKFLOW, GHA)
    assert gha.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier) == [WORKFLOW]
    sizes = set()
    for i in range(9):  # tree sizes cross several powers of two: every proof shape is exercised
        digest = "sha256:" + hashlib.sha256(b"image %d" % i).hexdigest()
        sig = ps.sign_bundle(digest, gha)
        assert sig.tlog_entry is not None
        sizes.add(len(sig.tlog_entry.hashes))
        sigstore_verify(verifier, sig, WORKFLOW, GHA)
    assert len(sizes) >= 2


def test_bundle_shape_matches_cosign_vector(ps: PrivateSigstore, leaf: Leaf) -> None:
    real = json.loads(
        (VECTORS / "B-bundle" / "B1-docker-actions-toolkit-ecr" / "bundle.sigstore.json").read_bytes()
    )
    ours = ps.sign_bundle(DIGEST, leaf).bundle
    assert set(ours) == set(real)
    assert set(ours["dsseEnvelope"]) == set(real["dsseEnvelope"])
    real_entry, our_entry = (
        real["verificationMaterial"]["tlogEntries"][0],
        ours["verificationMaterial"]["tlogEntries"][0],
    )
    assert set(our_entry) == set(real_entry)
    assert set(our_entry["inclusionProof"]) == set(real_entry["inclusionProof"])
    real_body = json.loads(base64.b64decode(real_entry["canonicalizedBody"]))
    our_body = json.loads(base64.b64decode(our_entry["canonicalizedBody"]))
    assert set(our_body["spec"]) == set(real_body["spec"])
    # The envelope hash is sha256 of the compact sorted envelope (holds for B1 too, see INDEX.md).
    env = ours["dsseEnvelope"]
    compact = json.dumps(env, sort_keys=True, separators=(",", ":")).encode()
    assert our_body["spec"]["envelopeHash"]["value"] == hashlib.sha256(compact).hexdigest()
    note = our_entry["inclusionProof"]["checkpoint"]["envelope"]
    lines = note.split("\n")
    assert lines[0] == f"{ps.rekor.name} - {ps.rekor.tree_id}" and lines[3] == ""
    assert lines[4].startswith(f"\u2014 {ps.rekor.name} ") and note.endswith("\n")
    assert base64.b64decode(lines[4].split(" ")[2])[:4] == ps.rekor_log_id[:4]


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("wrong-identity", "SANs do not match"),
        ("wrong-issuer", "OIDCIssuer does not match"),
        ("tampered-payload", "signature"),
        ("cert-outside-validity", "certificate chain"),
        ("rogue-set", "SET"),
        ("rogue-checkpoint", "checkpoint"),
        ("rogue-sct", "SCT"),
        ("no-sct", "SCT"),
        ("bad-proof", "inclusion proof"),
        ("not-code-signing", "code signing"),
        ("foreign-root", "certificate chain"),
    ],
)
def test_sigstore_python_refuses_bad_bundles(
    verifier: Verifier, ps: PrivateSigstore, leaf: Leaf, case: str, needle: str
) -> None:
    identity, issuer = EMAIL, ISSUER
    raw: bytes
    if case == "wrong-identity":
        raw, identity = ps.sign_bundle(DIGEST, leaf).json_bytes, "mallory@example.com"
    elif case == "wrong-issuer":
        raw, issuer = ps.sign_bundle(DIGEST, leaf).json_bytes, "https://evil.example.com"
    elif case == "tampered-payload":
        other = base64.b64encode(ps.sign_bundle(OTHER_DIGEST, leaf).statement).decode()
        raw = edit(ps.sign_bundle(DIGEST, leaf), lambda d: d["dsseEnvelope"].update(payload=other))
    elif case == "cert-outside-validity":
        raw = ps.sign_bundle(DIGEST, ps.issue_leaf_outside_validity(EMAIL, ISSUER)).json_bytes
    elif case == "rogue-set":
        raw = ps.sign_bundle(DIGEST, leaf, set_key=ps.rogue_key()).json_bytes
    elif case == "rogue-checkpoint":
        raw = ps.sign_bundle(DIGEST, leaf, checkpoint_key=ps.rogue_key()).json_bytes
    elif case == "rogue-sct":
        rogue_ct = CTLog(ps.rogue_key())
        raw = ps.sign_bundle(DIGEST, ps.issue_leaf(EMAIL, ISSUER, ct_log=rogue_ct)).json_bytes
    elif case == "no-sct":
        raw = ps.sign_bundle(DIGEST, ps.issue_leaf(EMAIL, ISSUER, sct=False)).json_bytes
    elif case == "bad-proof":

        def flip(d: dict[str, Any]) -> None:
            proof = d["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]
            proof["hashes"][0] = base64.b64encode(b"\x00" * 32).decode()

        raw = edit(ps.sign_bundle(DIGEST, leaf), flip)
    elif case == "not-code-signing":
        raw = ps.sign_bundle(DIGEST, ps.issue_leaf(EMAIL, ISSUER, code_signing=False)).json_bytes
    else:
        foreign = PrivateSigstore(seed=b"foreign")
        raw = foreign.sign_bundle(DIGEST, foreign.issue_leaf(EMAIL, ISSUER)).json_bytes
    expect_sigstore_failure(verifier, raw, identity, issuer, needle)


# -- legacy signatures, judged with cryptography -------------------------------------------------


def _verify_set(entry_bundle: dict[str, Any], rekor_pem: bytes) -> None:
    key = serialization.load_pem_public_key(rekor_pem)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    signed = rfc8785.dumps(entry_bundle["Payload"])
    key.verify(base64.b64decode(entry_bundle["SignedEntryTimestamp"]), signed, ec.ECDSA(hashes.SHA256()))


def test_legacy_keyless_signature_verifies(ps: PrivateSigstore, leaf: Leaf) -> None:
    sig = ps.sign_legacy(DIGEST, REF, leaf)
    assert sig.payload == (
        b'{"critical":{"identity":{"docker-reference":"'
        + REF.encode()
        + b'"},"image":{"docker-manifest-digest":"'
        + DIGEST.encode()
        + b'"},"type":"cosign container image signature"},"optional":null}'
    )
    ann = sig.annotations
    assert set(ann) == {ANN_SIGNATURE, ANN_CERTIFICATE, ANN_CHAIN, ANN_BUNDLE}
    cert = x509.load_pem_x509_certificate(ann[ANN_CERTIFICATE].encode())
    chain = x509.load_pem_x509_certificates(ann[ANN_CHAIN].encode())
    assert [c.subject for c in chain] == [ps.fulcio.intermediate.subject, ps.fulcio.root.subject]
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(base64.b64decode(ann[ANN_SIGNATURE]), sig.payload, ec.ECDSA(hashes.SHA256()))

    bundle = json.loads(ann[ANN_BUNDLE])
    assert list(bundle["Payload"]) == ["body", "integratedTime", "logIndex", "logID"]
    assert bundle["Payload"]["logID"] == ps.rekor_log_id.hex()
    assert bundle["Payload"]["integratedTime"] == int(ps.now.timestamp())
    _verify_set(bundle, ps.rekor_public_pem)
    body = json.loads(base64.b64decode(bundle["Payload"]["body"]))
    assert body["kind"] == "hashedrekord" and body["apiVersion"] == "0.0.1"
    assert body["spec"]["data"]["hash"] == {
        "algorithm": "sha256",
        "value": hashlib.sha256(sig.payload).hexdigest(),
    }
    assert body["spec"]["signature"]["content"] == ann[ANN_SIGNATURE]
    assert (
        base64.b64decode(body["spec"]["signature"]["publicKey"]["content"]) == ann[ANN_CERTIFICATE].encode()
    )
    integrated = datetime.fromtimestamp(bundle["Payload"]["integratedTime"], UTC)
    assert cert.not_valid_before_utc <= integrated <= cert.not_valid_after_utc
    _verify_sct_by_hand(cert, chain[0], ps.ct_public_pem)


def test_legacy_annotation_shape_matches_real_vector(ps: PrivateSigstore, leaf: Leaf) -> None:
    vec = VECTORS / "A-legacy" / "A2-connaisseur-keyless"
    real_layer = json.loads(next(vec.glob("*.sig.manifest.json")).read_bytes())["layers"][0]
    ours = ps.sign_legacy(DIGEST, REF, leaf).annotations
    assert set(ours) == set(real_layer["annotations"])
    real_bundle = json.loads(real_layer["annotations"][ANN_BUNDLE])
    assert list(json.loads(ours[ANN_BUNDLE])["Payload"]) == list(real_bundle["Payload"])
    # The real SET verifies with the same procedure as ours (so the procedure is the real one).
    _verify_set(real_bundle, (VECTORS / "trust" / "rekor-public-good.pub").read_bytes())


def test_legacy_negative_variants(ps: PrivateSigstore, leaf: Leaf) -> None:
    rogue = ps.sign_legacy(DIGEST, REF, leaf, set_key=ps.rogue_key())
    with pytest.raises(InvalidSignature):
        _verify_set(json.loads(rogue.annotations[ANN_BUNDLE]), ps.rekor_public_pem)
    late = ps.sign_legacy(DIGEST, REF, leaf, integrated_time=ps.now + timedelta(hours=2))
    _verify_set(json.loads(late.annotations[ANN_BUNDLE]), ps.rekor_public_pem)  # the SET itself is fine
    assert late.tlog_entry is not None
    assert datetime.fromtimestamp(late.tlog_entry.integrated_time, UTC) > leaf.certificate.not_valid_after_utc
    untlogged = ps.sign_legacy(DIGEST, REF, leaf, tlog=False)
    assert ANN_BUNDLE not in untlogged.annotations and untlogged.tlog_entry is None


# -- static keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_static_key_signatures_verify(ps: PrivateSigstore, kind: str) -> None:
    key = ps.static_key() if kind == "ecdsa" else StaticKey.rsa()
    pub = serialization.load_pem_public_key(key.public_pem)

    def check(signature: bytes, data: bytes) -> None:
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            assert isinstance(pub, ec.EllipticCurvePublicKey)
            pub.verify(signature, data, ec.ECDSA(hashes.SHA256()))

    legacy = ps.sign_legacy(DIGEST, REF, key, tlog=False)
    assert set(legacy.annotations) == {ANN_SIGNATURE}
    check(base64.b64decode(legacy.annotations[ANN_SIGNATURE]), legacy.payload)

    logged = ps.sign_legacy(DIGEST, REF, key)
    _verify_set(json.loads(logged.annotations[ANN_BUNDLE]), ps.rekor_public_pem)
    body = json.loads(base64.b64decode(json.loads(logged.annotations[ANN_BUNDLE])["Payload"]["body"]))
    assert base64.b64decode(body["spec"]["signature"]["publicKey"]["content"]) == key.public_pem

    bundle = ps.sign_bundle(DIGEST, key, tlog=False)
    material = bundle.bundle["verificationMaterial"]
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert material == {
        "publicKey": {"hint": base64.b64encode(hashlib.sha256(spki).digest()).decode()},
        "tlogEntries": [],
    }
    env = bundle.bundle["dsseEnvelope"]
    payload = base64.b64decode(env["payload"])
    check(base64.b64decode(env["signatures"][0]["sig"]), pae(env["payloadType"], payload))
    expected_pae = b"DSSEv1 28 application/vnd.in-toto+json %d " % len(payload) + payload
    assert pae(env["payloadType"], payload) == expected_pae
    with pytest.raises(InvalidSignature):
        check(base64.b64decode(env["signatures"][0]["sig"]), payload)  # not over the bare payload


def test_static_key_bundle_with_tlog_has_valid_set(ps: PrivateSigstore) -> None:
    sig = ps.sign_bundle(DIGEST, ps.static_key())
    entry = sig.bundle["verificationMaterial"]["tlogEntries"][0]
    payload = {
        "body": entry["canonicalizedBody"],
        "integratedTime": int(entry["integratedTime"]),
        "logID": base64.b64decode(entry["logId"]["keyId"]).hex(),
        "logIndex": int(entry["logIndex"]),
    }
    _verify_set(
        {"Payload": payload, "SignedEntryTimestamp": entry["inclusionPromise"]["signedEntryTimestamp"]},
        ps.rekor_public_pem,
    )


# -- registry layouts ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


def _json_keys(value: Any) -> Any:
    """The key skeleton of a JSON document (values dropped), to compare layouts with real vectors."""
    if isinstance(value, dict):
        return {k: _json_keys(v) for k, v in value.items() if k != "annotations"}
    if isinstance(value, list):
        return [_json_keys(v) for v in value[:1]]
    return None


def test_push_legacy_signature_tag(registry: Registry, ps: PrivateSigstore, leaf: Leaf) -> None:
    push = OciPusher(registry)
    image = push.push_minimal_image("sig/legacy", "v1", label="legacy")
    assert push.descriptor("sig/legacy", "v1") == image
    sigs = [
        ps.sign_legacy(image.digest, f"{registry.host}/sig/legacy", leaf),
        ps.sign_legacy(image.digest, f"{registry.host}/sig/legacy", ps.static_key()),
    ]
    pushed = push.push_legacy_signatures("sig/legacy", image.digest, sigs)
    got = push.get_manifest("sig/legacy", legacy_signature_tag(image.digest))
    assert got is not None and got.digest == pushed.digest and got.data is not None
    manifest = json.loads(got.data)
    assert [layer["annotations"] for layer in manifest["layers"]] == [s.annotations for s in sigs]
    real = json.loads(
        next(
            (VECTORS / "C-static-key" / "C5-inspektor-gadget-legacy-and-oci11" / "legacy").glob(
                "sig-manifest.*"
            )
        ).read_bytes()
    )
    assert _json_keys(manifest) == _json_keys(real)
    # The registry serves the payload blob byte for byte.
    blob = push.get_blob("sig/legacy", manifest["layers"][0]["digest"])
    assert blob == sigs[0].payload
    assert json.loads(blob)["critical"]["image"]["docker-manifest-digest"] == image.digest


def test_push_bundle_referrer_and_tag_index(
    registry: Registry, ps: PrivateSigstore, leaf: Leaf, verifier: Verifier
) -> None:
    push = OciPusher(registry)
    image = push.push_minimal_image("sig/bundle", "v1", label="bundle")
    other = push.push_minimal_image("sig/bundle", "other", label="other")
    good = ps.sign_bundle(image.digest, leaf)
    first = push.push_bundle_referrer("sig/bundle", image, good)
    # Negative: a referrer about `other`, planted in `image`'s referrers tag index.
    planted = push.push_bundle_referrer(
        "sig/bundle", other, ps.sign_bundle(other.digest, leaf), index_for=image.digest
    )

    index = push.get_manifest("sig/bundle", referrers_tag(image.digest))
    assert index is not None and index.data is not None and index.media_type == OCI_INDEX
    entries = json.loads(index.data)["manifests"]
    assert [e["digest"] for e in entries] == [first.digest, planted.digest]
    assert all(e["artifactType"] == OCI_EMPTY for e in entries)
    real_index = json.loads(
        next(
            (VECTORS / "B-bundle" / "B2-docker-actions-toolkit-ghcr").glob("referrers-tag-index.*")
        ).read_bytes()
    )
    assert _json_keys(json.loads(index.data)) == _json_keys(real_index)
    assert push.get_manifest("sig/bundle", referrers_tag(other.digest)) is None

    subjects = {}
    for entry in entries:
        ref = push.get_manifest("sig/bundle", entry["digest"])
        assert ref is not None and ref.data is not None
        manifest = json.loads(ref.data)
        assert manifest["artifactType"] == BUNDLE_MEDIA_TYPE
        assert manifest["config"]["digest"] == OCI_EMPTY_DIGEST
        subjects[entry["digest"]] = manifest["subject"]["digest"]
        blob = push.get_blob("sig/bundle", manifest["layers"][0]["digest"])
        sigstore_verify(verifier, blob, EMAIL, ISSUER)
    assert subjects == {first.digest: image.digest, planted.digest: other.digest}
    real_ref = json.loads(
        next(
            (VECTORS / "B-bundle" / "B1-docker-actions-toolkit-ecr").glob("referrer-manifest.*")
        ).read_bytes()
    )
    assert _json_keys(json.loads(first.data or b"")) == _json_keys(real_ref)
    assert json.loads(first.data or b"")["subject"] == {
        "mediaType": image.media_type,
        "size": image.size,
        "digest": image.digest,
    }


def test_legacy_signature_object_is_self_consistent(ps: PrivateSigstore, leaf: Leaf) -> None:
    sig: LegacySignature = ps.sign_legacy(DIGEST, REF, leaf, optional={"purpose": "test"})
    assert json.loads(sig.payload)["optional"] == {"purpose": "test"}
    assert sig.payload_digest == "sha256:" + hashlib.sha256(sig.payload).hexdigest()
    assert sig.tlog_entry is not None and sig.tlog_entry.kind == "hashedrekord"
