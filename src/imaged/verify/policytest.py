"""Trying a policy on images: one verdict per image, the same whether the daemon evaluates a
candidate (`imaged.v1.PolicyService/Test`) or `imagectl policy test --offline` does it against OCI
layouts on disk (`layout.py`). Both build an `ImageVerifier` without a verdict cache and call
`evaluate`, so that the two modes cannot disagree on what a verdict is."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

from imaged import errors
from imaged.verify.config import CacheConfig, VerificationConfig
from imaged.verify.layout import LayoutRegistry, layout_path
from imaged.verify.service import ImageVerifier
from imaged.verify.trust import TrustRootError
from imaged.verify.trustroots import TrustRoots


@dataclass(frozen=True, slots=True)
class ImageVerdict:
    """What a policy says of one image: `verdict` is one of VERDICTS."""

    image_ref: str
    verdict: str
    message: str
    digested_ref: str = ""
    rule: str = ""  # `rule N (<pattern>)` that decided, "" when none matched
    error_code: str = ""  # the gRPC status code name of an error verdict


def uncached(config: VerificationConfig) -> VerificationConfig:
    """`config` without a verdict cache: each test evaluates."""
    return config.model_copy(update={"cache": CacheConfig(maxEntries=0)})


async def evaluate(verifier: ImageVerifier, ref: str) -> ImageVerdict:
    """The verdict of `verifier`'s policy on `ref`: a refusal is `denied`, any other error (the
    registry or layout cannot answer, a bad reference) `error` with its code, never a verdict."""
    rule = ""
    try:
        matched = verifier.match(ref)
        rule = matched.describe() if matched is not None else ""
        v = await verifier.verify(ref)
    except errors.PermissionDenied as e:
        return ImageVerdict(ref, "denied", e.message, rule=rule)
    except errors.ImagedError as e:
        return ImageVerdict(ref, "error", e.message, rule=rule, error_code=e.code.name)
    verdict = "warned" if v.warned else "verified" if v.verified else "unverified"
    return ImageVerdict(ref, verdict, v.message, v.digested_ref, rule)


async def evaluate_offline(
    config: VerificationConfig, root: pathlib.Path, images: Sequence[str]
) -> list[ImageVerdict]:
    """`images` under `config`, each against its OCI layout under `root` (see `layout_path`), with
    no daemon and no network: keyless rules use `trustedRoot`, else the embedded public-good root,
    never refreshed."""
    config = uncached(config)
    try:
        trust = TrustRoots.offline(config)
    except TrustRootError as e:
        raise errors.FailedPrecondition(f"verification trusted root unusable: {e}") from None
    out: list[ImageVerdict] = []
    for image in images:
        try:
            path = layout_path(root, image, single=len(images) == 1)
        except errors.InvalidArgument as e:
            out.append(ImageVerdict(image, "error", e.message, error_code=e.code.name))
            continue
        verifier = ImageVerifier(config, LayoutRegistry(path, image), quiet=True, trust=trust)
        out.append(await evaluate(verifier, image))
    return out
