"""The real cosign v3 (built by tools/peers.py) as a signer and verifier, offline, on loopback registries.

    cs = Cosign(tmp_path)                     # a key pair made by `cosign generate-key-pair`
    cs.sign(ref_at_digest)                    # new bundle format (referrers, or the referrers tag)
    cs.sign(ref_at_digest, legacy=True)       # legacy `.sig` tag (simple signing payload)
    cs.attest(ref_at_digest, predicate)       # SLSA provenance attestation (a DSSE bundle)
    cs.save(ref, dir)                         # `cosign save`: OCI layout with the image and signatures
    cs.verify(ref, public_key_path)           # `cosign verify --key ... --insecure-ignore-tlog`

Offline means: no transparency log upload (`--tlog-upload=false`), no TUF-provided signing config
(`--use-signing-config=false`), HOME and TUF_ROOT in the work directory (nothing of the machine's),
no proxy. COSIGN_PASSWORD answers the key's password prompt. Registries are plain-HTTP loopback ones:
`--allow-http-registry --allow-insecure-registry`.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import tarfile
from typing import Any

from tests.support import peers

PASSWORD = "imaged-cosign-tests"
REGISTRY_FLAGS = ("--allow-http-registry", "--allow-insecure-registry")
OFFLINE_SIGN_FLAGS = ("--tlog-upload=false", "--use-signing-config=false", "--yes")
IMAGE_KIND = "dev.cosignproject.cosign/image"
SIGS_KIND = "dev.cosignproject.cosign/sigs"
SLSA_PROVENANCE = {
    "builder": {"id": "https://builder.example.com/imaged-tests"},
    "buildType": "https://builder.example.com/buildtypes/test@v1",
    "invocation": {"configSource": {}},
    "materials": [],
}


class CosignError(RuntimeError):
    pass


class Cosign:
    def __init__(self, work: pathlib.Path) -> None:
        self.binary = peers.program("cosign", "cosign")
        self.work = work
        self.home = work / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.key = work / "cosign.key"
        self.pub = work / "cosign.pub"
        if not self.key.exists():
            self.run("generate-key-pair", cwd=work)

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        return {
            **base,
            "HOME": str(self.home),
            "TUF_ROOT": str(self.home / "tuf"),
            "COSIGN_PASSWORD": PASSWORD,
            "COSIGN_YES": "true",
        }

    def run(
        self, *args: str, cwd: pathlib.Path | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [self.binary, *args],
            cwd=cwd or self.work,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise CosignError(f"cosign {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-3000:]}")
        return r

    def sign(self, ref: str, *, legacy: bool = False) -> None:
        """Sign `ref` (host/repo@digest) with the key pair; `legacy`: the `.sig` tag, else a bundle
        (`--new-bundle-format`: a referrer, through the referrers API where the registry has one,
        else under the `sha256-<hex>` tag)."""
        fmt = ("--new-bundle-format=false",) if legacy else ("--new-bundle-format=true",)
        self.run("sign", "--key", str(self.key), *OFFLINE_SIGN_FLAGS, *fmt, *REGISTRY_FLAGS, ref)

    def attest(self, ref: str, predicate: dict[str, Any] | None = None) -> None:
        """A SLSA provenance attestation of `ref`, signed with the key pair (new bundle format)."""
        path = self.work / "predicate.json"
        path.write_text(json.dumps(predicate or SLSA_PROVENANCE))
        self.run(
            "attest",
            "--key",
            str(self.key),
            "--type",
            "slsaprovenance",
            "--predicate",
            str(path),
            *OFFLINE_SIGN_FLAGS,
            *REGISTRY_FLAGS,
            ref,
        )

    def verify(self, ref: str, public_key: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.run(
            "verify",
            "--key",
            str(public_key or self.pub),
            "--insecure-ignore-tlog",
            *REGISTRY_FLAGS,
            ref,
            check=False,
        )

    def save(self, ref: str, dest: pathlib.Path) -> pathlib.Path:
        """`cosign save --dir dest ref`: the image and its signatures as an OCI layout; returns `dest`."""
        self.run("save", *REGISTRY_FLAGS, "--dir", str(dest), ref)
        return dest


def layout_index(layout: pathlib.Path) -> dict[str, Any]:
    doc = json.loads((layout / "index.json").read_text())
    assert isinstance(doc, dict)
    return doc


def layout_archive(layout: pathlib.Path, name: str | None = None) -> bytes:
    """`layout` as an OCI archive (a tar of the directory), for Import.

    A `cosign save` layout names no image (its index entries carry only `kind` annotations), and Import
    records named images only; `name` adds `io.containerd.image.name` to the image entry (kind
    `dev.cosignproject.cosign/image`), as `ctr images export` would have written it. The blobs and
    the signature entries are left exactly as cosign wrote them.
    """
    import io

    index = layout_index(layout)
    if name is not None:
        for entry in index["manifests"]:
            if entry.get("annotations", {}).get("kind") == IMAGE_KIND:
                entry["annotations"]["io.containerd.image.name"] = name
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(layout.rglob("*")):
            rel = path.relative_to(layout).as_posix()
            if rel == "index.json" or path.is_dir():
                continue
            tar.add(path, arcname=rel)
        data = json.dumps(index).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
