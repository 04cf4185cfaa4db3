"""Access to the third-party signature vectors in tests/fixtures/vectors (INDEX.md, PROVENANCE.md)."""

from __future__ import annotations

import base64
import json
import pathlib
from functools import cache
from typing import Any

from imaged.verify.material import ANN_BUNDLE, ANN_CERTIFICATE, ANN_CHAIN, ANN_SIGNATURE, SimpleSigning
from tests.conftest import FIXTURES

# Part of the repository: a missing file is a test failure naming its path, never a skip.
VECTORS = FIXTURES / "vectors"
PUBLIC_GOOD_ROOT = VECTORS / "trust" / "sigstore-public-good.trusted_root.json"


@cache
def _all() -> dict[str, dict[str, Any]]:
    doc = json.loads((VECTORS / "vectors.json").read_text())
    return {v["id"]: v for v in doc["vectors"]}


def vector(vid: str) -> dict[str, Any]:
    return _all()[vid]


def vdir(vid: str) -> pathlib.Path:
    return VECTORS / str(vector(vid)["dir"])


def digest_of(vid: str) -> str:
    return str(vector(vid)["image"]["digest"])


def legacy_signature(
    d: pathlib.Path,
    *,
    payload: str = "payload.json",
    signature: str = "signature.b64",
    certificate: str | None = "certificate.pem",
    chain: str | None = "chain.pem",
    rekor: str | None = "rekor-bundle.json",
) -> SimpleSigning:
    """A simple-signing layer built from a vector's decomposed files (exact bytes)."""
    ann = {ANN_SIGNATURE: (d / signature).read_text().strip()}
    for name, key in ((certificate, ANN_CERTIFICATE), (chain, ANN_CHAIN), (rekor, ANN_BUNDLE)):
        if name and (d / name).exists():
            text = (d / name).read_text()
            ann[key] = text.strip() if key == ANN_BUNDLE else text
    return SimpleSigning((d / payload).read_bytes(), ann, where=f"vector {d.name}")


def flip(data: bytes, pos: int | None = None) -> bytes:
    """`data` with one byte changed (the middle one by default)."""
    i = len(data) // 2 if pos is None else pos
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def flip_b64(value: str, pos: int | None = None) -> str:
    """Base64 of the decoded `value` with one byte changed."""
    return base64.b64encode(flip(base64.b64decode(value), pos)).decode()


def with_annotation(sig: SimpleSigning, key: str, value: str | None) -> SimpleSigning:
    ann = dict(sig.annotations)
    if value is None:
        ann.pop(key, None)
    else:
        ann[key] = value
    return SimpleSigning(sig.payload, ann, where=sig.where)
