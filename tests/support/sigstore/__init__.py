"""A private Sigstore for tests: Fulcio-like CA, CT log, Rekor log, trusted_root.json, cosign formats.

Typical use::

    ps = PrivateSigstore()                       # one per session (keys derived from a seed)
    ps.write_trusted_root(tmp / "trusted_root.json")
    leaf = ps.issue_leaf("alice@example.com", "https://accounts.example.com")
    legacy = ps.sign_legacy(digest, "127.0.0.1:5000/test/app", leaf)    # LegacySignature
    bundle = ps.sign_bundle(digest, leaf)                                # BundleSignature
    key = ps.static_key()                                                # StaticKey (ECDSA P-256)
    push = OciPusher(registry)
    subject = push.descriptor("test/app", "v1")
    push.push_legacy_signatures("test/app", subject.digest, [legacy])
    push.push_bundle_referrer("test/app", subject, bundle)

Everything is checked independently of imaged in tests/support_tests/test_private_sigstore.py
(sigstore-python verifies the bundles against the trusted root).
"""

from .certs import CTLog, FulcioCA, Leaf
from .formats import (
    ANN_BUNDLE,
    ANN_CERTIFICATE,
    ANN_CHAIN,
    ANN_SIGNATURE,
    BUNDLE_MEDIA_TYPE,
    COSIGN_SIGN_PREDICATE,
    INTOTO_PAYLOAD_TYPE,
    SIMPLESIGNING_MEDIA_TYPE,
    BundleSignature,
    LegacySignature,
    intoto_statement,
    pae,
    simple_signing_payload,
)
from .instance import TRUSTED_ROOT_MEDIA_TYPE, PrivateSigstore, Signer
from .keys import StaticKey
from .oci import (
    OCI_EMPTY,
    OCI_EMPTY_DIGEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    OciPusher,
    RegistryError,
    legacy_signature_tag,
    referrers_tag,
)
from .rekor import RekorLog, TlogEntry, set_signed_data

__all__ = [
    "ANN_BUNDLE",
    "ANN_CERTIFICATE",
    "ANN_CHAIN",
    "ANN_SIGNATURE",
    "BUNDLE_MEDIA_TYPE",
    "COSIGN_SIGN_PREDICATE",
    "INTOTO_PAYLOAD_TYPE",
    "OCI_EMPTY",
    "OCI_EMPTY_DIGEST",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "SIMPLESIGNING_MEDIA_TYPE",
    "TRUSTED_ROOT_MEDIA_TYPE",
    "BundleSignature",
    "CTLog",
    "Descriptor",
    "FulcioCA",
    "Leaf",
    "LegacySignature",
    "OciPusher",
    "PrivateSigstore",
    "RegistryError",
    "RekorLog",
    "Signer",
    "StaticKey",
    "TlogEntry",
    "intoto_statement",
    "legacy_signature_tag",
    "pae",
    "referrers_tag",
    "set_signed_data",
    "simple_signing_payload",
]
