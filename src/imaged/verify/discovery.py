"""Finding an image's signatures on its registry, in the reference's order.

1. The OCI referrers API for the digest: Sigstore bundles (cosign 3) and cosign 2's OCI 1.1
   form of simple-signing signatures.
2. Where the registry has no referrers API: the fallback tag `sha256-<hex>`, an index of the
   same referrers. The tag is mutable and anyone with push access can write it, so every
   referrer's `subject` must name our digest (checked for API answers too).
3. The legacy cosign tag `sha256-<hex>.sig`: one simple-signing layer per signature.

Stages run one after the other and the caller stops at the first that verifies: a `.sig`
GET costs a "pull" on Docker Hub, and most images carry one format only. Within a stage
everything is fetched in parallel. Everything read is bounded: manifests 4 MiB, blobs 1 MiB,
at most 32 referrers and 32 signatures per stage. A referrer or layer that is missing,
malformed or too large is noted and skipped (the stage may still verify with another); a
registry that fails (unavailable, unauthenticated, digest mismatch) is an error, not a verdict.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from imaged.errors import InvalidArgument, NotFound, ResourceExhausted
from imaged.oci import mediatypes as mt
from imaged.oci.manifest import Descriptor, Index, Manifest, media_type_of, parse_index, parse_manifest
from imaged.registry.client import FetchedManifest
from imaged.registry.reference import Reference
from imaged.tasks import gather
from imaged.verify.material import (
    ANN_PREDICATE_TYPE,
    BUNDLE_MEDIA_TYPE,
    COSIGN_SIG_ARTIFACT_TYPE,
    DSSE_MEDIA_TYPE,
    SIMPLE_SIGNING_MEDIA_TYPE,
    BundleSignature,
    Envelope,
    Signature,
    SimpleSigning,
)

MAX_MANIFEST_SIZE = mt.MAX_MANIFEST_SIZE
MAX_BLOB_SIZE = 1024 * 1024
MAX_REFERRERS = 32
MAX_SIGNATURES = 32
FETCH_CONCURRENCY = 8
M = TypeVar("M")  # what a fetched layer is made into: a signature or an envelope

BUNDLE_ARTIFACT_TYPES = frozenset({BUNDLE_MEDIA_TYPE, "application/vnd.dev.sigstore.bundle+json;version=0.3"})
SIGNATURE_ARTIFACT_TYPES = BUNDLE_ARTIFACT_TYPES | {COSIGN_SIG_ARTIFACT_TYPE}
# What the fallback tag's index entries say when the pusher copied the config's media type.
_UNTYPED = frozenset({"", mt.OCI_EMPTY})


class RegistryAPI(Protocol):
    """What verification needs from a registry client (`imaged.registry.client.RegistryClient`)."""

    async def resolve(self, ref: Reference) -> Descriptor: ...

    async def get_manifest(
        self, ref: Reference, obj: str, *, accept: str = ..., max_size: int | None = None
    ) -> FetchedManifest: ...

    async def get_blob(self, ref: Reference, digest: str, *, max_size: int) -> bytes: ...

    async def referrers(
        self, ref: Reference, digest: str, *, artifact_type: str | None = None
    ) -> Index | None: ...


@dataclass
class Found:
    """Signatures of one stage, and what was seen but not usable (for failure messages)."""

    stage: str
    signatures: list[Signature] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def tag_for(digest: str, suffix: str = "") -> str:
    algorithm, _, hex_ = digest.partition(":")
    return f"{algorithm}-{hex_}{suffix}"


def _artifact_type(m: Manifest) -> str:
    return m.artifact_type or m.config.media_type


async def _fetch_layers(
    registry: RegistryAPI,
    ref: Reference,
    layers: list[tuple[int, Descriptor]],
    make: Callable[[int, Descriptor, bytes], M],
    what: str,
    found: Found,
) -> list[M]:
    """Fetch the layers' blobs (each distinct digest once) and make signatures of them."""
    wanted: list[tuple[int, Descriptor]] = []
    for i, layer in layers:
        if layer.size > MAX_BLOB_SIZE:
            found.notes.append(f"{what} layer {i} is {layer.size} bytes, over the {MAX_BLOB_SIZE} byte limit")
        else:
            wanted.append((i, layer))

    async def fetch(digest: str) -> bytes | None:
        try:
            return await registry.get_blob(ref, digest, max_size=MAX_BLOB_SIZE)
        except NotFound:
            found.notes.append(f"{what} blob {digest} is missing")
        except ResourceExhausted as e:
            found.notes.append(f"{what} blob {digest}: {e.message}")
        return None

    digests = list(dict.fromkeys(layer.digest for _, layer in wanted))
    blobs = dict(
        zip(
            digests,
            await gather([functools.partial(fetch, d) for d in digests], limit=FETCH_CONCURRENCY),
            strict=True,
        )
    )
    return [make(i, layer, data) for i, layer in wanted if (data := blobs[layer.digest]) is not None]


async def _referrer(
    registry: RegistryAPI, ref: Reference, digest: str, desc: Descriptor, found: Found
) -> list[Signature]:
    what = f"referrer {desc.digest}"
    if desc.size > MAX_MANIFEST_SIZE:
        found.notes.append(f"{what} is {desc.size} bytes, over the manifest limit")
        return []
    try:
        body, _, _ = await registry.get_manifest(
            ref, desc.digest, accept=f"{mt.OCI_MANIFEST}, {mt.DOCKER_MANIFEST}", max_size=MAX_MANIFEST_SIZE
        )
        manifest = parse_manifest(body, what)
    except NotFound:
        found.notes.append(f"{what} is listed but missing")
        return []
    except (InvalidArgument, ResourceExhausted) as e:
        found.notes.append(f"{what} is not a usable manifest: {e.message}")
        return []
    if manifest.subject is None or manifest.subject.digest != digest:
        named = manifest.subject.digest if manifest.subject else "no subject"
        found.notes.append(f"{what} refers to {named}, not to the image {digest}; ignored")
        return []
    kind = _artifact_type(manifest)
    if kind in BUNDLE_ARTIFACT_TYPES:
        layers = [
            (i, lay) for i, lay in enumerate(manifest.layers) if lay.media_type in BUNDLE_ARTIFACT_TYPES
        ]
        return await _fetch_layers(
            registry,
            ref,
            layers[:MAX_SIGNATURES],
            lambda i, lay, data: BundleSignature(
                data,
                where=f"bundle referrer {desc.digest}",
                how=f"verified via bundle referrer with digest {desc.digest}",
                predicate_type=manifest.annotations.get(ANN_PREDICATE_TYPE),
            ),
            what,
            found,
        )
    if kind == COSIGN_SIG_ARTIFACT_TYPE:
        layers = [
            (i, lay) for i, lay in enumerate(manifest.layers) if lay.media_type == SIMPLE_SIGNING_MEDIA_TYPE
        ]
        return await _fetch_layers(
            registry,
            ref,
            layers[:MAX_SIGNATURES],
            lambda i, lay, data: SimpleSigning(
                data,
                lay.annotations,
                where=f"signature referrer {desc.digest} layer {i}",
                how=f"verified via legacy signature referrer with digest {desc.digest}",
            ),
            what,
            found,
        )
    found.notes.append(f"{what} is a {kind or 'untyped'} artifact, not a signature")
    return []


async def discover_referrers(registry: RegistryAPI, ref: Reference, digest: str) -> Found:
    """Stage 1 and 2: signatures that are OCI referrers of `digest` (API, else fallback tag)."""
    index = await registry.referrers(ref, digest)
    if index is not None:
        found = Found("referrers API")
        candidates = [d for d in index.manifests if d.artifact_type in SIGNATURE_ARTIFACT_TYPES]
        others = len(index.manifests) - len(candidates)
        if others:
            found.notes.append(f"referrers API lists {others} referrer(s) that are not signatures")
    else:
        tag = tag_for(digest)
        found = Found(f"referrers tag {tag}")
        try:
            body, served_type, tag_digest = await registry.get_manifest(ref, tag, max_size=MAX_MANIFEST_SIZE)
        except NotFound:
            found.notes.append(f"no referrers API and no referrers tag {tag}")
            return found
        except (InvalidArgument, ResourceExhausted) as e:
            found.notes.append(f"referrers tag {tag} is not usable: {e.message}")
            return found
        try:
            if mt.is_index(media_type_of(body, served_type)):
                listed = parse_index(body, f"referrers tag {tag}").manifests
                candidates = [d for d in listed if d.artifact_type in SIGNATURE_ARTIFACT_TYPES | _UNTYPED]
            else:  # a single referrer manifest pushed under the tag
                candidates = [Descriptor(mt.OCI_MANIFEST, tag_digest, len(body))]
        except InvalidArgument as e:
            found.notes.append(f"referrers tag {tag} is not usable: {e.message}")
            return found
    if len(candidates) > MAX_REFERRERS:
        found.notes.append(
            f"{len(candidates)} signature referrers listed; only the first {MAX_REFERRERS} are considered"
        )
        candidates = candidates[:MAX_REFERRERS]
    results = await gather(
        [functools.partial(_referrer, registry, ref, digest, d, found) for d in candidates],
        limit=FETCH_CONCURRENCY,
    )
    found.signatures = [s for r in results for s in r][:MAX_SIGNATURES]
    if not candidates:
        found.notes.append(f"{found.stage}: no signature referrers")
    return found


async def _legacy_tag(
    registry: RegistryAPI,
    ref: Reference,
    digest: str,
    suffix: str,
    media_type: str,
    noun: str,
    make: Callable[[int, Descriptor, bytes, str], M],
    *,
    note_others: bool,
) -> tuple[list[M], Found]:
    """cosign's legacy tag `sha256-<hex><suffix>`: its layers of `media_type`, each made with
    `make(index, layer, bytes, tag)`; `note_others`: say which layers are something else."""
    tag = tag_for(digest, suffix)
    found = Found(f"legacy {noun} tag {tag}")
    try:
        body, _, _ = await registry.get_manifest(
            ref, tag, accept=f"{mt.OCI_MANIFEST}, {mt.DOCKER_MANIFEST}", max_size=MAX_MANIFEST_SIZE
        )
        manifest = parse_manifest(body, f"{noun} manifest {tag}")
    except NotFound:
        found.notes.append(f"no legacy {noun} tag {tag}")
        return [], found
    except (InvalidArgument, ResourceExhausted) as e:
        found.notes.append(f"legacy {noun} tag {tag} is not usable: {e.message}")
        return [], found
    layers = []
    for i, layer in enumerate(manifest.layers):
        if layer.media_type == media_type:
            layers.append((i, layer))
        elif note_others:
            found.notes.append(f"{tag} layer {i} is {layer.media_type}, not a {noun}")
    if len(layers) > MAX_SIGNATURES:
        found.notes.append(f"{tag} has {len(layers)} {noun}s; only the first {MAX_SIGNATURES} are considered")
        layers = layers[:MAX_SIGNATURES]
    made = await _fetch_layers(
        registry, ref, layers, lambda i, lay, data: make(i, lay, data, tag), tag, found
    )
    return made, found


async def discover_legacy(registry: RegistryAPI, ref: Reference, digest: str) -> Found:
    """Stage 3: the legacy `sha256-<hex>.sig` tag's simple-signing layers."""

    def signature(i: int, layer: Descriptor, data: bytes, tag: str) -> Signature:
        return SimpleSigning(data, layer.annotations, where=f"legacy signature {tag} layer {i}")

    made, found = await _legacy_tag(
        registry, ref, digest, ".sig", SIMPLE_SIGNING_MEDIA_TYPE, "signature", signature, note_others=True
    )
    found.signatures = made
    return found


async def discover_legacy_attestations(
    registry: RegistryAPI, ref: Reference, digest: str
) -> tuple[list[Envelope], list[str]]:
    """The legacy `sha256-<hex>.att` tag's DSSE envelope layers (cosign attest without bundles)."""

    def envelope(i: int, layer: Descriptor, data: bytes, tag: str) -> Envelope:
        return Envelope(data, layer.annotations, where=f"legacy attestation {tag} layer {i}")

    made, found = await _legacy_tag(
        registry, ref, digest, ".att", DSSE_MEDIA_TYPE, "attestation", envelope, note_others=False
    )
    return made, found.notes


STAGES: tuple[Callable[[RegistryAPI, Reference, str], Awaitable[Found]], ...] = (
    discover_referrers,
    discover_legacy,
)
