"""Fulcio's CI claims: certificate extensions under OID arc 1.3.6.1.4.1.57264.1 a rule may constrain.

Names are Fulcio's (sigstore/fulcio docs/oid-info.md), as policy-controller and cosign's
`--certificate-github-workflow-*` flags use them. Values of these extensions (.8 onwards) are DER
UTF8Strings. The deprecated raw extensions .2-.6 (GitHub workflow trigger, sha, name, repository,
ref) are not offered: Fulcio writes their successors in every certificate since 2023.

No imports beyond the standard library: the configuration model validates claim names with it.
"""

from __future__ import annotations

FULCIO_ARC = "1.3.6.1.4.1.57264.1"

# name -> OID of the extension holding it
CLAIMS: dict[str, str] = {
    "buildSignerURI": f"{FULCIO_ARC}.9",
    "buildSignerDigest": f"{FULCIO_ARC}.10",
    "runnerEnvironment": f"{FULCIO_ARC}.11",
    "sourceRepositoryURI": f"{FULCIO_ARC}.12",
    "sourceRepositoryDigest": f"{FULCIO_ARC}.13",
    "sourceRepositoryRef": f"{FULCIO_ARC}.14",
    "sourceRepositoryIdentifier": f"{FULCIO_ARC}.15",
    "sourceRepositoryOwnerURI": f"{FULCIO_ARC}.16",
    "sourceRepositoryOwnerIdentifier": f"{FULCIO_ARC}.17",
    "buildConfigURI": f"{FULCIO_ARC}.18",
    "buildConfigDigest": f"{FULCIO_ARC}.19",
    "buildTrigger": f"{FULCIO_ARC}.20",
    "runInvocationURI": f"{FULCIO_ARC}.21",
    "sourceRepositoryVisibilityAtSigning": f"{FULCIO_ARC}.22",
}

REGEX_SUFFIX = "Regex"


def split_claim_key(key: str) -> tuple[str, bool] | None:
    """`sourceRepositoryURI` -> (name, False); `sourceRepositoryURIRegex` -> (name, True); else None."""
    if key in CLAIMS:
        return key, False
    if key.endswith(REGEX_SUFFIX) and key[: -len(REGEX_SUFFIX)] in CLAIMS:
        return key[: -len(REGEX_SUFFIX)], True
    return None
