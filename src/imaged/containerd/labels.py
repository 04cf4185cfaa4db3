"""Label keys containerd and CRI give meaning to, and our own."""

from __future__ import annotations

GC_EXPIRE = "containerd.io/gc.expire"
GC_FLAT = "containerd.io/gc.flat"
GC_REF_CONTENT = "containerd.io/gc.ref.content"
GC_REF_CONFIG = "containerd.io/gc.ref.content.config"
GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot"
UNCOMPRESSED = "containerd.io/uncompressed"
DISTRIBUTION_SOURCE = "containerd.io/distribution.source"
SNAPSHOT_REF = "containerd.io/snapshot.ref"
CRI_MANAGED = "io.cri-containerd.image"

# Marks leases made by imaged, so a restarted daemon can clean up after a crashed one.
IMAGED_LEASE = "imaged.dev/lease"
VERIFIED = "imaged.dev/verified"
# The fingerprint of the rule (and trust material) a verification was made under: a recorded
# verdict stands for a later pull only under the very same rule.
VERIFIED_RULE = "imaged.dev/verified-rule"

# containerd refuses a label whose key and value together exceed 4096 bytes (not characters).
MAX_LABEL_BYTES = 4096
# Kept free below that limit, so that a value cut here never sits at its very edge.
LABEL_MARGIN = 64
_CUT = "…"


def fit(key: str, value: str) -> str:
    """`value` cut (ending `…`) so that key and value fit containerd's limit in UTF-8 bytes,
    never splitting a character: messages quote registry content, which may be any text."""
    budget = MAX_LABEL_BYTES - len(key.encode()) - LABEL_MARGIN
    data = value.encode()
    if len(data) <= budget:
        return value
    keep = max(budget - len(_CUT.encode()), 0)
    return data[:keep].decode("utf-8", "ignore") + _CUT


def fit_all(labels: dict[str, str]) -> dict[str, str]:
    """Every label of `labels` fitted (`fit`); empty values dropped (no label)."""
    return {k: fit(k, v) for k, v in labels.items() if v}
