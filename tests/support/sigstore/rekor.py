"""A Rekor v1 log in memory: RFC 6962 Merkle tree, SETs, signed checkpoints, entry bodies."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec

from .keys import key_id, sign


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def canonical_json(value: Any) -> bytes:
    """Rekor stores canonicalized bodies: sorted keys, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH over leaf *hashes*."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


def inclusion_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 PATH(m, D[n]), lowest level first (the order Rekor and sigstore-python use)."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*inclusion_path(index, leaves[:k]), merkle_root(leaves[k:])]
    return [*inclusion_path(index - k, leaves[k:]), merkle_root(leaves[:k])]


def hashedrekord_body(sha256_hex: str, signature: bytes, verifier_pem: bytes) -> bytes:
    """`hashedrekord` 0.0.1 entry, as Rekor canonicalizes it (what legacy cosign signatures log)."""
    return canonical_json(
        {
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": sha256_hex}},
                "signature": {"content": b64(signature), "publicKey": {"content": b64(verifier_pem)}},
            },
        }
    )


def dsse_body(envelope: dict[str, Any], payload: bytes, signature: bytes, verifier_pem: bytes) -> bytes:
    """`dsse` 0.0.1 entry: envelope hash, payload hash, signatures with the verifier PEM."""
    envelope_hash = hashlib.sha256(canonical_json(envelope)).hexdigest()
    return canonical_json(
        {
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": {"algorithm": "sha256", "value": envelope_hash},
                "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
                "signatures": [{"signature": b64(signature), "verifier": b64(verifier_pem)}],
            },
        }
    )


@dataclass(frozen=True)
class TlogEntry:
    """One integrated entry with everything a bundle or a legacy annotation carries."""

    kind: str
    version: str
    body: bytes
    log_index: int
    log_id: bytes
    integrated_time: int
    signed_entry_timestamp: bytes
    tree_size: int
    root_hash: bytes
    hashes: tuple[bytes, ...]
    checkpoint: str

    def set_payload(self) -> dict[str, Any]:
        """The object the SET signs (and cosign's `Payload`), key order as cosign writes it."""
        return {
            "body": b64(self.body),
            "integratedTime": self.integrated_time,
            "logIndex": self.log_index,
            "logID": self.log_id.hex(),
        }

    def legacy_bundle(self) -> dict[str, Any]:
        """`dev.sigstore.cosign/bundle` annotation object."""
        return {"SignedEntryTimestamp": b64(self.signed_entry_timestamp), "Payload": self.set_payload()}

    def bundle_json(self) -> dict[str, Any]:
        """`verificationMaterial.tlogEntries[]` item (protobuf JSON: int64 as strings)."""
        return {
            "logIndex": str(self.log_index),
            "logId": {"keyId": b64(self.log_id)},
            "kindVersion": {"kind": self.kind, "version": self.version},
            "integratedTime": str(self.integrated_time),
            "inclusionPromise": {"signedEntryTimestamp": b64(self.signed_entry_timestamp)},
            "inclusionProof": {
                "logIndex": str(self.log_index),
                "rootHash": b64(self.root_hash),
                "treeSize": str(self.tree_size),
                "hashes": [b64(h) for h in self.hashes],
                "checkpoint": {"envelope": self.checkpoint},
            },
            "canonicalizedBody": b64(self.body),
        }


def set_signed_data(body: bytes, integrated_time: int, log_index: int, log_id: bytes) -> bytes:
    """RFC 8785 canonical JSON of {body, integratedTime, logID, logIndex}: what a SET signs."""
    return rfc8785.dumps(
        {"body": b64(body), "integratedTime": integrated_time, "logID": log_id.hex(), "logIndex": log_index}
    )


@dataclass
class RekorLog:
    """An append-only log. Fillers make the first real entry sit inside a multi-level tree."""

    key: ec.EllipticCurvePrivateKey
    name: str = "rekor.imaged.test"
    tree_id: int = 4242424242
    fillers: int = 5
    leaves: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i in range(self.fillers):
            self.leaves.append(leaf_hash(f"filler-{i}".encode()))

    @property
    def log_id(self) -> bytes:
        return key_id(self.key.public_key())

    @property
    def origin(self) -> str:
        return f"{self.name} - {self.tree_id}"

    def signed_checkpoint(self, size: int, root: bytes, key: ec.EllipticCurvePrivateKey | None = None) -> str:
        """Signed note: origin, size, base64 root, blank line, `— <name> b64(keyhint[4] || sig)`."""
        note = f"{self.origin}\n{size}\n{b64(root)}\n"
        signer = key or self.key
        sig = sign(signer, note.encode())
        return f"{note}\n\u2014 {self.name} {b64(key_id(signer.public_key())[:4] + sig)}\n"

    def append(
        self,
        kind: str,
        body: bytes,
        integrated_time: int,
        *,
        set_key: ec.EllipticCurvePrivateKey | None = None,
        checkpoint_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> TlogEntry:
        """Integrate `body`; `set_key` / `checkpoint_key` sign with another key (negative tests)."""
        index = len(self.leaves)
        self.leaves.append(leaf_hash(body))
        leaves = list(self.leaves)
        root = merkle_root(leaves)
        sig = sign(set_key or self.key, set_signed_data(body, integrated_time, index, self.log_id))
        return TlogEntry(
            kind=kind,
            version="0.0.1",
            body=body,
            log_index=index,
            log_id=self.log_id,
            integrated_time=integrated_time,
            signed_entry_timestamp=sig,
            tree_size=len(leaves),
            root_hash=root,
            hashes=tuple(inclusion_path(index, leaves)),
            checkpoint=self.signed_checkpoint(len(leaves), root, checkpoint_key),
        )
