"""Issue 22's policy language end to end: ImageVerifier with the real RegistryClient against a real
docker-registry holding material made by the private Sigstore. Key rotation and thresholds,
Fulcio CI claims, attestations with CEL policies (bundle referrers and legacy `.att`), warn mode."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from imaged.archive.ingest import ArchiveContents, Blob
from imaged.archive.limits import ImportLimits
from imaged.archive.signatures import archive_signatures
from imaged.errors import PermissionDenied
from imaged.registry.client import RegistryClient
from imaged.registry.reference import parse
from imaged.verdicts import WARN_NOTE, warned
from imaged.verify import ImageVerifier, VerificationConfig
from imaged.verify.cel import CelError, CelEvaluator
from imaged.verify.config import config_warnings
from imaged.verify.material import COSIGN_SIG_ARTIFACT_TYPE
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher, PrivateSigstore
from tests.support.sigstore.formats import (
    SLSA_PROVENANCE_V1,
    LegacySignature,
    attestation_statement,
    slsa_provenance,
)
from tests.support.sigstore.formats import BundleSignature as BundleSignatureBlob
from tests.support.sigstore.keys import StaticKey
from tests.support.sigstore.oci import (
    OCI_EMPTY,
    OCI_EMPTY_DIGEST,
    OCI_MANIFEST,
    Descriptor,
    legacy_signature_manifest,
)
from tests.verify.test_e2e_registry import registries_config

EMAIL, ISSUER = "release@example.com", "https://token.actions.githubusercontent.com"
WORKFLOW = "https://github.com/org/shared/.github/workflows/release.yml@refs/heads/main"
REPO_A, REPO_B = "https://github.com/org/app-a", "https://github.com/org/app-b"
BUILDER = "https://github.com/actions/runner/github-hosted"


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def ps() -> PrivateSigstore:
    return PrivateSigstore(seed=b"policy-language")


@pytest.fixture(scope="module")
def trusted_root(ps: PrivateSigstore, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return ps.write_trusted_root(tmp_path_factory.mktemp("trust") / "trusted_root.json")


@pytest.fixture
async def client() -> AsyncIterator[RegistryClient]:
    async with RegistryClient(registries_config()) as c:
        yield c


def verifier(
    registry: Registry, trusted_root: pathlib.Path, client: RegistryClient, rule: dict[str, Any], **extra: Any
) -> ImageVerifier:
    cfg = VerificationConfig.model_validate(
        {"rules": [{"image": f"{registry.host}/*", **rule}], "trustedRoot": str(trusted_root), **extra}
    )
    return ImageVerifier(cfg, client)


def key_rule(*pems: str, threshold: int = 1, names: tuple[str, ...] = ()) -> dict[str, Any]:
    keys = [{"certificate": p, **({"name": names[i]} if names else {})} for i, p in enumerate(pems)]
    return {"publicKey": keys, "threshold": threshold}


def push_signed_by(registry: Registry, ps: PrivateSigstore, repo: str, *labels: str) -> str:
    push = OciPusher(registry)
    image = push.push_minimal_image(repo, "v1", label=repo)
    sigs = [
        ps.sign_legacy(image.digest, f"{registry.host}/{repo}", ps.static_key(k), tlog=False) for k in labels
    ]
    if sigs:
        push.push_legacy_signatures(repo, image.digest, sigs)
    return image.digest


# -- several keys: rotation and thresholds ------------------------------------------------------------


async def test_rotation_accepts_images_signed_by_the_old_or_the_new_key(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    old, new = ps.static_key("old"), ps.static_key("new")
    rule = key_rule(old.public_pem.decode(), new.public_pem.decode(), names=("key-2025", "key-2026"))
    v = verifier(registry, trusted_root, client, rule)
    push_signed_by(registry, ps, "rot/by-old", "old")
    push_signed_by(registry, ps, "rot/by-new", "new")
    push_signed_by(registry, ps, "rot/by-other", "other")
    for repo, name in (("rot/by-old", "key-2025"), ("rot/by-new", "key-2026")):
        verdict = await v.verify(f"{registry.host}/{repo}:v1")
        assert verdict.verified and not verdict.warned
        assert f"1 of 2 authorities verified (threshold 1): {name}" in verdict.message
    with pytest.raises(PermissionDenied) as info:
        await v.verify(f"{registry.host}/rot/by-other:v1")
    msg = info.value.message
    assert "0 of 2 authorities verified (threshold 1); not verified: key-2025, key-2026" in msg
    assert "key-2025: legacy signature" in msg and "does not verify with the rule's ECDSA" in msg


async def test_threshold_two_refuses_one_signature_and_accepts_two(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    alice, bob = ps.static_key("alice"), ps.static_key("bob")
    rule = key_rule(alice.public_pem.decode(), bob.public_pem.decode(), threshold=2, names=("alice", "bob"))
    v = verifier(registry, trusted_root, client, rule)
    push_signed_by(registry, ps, "two/one", "alice")
    push_signed_by(registry, ps, "two/both", "alice", "bob")
    with pytest.raises(PermissionDenied) as info:
        await v.verify(f"{registry.host}/two/one:v1")
    assert "1 of 2 authorities verified (threshold 2): alice; not verified: bob" in info.value.message
    verdict = await v.verify(f"{registry.host}/two/both:v1")
    assert verdict.verified
    assert "2 of 2 authorities verified (threshold 2): alice, bob" in verdict.message
    assert verdict.message.count("verified via legacy signature") == 2


async def test_threshold_counts_distinct_signatures_not_overlapping_identities(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    """Two keyless authorities whose regexes both accept one signer: one signature counts once."""
    push = OciPusher(registry)
    image = push.push_minimal_image("two/overlap", "v1", label="overlap")
    leaf = ps.issue_leaf(EMAIL, ISSUER)
    push.push_bundle_referrer("two/overlap", image, ps.sign_bundle(image.digest, leaf))
    both = [
        {"name": "release", "issuer": ISSUER, "subjectRegex": "^release@example\\.com$"},
        {"name": "anyone", "issuer": ISSUER, "subjectRegex": "^.*@example\\.com$"},
    ]
    v = verifier(registry, trusted_root, client, {"keyless": both, "threshold": 2})
    with pytest.raises(PermissionDenied) as info:
        await v.verify(f"{registry.host}/two/overlap:v1")
    assert "1 of 2 authorities verified (threshold 2)" in info.value.message
    assert "verified no signature of its own" in info.value.message
    # A second signer's signature makes it two (a new verifier: the refusal is cached for 30 s).
    other = ps.issue_leaf("second@example.com", ISSUER)
    push.push_bundle_referrer("two/overlap", image, ps.sign_bundle(image.digest, other))
    v = verifier(registry, trusted_root, client, {"keyless": both, "threshold": 2})
    verdict = await v.verify(f"{registry.host}/two/overlap:v1")
    assert (
        verdict.verified and "2 of 2 authorities verified (threshold 2): release, anyone" in verdict.message
    )


# -- one signature, one signer: counted once -------------------------------------------------------

OVERLAPPING = [
    {"name": "release", "issuer": ISSUER, "subjectRegex": "^release@example\\.com$"},
    {"name": "anyone", "issuer": ISSUER, "subjectRegex": "^.*@example\\.com$"},
]


class Reformatted(BundleSignatureBlob):
    """The same bundle, serialized with another layout (other bytes, the same signature)."""

    @property
    def json_bytes(self) -> bytes:
        return json.dumps(self.bundle, indent=1).encode()


def push_signature_referrer(push: OciPusher, repo: str, image: Descriptor, sig: LegacySignature) -> None:
    """cosign 2's OCI 1.1 form of a legacy signature: a referrer with simple-signing layers."""
    push.push_blob(repo, b"{}", OCI_EMPTY)
    push.push_blob(repo, sig.payload, sig.media_type)
    layer = {"mediaType": sig.media_type, "size": len(sig.payload), "digest": sig.payload_digest}
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": COSIGN_SIG_ARTIFACT_TYPE,
            "config": {"mediaType": OCI_EMPTY, "size": 2, "digest": OCI_EMPTY_DIGEST},
            "layers": [{**layer, "annotations": sig.annotations}],
            "subject": {"mediaType": image.media_type, "size": image.size, "digest": image.digest},
        }
    ).encode()
    referrer = push.put_manifest(repo, "sha256:" + hashlib.sha256(body).hexdigest(), body, OCI_MANIFEST)
    push.add_to_referrers_index(
        repo,
        image.digest,
        Descriptor(OCI_MANIFEST, referrer.digest, referrer.size, artifact_type=COSIGN_SIG_ARTIFACT_TYPE),
    )


async def refused_once(v: ImageVerifier, ref: str) -> str:
    with pytest.raises(PermissionDenied) as info:
        await v.verify(ref)
    msg = info.value.message
    assert "1 of 2 authorities verified (threshold 2)" in msg, msg
    return msg


async def test_one_bundle_in_several_referrers_counts_once(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    """The same bundle in two referrer manifests, and once more serialized otherwise."""
    push = OciPusher(registry)
    image = push.push_minimal_image("dup/bundle", "v1", label="dup-bundle")
    bundle = ps.sign_bundle(image.digest, ps.issue_leaf(EMAIL, ISSUER))
    push.push_bundle_referrer("dup/bundle", image, bundle, created="2025-01-01T00:00:00Z")
    push.push_bundle_referrer("dup/bundle", image, bundle, created="2025-01-01T00:00:01Z")
    again = Reformatted(bundle.bundle, bundle.statement, bundle.signature, bundle.tlog_entry)
    assert again.json_bytes != bundle.json_bytes
    push.push_bundle_referrer("dup/bundle", image, again, created="2025-01-01T00:00:02Z")
    v = verifier(registry, trusted_root, client, {"keyless": OVERLAPPING, "threshold": 2})
    assert "verified no signature of its own" in await refused_once(v, f"{registry.host}/dup/bundle:v1")


async def test_one_legacy_layer_twice_counts_once(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    push = OciPusher(registry)
    image = push.push_minimal_image("dup/legacy", "v1", label="dup-legacy")
    sig = ps.sign_legacy(image.digest, f"{registry.host}/dup/legacy", ps.issue_leaf(EMAIL, ISSUER))
    push.push_legacy_signatures("dup/legacy", image.digest, [sig, sig])
    v = verifier(registry, trusted_root, client, {"keyless": OVERLAPPING, "threshold": 2})
    await refused_once(v, f"{registry.host}/dup/legacy:v1")


async def test_one_signature_as_referrer_and_in_the_sig_tag_counts_once(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    """Found by stage 1 (cosign 2's referrer form) and again by stage 3 (the `.sig` tag)."""
    push = OciPusher(registry)
    image = push.push_minimal_image("dup/stages", "v1", label="dup-stages")
    sig = ps.sign_legacy(image.digest, f"{registry.host}/dup/stages", ps.issue_leaf(EMAIL, ISSUER))
    push_signature_referrer(push, "dup/stages", image, sig)
    push.push_legacy_signatures("dup/stages", image.digest, [sig])
    v = verifier(registry, trusted_root, client, {"keyless": OVERLAPPING, "threshold": 2})
    await refused_once(v, f"{registry.host}/dup/stages:v1")


async def test_one_signer_signing_twice_counts_once(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    """Two signatures by release@ do not make two signers for two identities that both accept it."""
    push = OciPusher(registry)
    image = push.push_minimal_image("dup/signer", "v1", label="dup-signer")
    for _ in range(2):
        bundle = ps.sign_bundle(image.digest, ps.issue_leaf(EMAIL, ISSUER))
        push.push_bundle_referrer("dup/signer", image, bundle)
    v = verifier(registry, trusted_root, client, {"keyless": OVERLAPPING, "threshold": 2})
    msg = await refused_once(v, f"{registry.host}/dup/signer:v1")
    assert "anyone: verified no signature of its own" in msg


async def test_one_signature_manifest_listed_twice_in_an_archive_counts_once(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    """An OCI layout whose index.json lists the `.sig` manifest twice: the import reads its
    signature twice, the threshold counts it once (and the registry, asked next, has none)."""
    push = OciPusher(registry)
    image = push.push_minimal_image("dup/archive", "v1", label="dup-archive")
    sig = ps.sign_legacy(image.digest, f"{registry.host}/dup/archive", ps.issue_leaf(EMAIL, ISSUER))
    manifest, config = legacy_signature_manifest([sig])
    entry = {"mediaType": OCI_MANIFEST, "digest": sha(manifest), "size": len(manifest)}
    contents = ArchiveContents(
        documents={"index.json": json.dumps({"schemaVersion": 2, "manifests": [entry, entry]}).encode()}
    )
    for blob in (sig.payload, config, manifest):
        contents.by_digest[sha(blob)] = Blob("blobs/x", sha(blob), len(blob), "", blob)
    found = await archive_signatures(contents, None, ImportLimits(), {image.digest})  # type: ignore[arg-type]
    v = verifier(registry, trusted_root, client, {"keyless": OVERLAPPING, "threshold": 2})
    ref = parse(f"{registry.host}/dup/archive:v1")
    with pytest.raises(PermissionDenied) as info:
        await v.verify_archive_image(ref, image.digest, [s.signature for s in found])
    msg = info.value.message
    assert "no signature in the archive satisfies" in msg and "verified no signature of its own" in msg, msg


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def certificate_for(key: StaticKey) -> str:
    """A self-signed certificate holding `key` (a publicKey rule takes the key out of it)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    now = datetime.datetime.now(datetime.UTC)
    priv = key.private_key
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(priv.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(priv, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_the_same_key_twice_in_a_rule_is_refused_at_load(ps: PrivateSigstore) -> None:
    alice, bob = ps.static_key("alice"), ps.static_key("bob")
    pems = (alice.public_pem.decode(), bob.public_pem.decode(), alice.public_pem.decode())
    with pytest.raises(ValidationError) as info:
        VerificationConfig.model_validate(
            {"rules": [{"image": "a.io/*", **key_rule(*pems, threshold=2, names=("a", "b", "c"))}]}
        )
    assert "publicKey[2] is the same key as publicKey[0]" in str(info.value)
    # The key inside a certificate is the same key.
    with pytest.raises(ValidationError) as info:
        VerificationConfig.model_validate(
            {"rules": [{"image": "a.io/*", **key_rule(pems[0], certificate_for(alice))}]}
        )
    assert "publicKey[1] is the same key as publicKey[0]" in str(info.value)


def test_overlapping_keyless_identities_under_a_threshold_warn() -> None:
    def warnings(threshold: int, *keyless: dict[str, str]) -> list[str]:
        cfg = VerificationConfig.model_validate(
            {"rules": [{"image": "a.io/*", "keyless": list(keyless), "threshold": threshold}]}
        )
        return [w for w in config_warnings(cfg) if "same signer" in w]

    release = {"issuer": ISSUER, "subject": EMAIL}
    anyone = {"issuer": ISSUER, "subjectRegex": "^.*@example\\.com$"}
    other = {"issuer": ISSUER, "subject": "other@example.com"}
    elsewhere = {"issuer": "https://accounts.example.org", "subjectRegex": "^.*@example\\.com$"}
    [w] = warnings(2, release, anyone)
    assert w.startswith("rules[0] ('a.io/*'): keyless[0] and keyless[1] may accept the same signer")
    assert "counts for one of them only" in w
    assert warnings(2, release, other) == []
    assert warnings(2, release, elsewhere) == []
    assert warnings(1, release, anyone) == []  # any one of them: overlap is harmless
    # Regexes on both sides may overlap: warned; an exact value is tried against the other's regex.
    assert len(warnings(2, anyone, {"issuerRegex": "^https://", "subjectRegex": "^other@"}, other)) == 3


def test_single_key_form_still_works_and_threshold_is_checked_at_load() -> None:
    pem = PrivateSigstore(seed=b"form").static_key().public_pem.decode()
    cfg = VerificationConfig.model_validate(
        {"rules": [{"image": "a.io/*", "publicKey": {"certificate": pem}}]}
    )
    assert len(cfg.rules[0].key_authorities()) == 1
    with pytest.raises(ValidationError) as info:
        VerificationConfig.model_validate(
            {"rules": [{"image": "a.io/*", "publicKey": [{"certificate": pem}], "threshold": 2}]}
        )
    assert "threshold 2 is more than the rule's 1 authority" in str(info.value)


# -- CI claims ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["bundle", "legacy"])
async def test_source_repository_claim(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient, form: str
) -> None:
    """A reusable workflow's certificate: same SAN for every caller; only the claim tells them apart."""
    repo = f"claims/{form}"
    push = OciPusher(registry)
    image = push.push_minimal_image(repo, "v1", label=repo)
    leaf = ps.issue_leaf(
        WORKFLOW,
        ISSUER,
        claims={
            "sourceRepositoryURI": REPO_A,
            "sourceRepositoryRef": "refs/tags/v1.2.3",
            "buildTrigger": "push",
        },
    )
    if form == "bundle":
        push.push_bundle_referrer(repo, image, ps.sign_bundle(image.digest, leaf))
    else:
        push.push_legacy_signatures(repo, image.digest, [ps.sign_legacy(image.digest, repo, leaf)])

    def rule(**claims: str) -> dict[str, Any]:
        return {"keyless": {"issuer": ISSUER, "subject": WORKFLOW, "claims": claims}}

    ok = verifier(
        registry,
        trusted_root,
        client,
        rule(sourceRepositoryURI=REPO_A, sourceRepositoryRefRegex="^refs/tags/v", buildTrigger="push"),
    )
    assert (await ok.verify(f"{registry.host}/{repo}:v1")).verified
    bad = verifier(registry, trusted_root, client, rule(sourceRepositoryURI=REPO_B))
    with pytest.raises(PermissionDenied) as info:
        await bad.verify(f"{registry.host}/{repo}:v1")
    assert (
        f"certificate claim sourceRepositoryURI (1.3.6.1.4.1.57264.1.12) mismatch: expected {REPO_B!r}, "
        f"found {REPO_A!r}"
    ) in info.value.message
    missing = verifier(registry, trusted_root, client, rule(runnerEnvironment="github-hosted"))
    with pytest.raises(PermissionDenied) as info:
        await missing.verify(f"{registry.host}/{repo}:v1")
    assert "claim runnerEnvironment (1.3.6.1.4.1.57264.1.11) mismatch: the certificate has no such claim" in (
        info.value.message
    )


def test_claims_are_validated_at_load() -> None:
    with pytest.raises(ValidationError) as info:
        VerificationConfig.model_validate(
            {
                "rules": [
                    {
                        "image": "a.io/*",
                        "keyless": {
                            "issuer": "i",
                            "subject": "s",
                            "claims": {"sourceRepo": "x", "buildTriggerRegex": "("},
                        },
                    }
                ]
            }
        )
    msg = str(info.value)
    assert "keyless.claims.sourceRepo is not a Fulcio claim" in msg
    assert "keyless.claims.buildTriggerRegex '(' is not a valid regular expression" in msg


# -- attestations ---------------------------------------------------------------------------------------

PROVENANCE_RULE = {
    "predicateType": SLSA_PROVENANCE_V1,
    "policy": f'predicate.runDetails.builder.id == "{BUILDER}"',
}


def keyless_with(*attestations: dict[str, str]) -> dict[str, Any]:
    return {"keyless": {"issuer": ISSUER, "subject": EMAIL}, "attestations": list(attestations)}


def attest(
    registry: Registry,
    ps: PrivateSigstore,
    repo: str,
    *,
    builder: str = BUILDER,
    subject: str | None = None,
    alter: bool = False,
) -> str:
    """A signed image with a SLSA provenance attestation bundle referrer (cosign 3's layout)."""
    push = OciPusher(registry)
    image = push.push_minimal_image(repo, "v1", label=repo)
    leaf = ps.issue_leaf(EMAIL, ISSUER)
    push.push_bundle_referrer(repo, image, ps.sign_bundle(image.digest, leaf))
    statement = attestation_statement(subject or image.digest, SLSA_PROVENANCE_V1, slsa_provenance(builder))
    bundle = ps.sign_bundle(image.digest, leaf, statement=statement)
    if alter:  # the envelope's payload changed after signing: the builder id claimed is another
        forged = statement.replace(builder.encode(), b"https://evil.example/builder")
        bundle.bundle["dsseEnvelope"]["payload"] = base64.b64encode(forged).decode()
    push.push_bundle_referrer(repo, image, bundle, predicate_type=SLSA_PROVENANCE_V1)
    return image.digest


async def test_slsa_provenance_attestation_passes_and_fails(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    attest(registry, ps, "att/good")
    attest(registry, ps, "att/other-builder", builder="https://ci.example/self-hosted")
    attest(registry, ps, "att/other-subject", subject="sha256:" + "ab" * 32)
    attest(registry, ps, "att/altered", alter=True)
    v = verifier(registry, trusted_root, client, keyless_with(PROVENANCE_RULE))
    verdict = await v.verify(f"{registry.host}/att/good:v1")
    assert verdict.verified
    assert f"attestation {SLSA_PROVENANCE_V1} by {EMAIL}" in verdict.message

    async def refused(repo: str) -> str:
        with pytest.raises(PermissionDenied) as info:
            await v.verify(f"{registry.host}/{repo}:v1")
        msg = info.value.message
        assert "1 attestations rule 0" in msg.replace("the 1 attestations", "1 attestations"), msg
        return msg

    msg = await refused("att/other-builder")
    assert "predicate does not satisfy the policy" in msg and "runDetails.builder.id" in msg
    msg = await refused("att/other-subject")
    assert "do not include the image digest" in msg
    msg = await refused("att/altered")
    assert "DSSE: invalid signature" in msg or "signature" in msg.lower()
    assert "evil.example" not in msg.split("not satisfied:")[0]
    # A rule asking for another predicate type: none found.
    sbom = verifier(
        registry,
        trusted_root,
        client,
        keyless_with({"predicateType": "https://spdx.dev/Document", "policy": "true"}),
    )
    with pytest.raises(PermissionDenied) as info:
        await sbom.verify(f"{registry.host}/att/good:v1")
    assert "no attestation of type https://spdx.dev/Document found" in info.value.message


async def test_attestation_signed_by_someone_else_does_not_count(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    push = OciPusher(registry)
    image = push.push_minimal_image("att/mallory", "v1", label="mallory")
    push.push_bundle_referrer(
        "att/mallory", image, ps.sign_bundle(image.digest, ps.issue_leaf(EMAIL, ISSUER))
    )
    statement = attestation_statement(image.digest, SLSA_PROVENANCE_V1, slsa_provenance(BUILDER))
    mallory = ps.issue_leaf("mallory@example.com", ISSUER)
    bundle = ps.sign_bundle(image.digest, mallory, statement=statement)
    push.push_bundle_referrer("att/mallory", image, bundle, predicate_type=SLSA_PROVENANCE_V1)
    v = verifier(registry, trusted_root, client, keyless_with(PROVENANCE_RULE))
    with pytest.raises(PermissionDenied) as info:
        await v.verify(f"{registry.host}/att/mallory:v1")
    assert "certificate subject mismatch" in info.value.message


async def test_legacy_att_tag_with_a_key(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    """cosign attest --key without bundles: DSSE envelope layers under `sha256-<hex>.att`."""
    key = ps.static_key("attester")
    digest = push_signed_by(registry, ps, "att/legacy", "attester")
    statement = attestation_statement(digest, SLSA_PROVENANCE_V1, slsa_provenance(BUILDER))
    envelope = ps.legacy_envelope(statement, key)
    OciPusher(registry).push_legacy_attestations(
        "att/legacy", digest, [(envelope, {"predicateType": SLSA_PROVENANCE_V1})]
    )
    rule = {"publicKey": {"certificate": key.public_pem.decode()}, "attestations": [PROVENANCE_RULE]}
    verdict = await verifier(registry, trusted_root, client, rule).verify(f"{registry.host}/att/legacy:v1")
    assert verdict.verified and f"legacy attestation sha256-{digest[7:]}.att layer 0" in verdict.message
    # The same envelope with its payload swapped: its signature no longer holds.
    doc = json.loads(envelope)
    doc["payload"] = base64.b64encode(statement.replace(b"github-hosted", b"self-hosted")).decode()
    OciPusher(registry).push_legacy_attestations(
        "att/legacy", digest, [(json.dumps(doc).encode(), {"predicateType": SLSA_PROVENANCE_V1})]
    )
    with pytest.raises(PermissionDenied) as info:
        await verifier(registry, trusted_root, client, rule).verify(f"{registry.host}/att/legacy:v1")
    assert "DSSE signature does not verify with the rule's ECDSA" in info.value.message


async def test_an_attestation_may_be_reserved_to_named_authorities(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    """Two parties sign (threshold 2), and the provenance must come from the builder, not from the
    release identity that can sign everything else."""
    builder = ps.static_key("builder")
    push = OciPusher(registry)
    image = push.push_minimal_image("att/who", "v1", label="att-who")
    leaf = ps.issue_leaf(EMAIL, ISSUER)
    push.push_bundle_referrer("att/who", image, ps.sign_bundle(image.digest, leaf))
    push.push_bundle_referrer("att/who", image, ps.sign_bundle(image.digest, builder, tlog=False))
    statement = attestation_statement(image.digest, SLSA_PROVENANCE_V1, slsa_provenance(BUILDER))
    by_release = ps.sign_bundle(image.digest, leaf, statement=statement)
    push.push_bundle_referrer("att/who", image, by_release, predicate_type=SLSA_PROVENANCE_V1)

    def rule(*who: str) -> dict[str, Any]:
        return {
            "keyless": [{"name": "release", "issuer": ISSUER, "subject": EMAIL}],
            "publicKey": [{"name": "builder", "certificate": builder.public_pem.decode()}],
            "threshold": 2,
            "attestations": [{**PROVENANCE_RULE, **({"authorities": list(who)} if who else {})}],
        }

    # Any of the rule's authorities (the default): the release identity's provenance is enough.
    assert (
        await verifier(registry, trusted_root, client, rule()).verify(f"{registry.host}/att/who:v1")
    ).verified
    with pytest.raises(PermissionDenied) as info:
        await verifier(registry, trusted_root, client, rule("builder")).verify(f"{registry.host}/att/who:v1")
    msg = info.value.message
    assert "signed (" in msg and f"1 of the 1 attestations rule 0 ({registry.host}/*) requires" in msg
    assert "DSSE signature does not verify with the rule's ECDSA" in msg
    # The builder's own provenance satisfies it; positional names work too.
    by_builder = ps.sign_bundle(image.digest, builder, statement=statement, tlog=False)
    push.push_bundle_referrer("att/who", image, by_builder, predicate_type=SLSA_PROVENANCE_V1)
    for who in ("builder", "publicKey[0]"):
        verdict = await verifier(registry, trusted_root, client, rule(who)).verify(
            f"{registry.host}/att/who:v1"
        )
        assert verdict.verified and f"attestation {SLSA_PROVENANCE_V1} by ECDSA" in verdict.message


async def test_attestations_stand_for_their_signers_signatures(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    """An image that carries attestations only (GitHub's artifact attestations, `cosign attest`
    alone): in a rule requiring them, a satisfied requirement counts for the authority that signed
    it. Under threshold 2 that is one party; and never under checkDockerReference."""
    builder = ps.static_key("att-only-builder")
    leaf = ps.issue_leaf(EMAIL, ISSUER)
    push = OciPusher(registry)

    def statement_for(digest: str) -> bytes:
        return attestation_statement(digest, SLSA_PROVENANCE_V1, slsa_provenance(BUILDER))

    # Attested by the release identity, nothing else.
    only = push.push_minimal_image("att/only", "v1", label="att-only")
    bundle = ps.sign_bundle(only.digest, leaf, statement=statement_for(only.digest))
    push.push_bundle_referrer("att/only", only, bundle, predicate_type=SLSA_PROVENANCE_V1)
    # Signed by the release identity and attested by the builder: two parties.
    two = push.push_minimal_image("att/two-parties", "v1", label="att-two")
    push.push_bundle_referrer("att/two-parties", two, ps.sign_bundle(two.digest, leaf))
    by_builder = ps.sign_bundle(two.digest, builder, statement=statement_for(two.digest), tlog=False)
    push.push_bundle_referrer("att/two-parties", two, by_builder, predicate_type=SLSA_PROVENANCE_V1)

    verdict = await verifier(registry, trusted_root, client, keyless_with(PROVENANCE_RULE)).verify(
        f"{registry.host}/att/only:v1"
    )
    assert verdict.verified and "attested via bundle referrer" in verdict.message, verdict.message

    def two_party(**extra: Any) -> dict[str, Any]:
        return {
            "keyless": [{"name": "release", "issuer": ISSUER, "subject": EMAIL}],
            "publicKey": [{"name": "builder", "certificate": builder.public_pem.decode()}],
            "threshold": 2,
            "attestations": [PROVENANCE_RULE],
            **extra,
        }

    verdict = await verifier(registry, trusted_root, client, two_party()).verify(
        f"{registry.host}/att/two-parties:v1"
    )
    assert verdict.verified, verdict.message
    assert "2 of 2 authorities verified (threshold 2): release, builder" in verdict.message
    # One party's attestation is one party, whatever the threshold.
    with pytest.raises(PermissionDenied) as info:
        await verifier(registry, trusted_root, client, two_party()).verify(f"{registry.host}/att/only:v1")
    assert "1 of 2 authorities verified (threshold 2): release; not verified: builder" in info.value.message
    # checkDockerReference wants the repository named: a statement names none, so no credit.
    rule = {**keyless_with(PROVENANCE_RULE), "checkDockerReference": True}
    with pytest.raises(PermissionDenied) as info:
        await verifier(registry, trusted_root, client, rule).verify(f"{registry.host}/att/only:v1")
    assert "no signatures found" in info.value.message, info.value.message


def test_attestation_authorities_are_checked_at_load() -> None:
    pem = PrivateSigstore(seed=b"att-load").static_key().public_pem.decode()

    def problem(who: list[str]) -> str:
        with pytest.raises(ValidationError) as info:
            VerificationConfig.model_validate(
                {
                    "rules": [
                        {
                            "image": "a.io/*",
                            "keyless": {"name": "release", "issuer": ISSUER, "subject": EMAIL},
                            "publicKey": [{"certificate": pem}],
                            "attestations": [{**PROVENANCE_RULE, "authorities": who}],
                        }
                    ]
                }
            )
        return str(info.value)

    assert "attestations[0].authorities: no authority 'carol' in the rule" in problem(["carol"])
    assert "known: release (keyless), publicKey[0]" in problem(["carol"])
    assert "attestations[0].authorities is empty" in problem([])


def test_cel_policies_are_compiled_at_load() -> None:
    def problem(policy: str) -> str:
        with pytest.raises(ValidationError) as info:
            VerificationConfig.model_validate(
                {
                    "rules": [
                        {
                            "image": "a.io/*",
                            "keyless": {"issuer": "i", "subject": "s"},
                            "attestations": [{"predicateType": SLSA_PROVENANCE_V1, "policy": policy}],
                        }
                    ]
                }
            )
        return str(info.value)

    assert "undeclared reference to 'builder.id'" in problem('builder.id == "x"')
    assert "not a valid CEL expression" in problem("predicate.runDetails.")
    assert "gives int, not bool" in problem("1 + 2")
    assert "over the 4096 limit" in problem("true && " * 600 + "true")


def test_a_missing_cel_library_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not an ImportError escaping the loader (INTERNAL for PolicyService.Test, an uncaught
    exception in the SIGHUP handler)."""
    import sys

    from imaged.config import ConfigError, load_text
    from imaged.verify import cel

    monkeypatch.setitem(sys.modules, "cel_expr_python", None)  # `import` raises ImportError
    monkeypatch.setattr(cel, "_ENV", None)
    text = (
        "verification:\n  rules:\n    - image: a.io/*\n"
        f"      keyless: {{issuer: {ISSUER}, subject: {EMAIL}}}\n"
        "      attestations: [{predicateType: t, policy: 'true'}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_text(text)
    assert "attestations[0].policy: the CEL library (cel-expr-python) cannot be loaded" in str(info.value)


def test_cel_time_budget_kills_a_runaway_evaluation() -> None:
    cel = CelEvaluator(time_budget=0.1)
    try:
        variables = {"predicate": {"l": list(range(99)), "s": "a" * 4_000_000}, "predicateType": "t"}
        variables.update(statement={}, image={})
        assert cel.evaluate("predicate.l.size() == 99", variables)
        slow = 'predicate.l.all(x, predicate.l.all(y, !predicate.s.contains(string(x) + "zz")))'
        with pytest.raises(CelError, match=r"exceeded its time budget of 0\.1s"):
            cel.evaluate(slow, variables)
        # The helper is replaced: the next evaluation works.
        assert cel.evaluate("predicate.l.size() == 99", variables)
        with pytest.raises(CelError, match="Key not found"):
            cel.evaluate("predicate.missing == 1", variables)
    finally:
        cel.close()


# -- warn mode ------------------------------------------------------------------------------------------


async def test_warn_mode_allows_what_enforce_refuses(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    digest = push_signed_by(registry, ps, "warn/unsigned")
    rule = {"keyless": {"issuer": ISSUER, "subject": EMAIL}}
    with pytest.raises(PermissionDenied) as info:
        await verifier(registry, trusted_root, client, rule).verify(f"{registry.host}/warn/unsigned:v1")
    failure = info.value.message
    for v in (
        verifier(registry, trusted_root, client, {**rule, "mode": "warn"}),
        verifier(registry, trusted_root, client, rule, mode="warn"),
    ):
        verdict = await v.verify(f"{registry.host}/warn/unsigned:v1")
        assert verdict.verified and verdict.warned
        assert verdict.message.startswith(failure)
        assert verdict.message.endswith(f"; {WARN_NOTE} (rule 0 ({registry.host}/*))")
        assert warned(verdict.message)  # as the shim and imagectl recognise it
        assert (
            verdict.digested_ref == f"{registry.host}/warn/unsigned@{digest}"
        )  # pinned to what was evaluated
    # A rule in enforce under a global warn stays enforcing.
    with pytest.raises(PermissionDenied):
        await verifier(registry, trusted_root, client, {**rule, "mode": "enforce"}, mode="warn").verify(
            f"{registry.host}/warn/unsigned:v1"
        )


async def test_warn_mode_deny_and_no_match(client: RegistryClient) -> None:
    deny = ImageVerifier(
        VerificationConfig.model_validate({"rules": [{"image": "a.io/*", "deny": True, "mode": "warn"}]}),
        client,
    )
    verdict = await deny.verify("a.io/app:v1")
    assert verdict.verified and verdict.warned and verdict.digested_ref == ""
    assert verdict.message.startswith("verification denied by matched rule 0 (a.io/*) for a.io/app")
    closed = VerificationConfig.model_validate({"noMatch": "deny", "mode": "warn"})
    verdict = await ImageVerifier(closed, client).verify(f"b.io/app@sha256:{'1' * 64}")
    assert verdict.warned and verdict.message.startswith(
        "no verification rule matches b.io/app, and noMatch is deny"
    )
    assert verdict.digested_ref == f"b.io/app@sha256:{'1' * 64}"


async def test_legacy_att_tag_keyless(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    """cosign attest (keyless, legacy layout): certificate, chain and SET annotations on the layer."""
    push = OciPusher(registry)
    image = push.push_minimal_image("att/legacy-keyless", "v1", label="legacy-keyless")
    leaf = ps.issue_leaf(EMAIL, ISSUER)
    push.push_bundle_referrer("att/legacy-keyless", image, ps.sign_bundle(image.digest, leaf))
    statement = attestation_statement(image.digest, SLSA_PROVENANCE_V1, slsa_provenance(BUILDER))
    layer = ps.legacy_keyless_envelope(statement, leaf)
    push.push_legacy_attestations("att/legacy-keyless", image.digest, [layer])
    v = verifier(registry, trusted_root, client, keyless_with(PROVENANCE_RULE))
    verdict = await v.verify(f"{registry.host}/att/legacy-keyless:v1")
    assert (
        verdict.verified
        and f"attestation {SLSA_PROVENANCE_V1} by {EMAIL} (issuer {ISSUER}), Rekor" in verdict.message
    )
    # Another signer's certificate in the annotation: the log entry and signature no longer match it.
    mallory = ps.issue_leaf("mallory@example.com", ISSUER)
    envelope, annotations = layer
    push.push_legacy_attestations(
        "att/legacy-keyless",
        image.digest,
        [(envelope, {**annotations, "dev.sigstore.cosign/certificate": mallory.pem.decode()})],
    )
    v = verifier(registry, trusted_root, client, keyless_with(PROVENANCE_RULE))
    with pytest.raises(PermissionDenied) as info:
        await v.verify(f"{registry.host}/att/legacy-keyless:v1")
    assert "Rekor entry does not record the attestation's signing certificate" in info.value.message


def test_the_shim_and_imagectl_recognise_a_warned_verdict_without_importing_the_engine() -> None:
    """They share imaged.verdicts with the engine; importing the engine would cost their start-up."""
    probe = (
        "import sys, imaged.shim.image_verifier, imaged.cli.cmd_verify, imaged.cli.cmd_policy; "
        "print(sorted(m for m in sys.modules if m.startswith(('imaged.verify', 'sigstore', 'pydantic'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
    assert not warned("image verification failed: x; rule 0 (a.io/*)")
    assert warned(f"image verification failed: x; {WARN_NOTE} (rule 0 (a.io/*))")
