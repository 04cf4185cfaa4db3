"""Parsing manifests, indexes and configs into small typed records, refusing wrong shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imaged.errors import InvalidArgument
from imaged.oci import jsondoc
from imaged.oci import mediatypes as mt
from imaged.oci.digest import sha256_digest, validate_digest


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    def __str__(self) -> str:
        s = f"{self.os}/{self.architecture}"
        return f"{s}/{self.variant}" if self.variant else s


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    artifact_type: str = ""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    subject: Descriptor | None = None
    artifact_type: str = ""
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None = None
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ImageConfig:
    diff_ids: tuple[str, ...]
    platform: Platform


def _obj(data: bytes | dict[str, Any], what: str) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    try:
        doc = jsondoc.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return doc


def _str_map(v: Any, what: str) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise InvalidArgument(f"{what}: annotations must map strings to strings")
    return dict(v)


def parse_platform(v: Any, what: str) -> Platform | None:
    if v is None:
        return None
    if (
        not isinstance(v, dict)
        or not isinstance(v.get("os"), str)
        or not isinstance(v.get("architecture"), str)
    ):
        raise InvalidArgument(f"{what}: platform needs string os and architecture")
    return Platform(v["os"], v["architecture"], str(v.get("variant") or ""), str(v.get("os.version") or ""))


def parse_descriptor(v: Any, what: str) -> Descriptor:
    if not isinstance(v, dict):
        raise InvalidArgument(f"{what}: descriptor is not an object")
    media_type, digest, size = v.get("mediaType"), v.get("digest"), v.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidArgument(f"{what}: descriptor has no mediaType")
    if not isinstance(digest, str):
        raise InvalidArgument(f"{what}: descriptor has no digest")
    try:
        validate_digest(digest)
    except InvalidArgument as e:
        raise InvalidArgument(f"{what}: {e.message}") from e
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{what}: descriptor {digest} has no valid size")
    return Descriptor(
        media_type,
        digest,
        size,
        _str_map(v.get("annotations"), what),
        parse_platform(v.get("platform"), what),
        str(v.get("artifactType") or ""),
    )


def media_type_of(data: bytes | dict[str, Any], fallback: str = "") -> str:
    """The document's own mediaType, else the one it was served with, else guessed by shape."""
    doc = _obj(data, "manifest")
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if fallback and fallback not in ("application/json", "application/octet-stream", "text/plain"):
        return fallback
    if "manifests" in doc:
        return mt.OCI_INDEX
    if "config" in doc and "layers" in doc:
        return mt.OCI_MANIFEST
    if doc.get("schemaVersion") == 1:
        return mt.DOCKER_SCHEMA1
    return fallback


def _check_schema(doc: dict[str, Any], what: str) -> None:
    if doc.get("schemaVersion") == 1:
        raise InvalidArgument(
            f"{what} is a Docker schema 1 manifest, which is deprecated and not supported; "
            "push the image again with a current tool"
        )
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument(f"{what} has schemaVersion {doc.get('schemaVersion')!r}, expected 2")


def parse_manifest(data: bytes | dict[str, Any], what: str = "manifest") -> Manifest:
    doc = _obj(data, what)
    _check_schema(doc, what)
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InvalidArgument(f"{what} has no layers list")
    subject = doc.get("subject")
    return Manifest(
        media_type_of(doc, mt.OCI_MANIFEST),
        parse_descriptor(doc.get("config"), f"{what} config"),
        tuple(parse_descriptor(layer, f"{what} layer {i}") for i, layer in enumerate(layers)),
        parse_descriptor(subject, f"{what} subject") if subject is not None else None,
        str(doc.get("artifactType") or ""),
        _str_map(doc.get("annotations"), what),
    )


def parse_index(data: bytes | dict[str, Any], what: str = "index") -> Index:
    doc = _obj(data, what)
    _check_schema(doc, what)
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidArgument(f"{what} has no manifests list")
    subject = doc.get("subject")
    return Index(
        media_type_of(doc, mt.OCI_INDEX),
        tuple(parse_descriptor(m, f"{what} entry {i}") for i, m in enumerate(manifests)),
        parse_descriptor(subject, f"{what} subject") if subject is not None else None,
        _str_map(doc.get("annotations"), what),
    )


def parse_config(data: bytes, what: str = "image config") -> ImageConfig:
    doc = _obj(data, what)
    rootfs = doc.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise InvalidArgument(f"{what} has no rootfs.diff_ids list")
    for d in diff_ids:
        validate_digest(d)
    return ImageConfig(
        tuple(diff_ids),
        Platform(
            str(doc.get("os") or ""),
            str(doc.get("architecture") or ""),
            str(doc.get("variant") or ""),
            str(doc.get("os.version") or ""),
        ),
    )


def chain_ids(diff_ids: tuple[str, ...] | list[str]) -> list[str]:
    """Snapshot names of a layer stack: chainID(d0)=d0, chainID(..dn)=sha256("<prev> <dn>")."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else sha256_digest(f"{out[-1]} {d}".encode()))
    return out
