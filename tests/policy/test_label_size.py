"""Review 2, finding 4: a warn-mode label fits containerd's label limit, counted in bytes.

containerd refuses a label whose key and value exceed 4096 bytes. A warned verdict's label quotes
the failure, and the failure quotes registry content (a `.sig` layer's mediaType, a referrer's
artifactType): 3000 characters of non-ASCII text are 6000 bytes, and every warn-mode pull and
import of that image failed on its own label."""

from __future__ import annotations

import json

from imaged.containerd.labels import LABEL_MARGIN, fit
from tests.policy.conftest import import_bytes, key_rule, pull, records
from tests.support import archives
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher

VERIFIED = "imaged.dev/verified"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def push_with_odd_sig_tag(reg: Registry, repo: str, img: archives.Image) -> str:
    """`img` at repo:v1, and a `.sig` tag whose one layer has a long non-ASCII mediaType."""
    digest = archives.push(reg, repo, "v1", img)
    push = OciPusher(reg)
    payload, config = b"not a signature", b"{}"
    push.push_blob(repo, payload, "application/octet-stream")
    push.push_blob(repo, config, OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": archives.sha(config), "size": len(config)},
        "layers": [
            {
                "mediaType": "application/" + "\u00e9" * 3000,
                "digest": archives.sha(payload),
                "size": len(payload),
            }
        ],
    }
    body = json.dumps(manifest, ensure_ascii=False).encode()
    push.put_manifest(repo, f"sha256-{digest[7:]}.sig", body, OCI_MANIFEST)
    return digest


def fits(label: str) -> None:
    assert len(VERIFIED.encode()) + len(label.encode()) <= 4096, len(label.encode())
    assert label.startswith("allowed in warn mode, not verified:") and "\u00e9" in label, label[:200]


def test_a_warned_label_quoting_non_ascii_registry_content_fits(reg, key, start, containerd) -> None:  # type: ignore[no-untyped-def]
    d = start({"mode": "warn", "rules": [key_rule(f"{reg.host}/wide/*", key)]})
    img = archives.simple_image("wide-label-pull")
    push_with_odd_sig_tag(reg, "wide/app", img)
    name = pull(d, f"{reg.host}/wide/app:v1")
    assert name == f"{reg.host}/wide/app@{img.digest}"
    fits(records(d)[name].labels[VERIFIED])

    # Import: the archive has no signature, the registry's `.sig` tag is read and quoted.
    other = archives.simple_image("wide-label-import")
    push_with_odd_sig_tag(reg, "wide/imported", other)
    imported = f"{reg.host}/wide/imported:v1"
    assert import_bytes(d, archives.oci_archive([(imported, other)])) == imported
    fits(records(d)[imported].labels[VERIFIED])


def test_a_label_is_cut_by_bytes_between_characters() -> None:
    for ch in ("a", "\u00e9", "\u20ac", "\U0001f600"):  # 1, 2, 3 and 4 bytes in UTF-8
        for n in (4100, 4101, 10000):
            value = fit(VERIFIED, "x" * (n % 3) + ch * n)
            size = len(VERIFIED.encode()) + len(value.encode())
            assert size <= 4096 - LABEL_MARGIN, (ch, n, size)
            assert value.endswith("…") and value.rstrip("…").rstrip(ch).strip("x") == "", (ch, n)
    assert fit(VERIFIED, "short é") == "short é"
