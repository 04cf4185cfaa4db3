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
