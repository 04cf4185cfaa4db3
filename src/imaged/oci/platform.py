"""The host platform and choosing a manifest from an index the way containerd does."""

from __future__ import annotations

import functools
import platform as _platform

from imaged.oci.manifest import Descriptor, Platform

_ARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


@functools.cache
def host_platform() -> Platform:
    arch, variant = _ARCH.get(_platform.machine().lower(), (_platform.machine().lower(), ""))
    return Platform("linux", arch, variant)


def _normalize(p: Platform) -> Platform:
    arch, variant = p.architecture.lower(), p.variant.lower()
    if arch in ("aarch64",):
        arch = "arm64"
    if arch == "arm64" and variant in ("", "8"):
        variant = "v8"
    if arch in ("x86_64", "x86-64"):
        arch = "amd64"
    if arch == "amd64" and variant == "v1":
        variant = ""
    return Platform(p.os.lower(), arch, variant)


def matches(want: Platform, have: Platform | None) -> bool:
    """Whether an image built for `have` runs on `want` (compatible variants allowed for arm)."""
    if have is None:
        return False
    w, h = _normalize(want), _normalize(have)
    if w.os != h.os or w.architecture != h.architecture:
        return False
    if w.variant == h.variant or not h.variant:
        return True
    if w.architecture == "arm" and h.variant.startswith("v") and w.variant.startswith("v"):
        # armv7 hosts run v6 and v5 images too.
        try:
            return int(h.variant[1:]) <= int(w.variant[1:])
        except ValueError:
            return False
    return False


def _rank(want: Platform, have: Platform) -> int:
    w, h = _normalize(want), _normalize(have)
    return 0 if w.variant == h.variant else 1


def is_attestation(d: Descriptor) -> bool:
    """BuildKit attestation manifests sit in indexes as `unknown/unknown`: never images to run."""
    if d.annotations.get("vnd.docker.reference.type") == "attestation-manifest":
        return True
    return d.platform is not None and d.platform.os == "unknown" and d.platform.architecture == "unknown"


def select(
    manifests: tuple[Descriptor, ...] | list[Descriptor], want: Platform | None = None
) -> list[Descriptor]:
    """Entries of an index that run on `want`, best first (exact variant before compatible ones).

    Entries without a platform are kept last: nested indexes often have none.
    """
    want = want or host_platform()
    usable = [d for d in manifests if not is_attestation(d)]
    exact = [d for d in usable if d.platform is not None and matches(want, d.platform)]
    exact.sort(key=lambda d: _rank(want, d.platform) if d.platform else 9)
    unplatformed = [d for d in usable if d.platform is None]
    return exact + unplatformed
