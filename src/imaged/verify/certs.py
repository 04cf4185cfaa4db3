"""Fulcio certificate checks for the legacy (SET-only) path, at the Rekor integrated time.

Fulcio leaves live ~10 minutes, so validity is judged at the time the transparency log vouches
for (`integratedTime`), never now. The chain is built only from the trusted root's CAs (the
`dev.sigstore.cosign/chain` annotation is attacker-supplied and ignored), with the same X.509
profile sigstore-python applies to bundles.

SCTs: a present SCT is always verified against the trusted root's CT logs. A missing one is
refused for certificates from a CA the trusted root lists as current (no end of validity), and
tolerated for certificates from a retired CA: the 2021 public-good CA predates embedded SCTs.
A trusted root without CT logs (a private Sigstore without CT) cannot check SCTs at all.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.x509 import ExtendedKeyUsage, KeyUsage
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
)
from cryptography.x509.verification import VerificationError as X509VerificationError
from sigstore.errors import VerificationError

from imaged.verify.trust import Authority, TrustRoot


def _has_sct(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_class(x509.PrecertificateSignedCertificateTimestamps)
        return True
    except x509.ExtensionNotFound:
        return False


def _authority_of(anchor: x509.Certificate, trust: TrustRoot) -> Authority:
    for authority in trust.authorities:
        if anchor in authority.certificates:
            return authority
    raise VerificationError("certificate chains to a CA that is not in the trusted root")  # unreachable


def verify_fulcio_certificate(
    cert: x509.Certificate, trust: TrustRoot, when: datetime
) -> list[x509.Certificate]:
    """Check `cert` chains to a Fulcio CA of `trust` valid at `when`, its usage and its SCT.

    Returns the chain above `cert`. Raises VerificationError saying what failed.
    """
    ca_policy = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    certs = trust.fulcio_certificates()
    if not certs:
        raise VerificationError(f"trusted root ({trust.source}) has no certificate authorities")
    verifier = (
        PolicyBuilder()
        .store(Store(certs))
        .time(when)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        chain = verifier.verify(cert, []).chain[1:]
    except (X509VerificationError, x509.UnsupportedGeneralNameType) as e:
        raise VerificationError(
            f"certificate does not chain to a Fulcio CA of the trusted root ({trust.source}) "
            f"at {when.isoformat()}: {e}"
        ) from None
    authority = _authority_of(chain[-1], trust)
    if not authority.validity.contains(when):
        raise VerificationError(
            f"certificate's CA was not valid at {when.isoformat()} (valid {authority.validity})"
        )
    try:
        if not cert.extensions.get_extension_for_class(KeyUsage).value.digital_signature:
            raise VerificationError("certificate key usage lacks digitalSignature")
        if (
            ExtendedKeyUsageOID.CODE_SIGNING
            not in cert.extensions.get_extension_for_class(ExtendedKeyUsage).value
        ):
            raise VerificationError("certificate extended key usage lacks codeSigning")
    except x509.ExtensionNotFound as e:
        raise VerificationError(f"certificate lacks a required extension: {e}") from None
    _check_sct(cert, chain, trust, authority)
    return chain


def _check_sct(
    cert: x509.Certificate, chain: list[x509.Certificate], trust: TrustRoot, authority: Authority
) -> None:
    if not trust.ct_keys:
        return
    if not _has_sct(cert):
        if authority.validity.end is None:
            raise VerificationError("certificate has no embedded SCT (certificate transparency proof)")
        return
    # sigstore-python's SCT check, fed with the same trusted root; it has no public API for it.
    from sigstore._internal.sct import verify_sct
    from sigstore._internal.trust import KeyringPurpose

    try:
        verify_sct(cert, chain, trust.sigstore.ct_keyring(KeyringPurpose.VERIFY))
    except VerificationError as e:
        raise VerificationError(f"certificate's embedded SCT does not verify: {e}") from None
