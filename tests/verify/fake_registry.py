"""An in-memory registry implementing `imaged.verify.discovery.RegistryAPI`, for discovery logic tests.

It stores exact bytes (the vectors' manifests and blobs) and answers as a registry would:
digest-addressed reads are by content, tags map to digests, the referrers API (when enabled)
lists manifests whose `subject` is the digest. End-to-end behaviour against a real registry is
covered in test_e2e_registry.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from imaged.errors import ImagedError, NotFound, ResourceExhausted
from imaged.oci import mediatypes as mt
from imaged.oci.manifest import Descriptor, Index, media_type_of
from imaged.registry.reference import Reference


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    def __init__(self, *, referrers_api: bool = True) -> None:
        self.referrers_api = referrers_api
        self.manifests: dict[tuple[str, str], bytes] = {}  # (repository, digest)
        self.tags: dict[tuple[str, str], str] = {}  # (repository, tag) -> digest
        self.blobs: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []
        self.errors: dict[str, ImagedError] = {}  # method name -> error to raise
        self.credentials: list[tuple[str, str, str]] = []
        self.delay = 0.0

    # -- seeding -------------------------------------------------------------------------------

    def put_manifest(self, repository: str, body: bytes, tag: str | None = None) -> str:
        digest = sha256(body)
        self.manifests[(repository, digest)] = body
        if tag:
            self.tags[(repository, tag)] = digest
        return digest

    def put_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def put_json(self, repository: str, doc: dict[str, Any], tag: str | None = None) -> str:
        return self.put_manifest(repository, json.dumps(doc).encode(), tag)

    # -- RegistryAPI ---------------------------------------------------------------------------

    async def _enter(self, method: str, what: str) -> None:
        self.calls.append((method, what))
        if self.delay:
            await asyncio.sleep(self.delay)
        if method in self.errors:
            raise self.errors[method]

    def _lookup(self, ref: Reference, obj: str) -> tuple[str, bytes]:
        digest = obj if obj.startswith("sha256:") else self.tags.get((ref.repository, obj), "")
        body = self.manifests.get((ref.repository, digest))
        if body is None:
            raise NotFound(f"manifest {ref.repository}:{obj} not found")
        return digest, body

    async def resolve(self, ref: Reference) -> Descriptor:
        await self._enter("resolve", ref.object)
        digest, body = self._lookup(ref, ref.object)
        return Descriptor(media_type_of(body), digest, len(body))

    async def get_manifest(
        self, ref: Reference, obj: str, *, accept: str = mt.ACCEPT_MANIFESTS, max_size: int | None = None
    ) -> tuple[bytes, str, str]:
        await self._enter("get_manifest", obj)
        digest, body = self._lookup(ref, obj)
        if max_size is not None and len(body) > max_size:
            raise ResourceExhausted(f"manifest {obj} is {len(body)} bytes, over {max_size}")
        return body, media_type_of(body), digest

    async def get_blob(self, ref: Reference, digest: str, *, max_size: int) -> bytes:
        await self._enter("get_blob", digest)
        data = self.blobs.get(digest)
        if data is None:
            raise NotFound(f"blob {digest} not found")
        if len(data) > max_size:
            raise ResourceExhausted(f"blob {digest} is {len(data)} bytes, over {max_size}")
        return data

    async def referrers(
        self, ref: Reference, digest: str, *, artifact_type: str | None = None
    ) -> Index | None:
        await self._enter("referrers", digest)
        if not self.referrers_api:
            return None
        found = []
        for (repo, d), body in self.manifests.items():
            doc = json.loads(body)
            if repo != ref.repository or not isinstance(doc, dict):
                continue
            if (doc.get("subject") or {}).get("digest") != digest:
                continue
            kind = doc.get("artifactType") or doc.get("config", {}).get("mediaType", "")
            if artifact_type and kind != artifact_type:
                continue
            found.append(Descriptor(media_type_of(body), d, len(body), artifact_type=kind))
        return Index(mt.OCI_INDEX, tuple(found))

    def with_credentials(self, host: str, username: str, password: str) -> FakeRegistry:
        self.credentials.append((host, username, password))
        return self
