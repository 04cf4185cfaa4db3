"""Identity regexes behave as Go's MatchString does in cosign, newline included (pure logic on
certificates from the private Sigstore)."""

from __future__ import annotations

import pytest
from sigstore.errors import VerificationError

from imaged.verify.identity import IssuerPolicy, SubjectPolicy
from tests.support.sigstore import PrivateSigstore

ISSUER = "https://issuer.imaged.test"


@pytest.fixture(scope="module")
def ps() -> PrivateSigstore:
    return PrivateSigstore(seed=b"identity-unit")


def test_an_anchored_regex_refuses_a_trailing_newline(ps: PrivateSigstore) -> None:
    # Python's `$` matches before a final newline; Go's (cosign's) does not.
    subject = SubjectPolicy(regex=r"^dev@example\.com$")
    subject.verify(ps.issue_leaf("dev@example.com", ISSUER, san_kind="othername").certificate)
    with pytest.raises(VerificationError, match="subject mismatch"):
        subject.verify(ps.issue_leaf("dev@example.com\n", ISSUER, san_kind="othername").certificate)
    issuer = IssuerPolicy(regex=r"^https://issuer\.imaged\.test$")
    issuer.verify(ps.issue_leaf("dev@example.com", ISSUER).certificate)
    with pytest.raises(VerificationError, match="issuer mismatch"):
        issuer.verify(ps.issue_leaf("dev@example.com", ISSUER + "\n").certificate)
