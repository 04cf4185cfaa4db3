"""Pushing signature material to a real registry, in the layouts cosign uses.

Plain urllib (the registry is another process, so blocking calls are fine in async tests).
Handles plain HTTP, HTTPS with a private CA (`registry.ca_pem_path`), Basic auth
(`registry.basic_auth_header()`) and Bearer token challenges (credentials from the same header).
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .formats import (
    BUNDLE_MEDIA_TYPE,
    COSIGN_SIGN_PREDICATE,
    DSSE_MEDIA_TYPE,
    BundleSignature,
    LegacySignature,
    digest_hex,
)
from .formats import sha256_digest as _sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT_ALL = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Descriptor:
    """An OCI descriptor (what a `subject`, a layer or an index entry points at)."""

    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    data: bytes | None = field(default=None, compare=False, repr=False)  # the bytes, when we have them

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "size": self.size, "digest": self.digest}
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        if self.annotations is not None:
            out["annotations"] = dict(self.annotations)
        return out


def legacy_signature_tag(image_digest: str) -> str:
    return f"sha256-{digest_hex(image_digest)}.sig"


def referrers_tag(image_digest: str) -> str:
    return f"sha256-{digest_hex(image_digest)}"


def legacy_signature_manifest(signatures: Sequence[LegacySignature]) -> tuple[bytes, bytes]:
    """(manifest bytes, config bytes) of a cosign `.sig` manifest: one layer per signature."""
    config = _compact(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [s.payload_digest for s in signatures]},
            "config": {},
        }
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": _sha256(config)},
        "layers": [
            {
                "mediaType": s.media_type,
                "size": len(s.payload),
                "digest": s.payload_digest,
                "annotations": dict(s.annotations),
            }
            for s in signatures
        ],
    }
    return _compact(manifest), config


def bundle_referrer_manifest(
    subject: Descriptor,
    bundle: BundleSignature,
    *,
    created: str = "2025-01-01T00:00:00Z",
    predicate_type: str = COSIGN_SIGN_PREDICATE,
) -> bytes:
    """cosign 3 referrer manifest, field order as in the real vectors (B1-B4)."""
    blob = bundle.json_bytes
    return _compact(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_EMPTY,
                "size": 2,
                "digest": OCI_EMPTY_DIGEST,
                "artifactType": BUNDLE_MEDIA_TYPE,
            },
            "layers": [{"mediaType": BUNDLE_MEDIA_TYPE, "size": len(blob), "digest": _sha256(blob)}],
            "annotations": {
                "dev.sigstore.bundle.content": "dsse-envelope",
                "dev.sigstore.bundle.predicateType": predicate_type,
                "org.opencontainers.image.created": created,
            },
            "subject": {"mediaType": subject.media_type, "size": subject.size, "digest": subject.digest},
            "artifactType": BUNDLE_MEDIA_TYPE,
        }
    )


class RegistryError(RuntimeError):
    pass


class OciPusher:
    """Minimal OCI distribution client for writing test fixtures (never used by the daemon)."""

    def __init__(self, registry: Any, *, timeout: float = 30.0) -> None:
        """`registry`: a `tests.support.registry.Registry` or a bare "host:port" (plain HTTP)."""
        if isinstance(registry, str):
            self.base = f"http://{registry}"
            self._basic: str | None = None
            cafile = None
        else:
            self.base = getattr(registry, "url", None) or f"http://{registry.host}"
            header = getattr(registry, "basic_auth_header", None)
            self._basic = header() if callable(header) else None
            cafile = getattr(registry, "ca_pem_path", None)
        self._ssl = ssl.create_default_context(cafile=cafile) if self.base.startswith("https") else None
        self._timeout = timeout
        self._tokens: dict[str, str] = {}

    # -- HTTP -----------------------------------------------------------------------------------

    def _token(self, challenge: str, repo: str) -> str:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = {"service": params.get("service", ""), "scope": f"repository:{repo}:pull,push"}
        req = urllib.request.Request(params["realm"] + "?" + urllib.parse.urlencode(query))
        if self._basic:
            req.add_header("Authorization", self._basic)
        with urllib.request.urlopen(req, timeout=self._timeout, context=self._ssl) as resp:
            doc = json.loads(resp.read())
        return str(doc.get("token") or doc["access_token"])

    def _request(
        self,
        method: str,
        url: str,
        repo: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        if not url.startswith("http"):
            url = self.base + url
        for attempt in range(2):
            req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
            if repo in self._tokens:
                req.add_header("Authorization", f"Bearer {self._tokens[repo]}")
            elif self._basic:
                req.add_header("Authorization", self._basic)
            try:
                with urllib.request.urlopen(req, timeout=self._timeout, context=self._ssl) as resp:
                    return resp.status, dict(resp.headers.items()), resp.read()
            except urllib.error.HTTPError as e:
                challenge = e.headers.get("WWW-Authenticate", "")
                if e.code == 401 and attempt == 0 and challenge.lower().startswith("bearer"):
                    self._tokens[repo] = self._token(challenge, repo)
                    continue
                return e.code, dict(e.headers.items()), e.read()
        raise AssertionError("unreachable")

    # -- primitives -----------------------------------------------------------------------------

    def push_blob(self, repo: str, data: bytes, media_type: str = "application/octet-stream") -> Descriptor:
        digest = _sha256(data)
        status, _, _ = self._request("HEAD", f"/v2/{repo}/blobs/{digest}", repo)
        if status != 200:
            status, headers, text = self._request("POST", f"/v2/{repo}/blobs/uploads/", repo, b"")
            if status != 202:
                raise RegistryError(f"blob upload start {repo}: {status} {text[:300]!r}")
            location = headers["Location"]
            if location.startswith("/"):
                location = self.base + location
            sep = "&" if "?" in location else "?"
            status, _, text = self._request(
                "PUT",
                f"{location}{sep}digest={urllib.parse.quote(digest)}",
                repo,
                data,
                {"Content-Type": "application/octet-stream"},
            )
            if status != 201:
                raise RegistryError(f"blob upload {repo}@{digest}: {status} {text[:300]!r}")
        return Descriptor(media_type, digest, len(data), data=data)

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> Descriptor:
        status, headers, text = self._request(
            "PUT", f"/v2/{repo}/manifests/{reference}", repo, body, {"Content-Type": media_type}
        )
        if status != 201:
            raise RegistryError(f"manifest PUT {repo}:{reference}: {status} {text[:300]!r}")
        digest = _sha256(body)
        if headers.get("Docker-Content-Digest", digest) != digest:
            raise RegistryError(f"registry digest {headers['Docker-Content-Digest']} != {digest}")
        return Descriptor(media_type, digest, len(body), data=body)

    def get_manifest(self, repo: str, reference: str) -> Descriptor | None:
        """The manifest (with its bytes) at a tag or digest, or None on 404."""
        status, headers, body = self._request(
            "GET", f"/v2/{repo}/manifests/{reference}", repo, headers={"Accept": ACCEPT_ALL}
        )
        if status == 404:
            return None
        if status != 200:
            raise RegistryError(f"manifest GET {repo}:{reference}: {status} {body[:300]!r}")
        media_type = headers.get("Content-Type", "").split(";")[0] or json.loads(body).get("mediaType", "")
        return Descriptor(media_type, _sha256(body), len(body), data=body)

    def get_blob(self, repo: str, digest: str) -> bytes:
        status, _, body = self._request("GET", f"/v2/{repo}/blobs/{digest}", repo)
        if status != 200:
            raise RegistryError(f"blob GET {repo}@{digest}: {status} {body[:300]!r}")
        return body

    def descriptor(self, repo: str, reference: str) -> Descriptor:
        """Descriptor of an existing manifest (e.g. an image pushed with skopeo): the `subject`."""
        found = self.get_manifest(repo, reference)
        if found is None:
            raise RegistryError(f"{repo}:{reference} not found on {self.base}")
        return found

    # -- images ---------------------------------------------------------------------------------

    def push_minimal_image(self, repo: str, tag: str, *, label: str = "minimal") -> Descriptor:
        """A tiny OCI image (one fake layer; not runnable): a subject for signature-only tests."""
        layer = self.push_blob(repo, f"layer of {label}\n".encode(), OCI_LAYER)
        config = _compact(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"imaged.test": label}},
                "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
            }
        )
        cfg = self.push_blob(repo, config, OCI_CONFIG)
        manifest = _compact(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "size": cfg.size, "digest": cfg.digest},
                "layers": [{"mediaType": OCI_LAYER, "size": layer.size, "digest": layer.digest}],
            }
        )
        return self.put_manifest(repo, tag, manifest, OCI_MANIFEST)

    # -- signatures -----------------------------------------------------------------------------

    def push_legacy_signatures(
        self, repo: str, image_digest: str, signatures: Sequence[LegacySignature], *, tag: str | None = None
    ) -> Descriptor:
        """Write the `sha256-<hex>.sig` tag (replacing it) with one layer per signature."""
        manifest, config = legacy_signature_manifest(signatures)
        self.push_blob(repo, config, OCI_CONFIG)
        for sig in signatures:
            self.push_blob(repo, sig.payload, sig.media_type)
        return self.put_manifest(repo, tag or legacy_signature_tag(image_digest), manifest, OCI_MANIFEST)

    def push_bundle_referrer(
        self,
        repo: str,
        subject: Descriptor,
        bundle: BundleSignature,
        *,
        index_for: str | None = None,
        index_artifact_type: str = OCI_EMPTY,
        update_index: bool = True,
        created: str = "2025-01-01T00:00:00Z",
        predicate_type: str = COSIGN_SIGN_PREDICATE,
    ) -> Descriptor:
        """Push a cosign 3 referrer for `subject` and list it in the referrers tag index.

        The index is `sha256-<hex>` of `index_for` (default: the subject digest); pass another
        image's digest to plant a referrer whose subject is NOT that image (negative test).
        Entries already in the index are kept; `update_index=False` leaves the index alone.
        cosign writes the index entry's `artifactType` as the config media type
        (`application/vnd.oci.empty.v1+json`, see vectors B2/B4): so does this by default.
        """
        self.push_blob(repo, b"{}", OCI_EMPTY)
        self.push_blob(repo, bundle.json_bytes, BUNDLE_MEDIA_TYPE)
        body = bundle_referrer_manifest(subject, bundle, created=created, predicate_type=predicate_type)
        referrer = self.put_manifest(repo, _sha256(body), body, OCI_MANIFEST)
        if not update_index:
            return referrer
        self.add_to_referrers_index(
            repo,
            index_for or subject.digest,
            Descriptor(OCI_MANIFEST, referrer.digest, referrer.size, artifact_type=index_artifact_type),
        )
        return referrer

    def add_to_referrers_index(self, repo: str, image_digest: str, entry: Descriptor) -> Descriptor:
        """Add `entry` to the fallback referrers index tag `sha256-<hex>` (created if missing)."""
        tag = referrers_tag(image_digest)
        existing = self.get_manifest(repo, tag)
        manifests: list[dict[str, Any]] = []
        if existing is not None and existing.data is not None:
            manifests = [
                m for m in json.loads(existing.data).get("manifests", []) if m["digest"] != entry.digest
            ]
        manifests.append(entry.to_json())
        index = _compact({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        return self.put_manifest(repo, tag, index, OCI_INDEX)

    def push_legacy_attestations(
        self, repo: str, image_digest: str, envelopes: Sequence[tuple[bytes, dict[str, str]]]
    ) -> Descriptor:
        """Write the `sha256-<hex>.att` tag: one DSSE envelope layer per (envelope JSON, annotations)."""
        config = _compact({"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers"}})
        self.push_blob(repo, config, OCI_CONFIG)
        layers = []
        for envelope, notes in envelopes:
            blob = self.push_blob(repo, envelope, DSSE_MEDIA_TYPE)
            layers.append(
                {
                    "mediaType": DSSE_MEDIA_TYPE,
                    "size": blob.size,
                    "digest": blob.digest,
                    "annotations": notes,
                }
            )
        manifest = _compact(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": _sha256(config)},
                "layers": layers,
            }
        )
        return self.put_manifest(repo, f"sha256-{digest_hex(image_digest)}.att", manifest, OCI_MANIFEST)
