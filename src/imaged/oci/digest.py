"""Digests: the grammar (sha256 and sha512 only, lowercase hex, as distribution/reference and
OCI's image spec have it) and computing them. Pure data, used by references, manifests,
registries and archives alike."""

from __future__ import annotations

import hashlib
import re

from imaged.errors import InvalidArgument

_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
SHA256_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_SHA512_RE = re.compile(r"^sha512:[a-f0-9]{128}$")


def validate_digest(digest: str) -> str:
    """Return `digest` if it is a well-formed sha256/sha512 digest, else raise InvalidArgument."""
    if SHA256_RE.fullmatch(digest) or _SHA512_RE.fullmatch(digest):
        return digest
    algorithm = digest.partition(":")[0]
    if algorithm == "sha256" or not _DIGEST_RE.fullmatch(digest):
        raise InvalidArgument(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex characters>")
    if algorithm == "sha512":
        raise InvalidArgument(f"invalid digest {digest!r}: expected sha512:<128 lowercase hex characters>")
    raise InvalidArgument(f"unsupported digest {digest!r}: only sha256 and sha512 are supported")


def is_digest(obj: str) -> bool:
    try:
        validate_digest(obj)
    except InvalidArgument:
        return False
    return True


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hash_digest(algorithm: str, data: bytes) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def digest_like(data: bytes, like: str) -> str:
    """Digest of `data` with the algorithm of digest `like`."""
    return hash_digest(like.split(":", 1)[0], data)
