"""PrivateSigstore: Fulcio CA + CT log + Rekor log + trusted_root.json, all in memory."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from .certs import CTLog, FulcioCA, Leaf, der, pem
from .formats import (
    ANN_BUNDLE,
    ANN_CERTIFICATE,
    ANN_CHAIN,
    ANN_SIGNATURE,
    BUNDLE_MEDIA_TYPE,
    INTOTO_PAYLOAD_TYPE,
    BundleSignature,
    LegacySignature,
    intoto_statement,
    pae,
    simple_signing_payload,
)
from .keys import StaticKey, derive_ec_key, public_pem, spki_der
from .rekor import RekorLog, TlogEntry, b64, dsse_body, hashedrekord_body

TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
Signer = Leaf | StaticKey


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _verifier_pem(signer: Signer) -> bytes:
    return signer.pem if isinstance(signer, Leaf) else signer.public_pem


class PrivateSigstore:
    """One private Sigstore instance per test session.

    Keys derive from `seed` and all times from `now`, so two instances with the same arguments
    produce the same trust root and certificates. A second instance with another seed is a
    convenient "foreign" Sigstore for negative tests.
    """

    def __init__(self, *, seed: bytes = b"imaged-tests", now: datetime | None = None) -> None:
        self.seed = seed
        self.now = (now or datetime.now(UTC)).replace(microsecond=0)
        self.ct_log = CTLog(derive_ec_key(seed, "ct-log"))
        self.fulcio = FulcioCA(seed, self.now, self.ct_log)
        self.rekor = RekorLog(derive_ec_key(seed, "rekor"))
        self._rogue_counter = 0

    # -- trust material -----------------------------------------------------------------------

    @property
    def rekor_key(self) -> ec.EllipticCurvePrivateKey:
        return self.rekor.key

    @property
    def rekor_log_id(self) -> bytes:
        """sha256(DER SPKI) of the Rekor key; `.hex()` is cosign's `logID`."""
        return self.rekor.log_id

    @property
    def rekor_public_pem(self) -> bytes:
        return public_pem(self.rekor.key.public_key())

    @property
    def ct_public_pem(self) -> bytes:
        return public_pem(self.ct_log.key.public_key())

    @property
    def fulcio_chain_pem(self) -> bytes:
        """Intermediate then root (PEM)."""
        return b"".join(pem(c) for c in self.fulcio.chain)

    def rogue_key(self) -> ec.EllipticCurvePrivateKey:
        """A fresh P-256 key the trust root does not know (forged SETs, checkpoints, SCTs)."""
        self._rogue_counter += 1
        return derive_ec_key(self.seed, f"rogue-{self._rogue_counter}")

    def trusted_root(self) -> dict[str, Any]:
        """Sigstore TrustedRoot v0.1 (protobuf JSON), listing this instance's CA, CT log and Rekor."""
        start = _rfc3339(self.fulcio.not_before)
        rekor_pub = self.rekor.key.public_key()
        ct_pub = self.ct_log.key.public_key()
        return {
            "mediaType": TRUSTED_ROOT_MEDIA_TYPE,
            "tlogs": [
                {
                    "baseUrl": f"https://{self.rekor.name}",
                    "hashAlgorithm": "SHA2_256",
                    "publicKey": {
                        "rawBytes": b64(spki_der(rekor_pub)),
                        "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                        "validFor": {"start": start},
                    },
                    "logId": {"keyId": b64(self.rekor.log_id)},
                }
            ],
            "certificateAuthorities": [
                {
                    "subject": {"organization": "imaged.test", "commonName": "sigstore"},
                    "uri": "https://fulcio.imaged.test",
                    "certChain": {"certificates": [{"rawBytes": b64(der(c))} for c in self.fulcio.chain]},
                    "validFor": {"start": start},
                }
            ],
            "ctlogs": [
                {
                    "baseUrl": "https://ctfe.imaged.test",
                    "hashAlgorithm": "SHA2_256",
                    "publicKey": {
                        "rawBytes": b64(spki_der(ct_pub)),
                        "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                        "validFor": {"start": start},
                    },
                    "logId": {"keyId": b64(self.ct_log.log_id)},
                }
            ],
            "timestampAuthorities": [],
        }

    def trusted_root_json(self) -> bytes:
        return json.dumps(self.trusted_root(), indent=2).encode()

    def write_trusted_root(self, path: Path) -> Path:
        path.write_bytes(self.trusted_root_json())
        return path

    # -- identities ---------------------------------------------------------------------------

    def issue_leaf(
        self,
        identity: str = "signer@imaged.test",
        issuer: str | None = "https://issuer.imaged.test",
        **options: Any,
    ) -> Leaf:
        """Fulcio-style leaf; see `FulcioCA.issue` for `options` (not_before, validity, san_kind...)."""
        return self.fulcio.issue(identity, issuer, **options)

    def issue_leaf_outside_validity(
        self, identity: str = "signer@imaged.test", issuer: str | None = "https://issuer.imaged.test"
    ) -> Leaf:
        """A leaf whose 10 minutes start 1 hour after `now`: signing at `now` is outside validity."""
        return self.fulcio.issue(identity, issuer, not_before=self.now + timedelta(hours=1))

    def static_key(self, label: str = "static-key") -> StaticKey:
        return StaticKey.ecdsa(self.seed, label)

    # -- signing ------------------------------------------------------------------------------

    def _integrate(
        self,
        kind: str,
        body: bytes,
        integrated_time: int | datetime | None,
        set_key: ec.EllipticCurvePrivateKey | None,
        checkpoint_key: ec.EllipticCurvePrivateKey | None,
    ) -> TlogEntry:
        if integrated_time is None:
            t = int(self.now.timestamp())
        elif isinstance(integrated_time, datetime):
            t = int(integrated_time.timestamp())
        else:
            t = integrated_time
        return self.rekor.append(kind, body, t, set_key=set_key, checkpoint_key=checkpoint_key)

    def sign_legacy(
        self,
        image_digest: str,
        reference: str,
        signer: Signer,
        *,
        tlog: bool = True,
        integrated_time: int | datetime | None = None,
        set_key: ec.EllipticCurvePrivateKey | None = None,
        optional: dict[str, Any] | None = None,
        payload: bytes | None = None,
    ) -> LegacySignature:
        """A cosign legacy signature layer for `image_digest` (payload `docker-reference`=`reference`).

        Keyless (`Leaf`) adds certificate + chain annotations; `StaticKey` only the signature.
        `tlog` adds the Rekor bundle annotation (hashedrekord entry + SET). `payload` replaces the
        simple-signing payload with arbitrary bytes (still correctly signed and logged).
        """
        body = payload if payload is not None else simple_signing_payload(image_digest, reference, optional)
        signature = signer.sign(body)
        annotations = {ANN_SIGNATURE: b64(signature)}
        if isinstance(signer, Leaf):
            annotations[ANN_CERTIFICATE] = signer.pem.decode()
            annotations[ANN_CHAIN] = signer.chain_pem.decode()
        entry = None
        if tlog:
            rekord = hashedrekord_body(hashlib.sha256(body).hexdigest(), signature, _verifier_pem(signer))
            entry = self._integrate("hashedrekord", rekord, integrated_time, set_key, None)
            annotations[ANN_BUNDLE] = json.dumps(entry.legacy_bundle(), separators=(",", ":"))
        return LegacySignature(payload=body, signature=signature, annotations=annotations, tlog_entry=entry)

    def sign_bundle(
        self,
        image_digest: str,
        signer: Signer,
        *,
        tlog: bool = True,
        integrated_time: int | datetime | None = None,
        set_key: ec.EllipticCurvePrivateKey | None = None,
        checkpoint_key: ec.EllipticCurvePrivateKey | None = None,
        statement: bytes | None = None,
    ) -> BundleSignature:
        """A cosign 3 bundle v0.3: DSSE in-toto Statement v1 (cosign sign/v1) over `image_digest`.

        Keyless bundles carry the leaf DER and a `dsse` 0.0.1 tlog entry with promise and proof
        (what sigstore-python requires); `StaticKey` bundles carry `publicKey.hint`.
        `statement` replaces the in-toto statement bytes (e.g. another subject).
        """
        stmt = statement if statement is not None else intoto_statement(image_digest)
        signature = signer.sign(pae(INTOTO_PAYLOAD_TYPE, stmt))
        envelope = {
            "payload": b64(stmt),
            "payloadType": INTOTO_PAYLOAD_TYPE,
            "signatures": [{"sig": b64(signature)}],
        }
        material: dict[str, Any]
        if isinstance(signer, Leaf):
            material = {"certificate": {"rawBytes": b64(signer.der)}}
        else:
            material = {"publicKey": {"hint": signer.hint}}
        entry = None
        if tlog:
            body = dsse_body(envelope, stmt, signature, _verifier_pem(signer))
            entry = self._integrate("dsse", body, integrated_time, set_key, checkpoint_key)
        material["tlogEntries"] = [entry.bundle_json()] if entry else []
        bundle = {"mediaType": BUNDLE_MEDIA_TYPE, "verificationMaterial": material, "dsseEnvelope": envelope}
        return BundleSignature(bundle=bundle, statement=stmt, signature=signature, tlog_entry=entry)

    def legacy_envelope(self, statement: bytes, signer: StaticKey) -> bytes:
        """A legacy `.att` layer signed with a key (no tlog, as `cosign attest --key --tlog-upload=false`)."""
        signature = signer.sign(pae(INTOTO_PAYLOAD_TYPE, statement))
        return json.dumps(
            {
                "payloadType": INTOTO_PAYLOAD_TYPE,
                "payload": b64(statement),
                "signatures": [{"keyid": "", "sig": b64(signature)}],
            }
        ).encode()

    def legacy_keyless_envelope(self, statement: bytes, leaf: Leaf) -> tuple[bytes, dict[str, str]]:
        """A legacy keyless `.att` layer: the envelope, and the annotations cosign attest writes
        (certificate, chain, Rekor SET over a `dsse` 0.0.1 entry)."""
        signature = leaf.sign(pae(INTOTO_PAYLOAD_TYPE, statement))
        envelope = {
            "payloadType": INTOTO_PAYLOAD_TYPE,
            "payload": b64(statement),
            "signatures": [{"sig": b64(signature)}],
        }
        entry = self._integrate("dsse", dsse_body(envelope, statement, signature, leaf.pem), None, None, None)
        annotations = {
            ANN_CERTIFICATE: leaf.pem.decode(),
            ANN_CHAIN: leaf.chain_pem.decode(),
            ANN_BUNDLE: json.dumps(entry.legacy_bundle(), separators=(",", ":")),
            "predicateType": json.loads(statement)["predicateType"],
        }
        return json.dumps(envelope).encode(), annotations
