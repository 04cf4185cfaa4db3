"""`make demo`: something real to pull and verify on a machine with no network.

Starts `docker-registry` on 127.0.0.1:5000 (data in .run/registry/) unless a registry answers there,
pushes a small runnable image (busybox, `echo hello`) as demo/hello:v1, signs it the way
`cosign sign --key` does (a legacy `.sig` signature; the key pair is made once in .run/demo/), pushes
an unsigned image as demo/unsigned:v1, then puts a `publicKey` rule for the demo repositories first
in the daemon's configuration and sends it SIGHUP. The images are built with the test suite's
builders (umoci, busybox-static, skopeo), the same ones the integration tests push.
"""

from __future__ import annotations

import argparse
import base64
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.images import push_test_image  # noqa: E402
from tests.support.sigstore.formats import ANN_SIGNATURE, LegacySignature, simple_signing_payload  # noqa: E402
from tests.support.sigstore.keys import sign  # noqa: E402
from tests.support.sigstore.oci import OciPusher  # noqa: E402

REPO = "demo/hello"
UNSIGNED = "demo/unsigned"
TAG = "v1"


class Target:
    """What the image builder pushes to: a plain-HTTP registry on loopback."""

    def __init__(self, host: str) -> None:
        self.host = host

    def skopeo_dest_args(self) -> list[str]:
        return ["--dest-tls-verify=false"]


def answers(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_registry(host: str, data: pathlib.Path) -> None:
    if answers(host):
        print(f"demo: using the registry already answering on {host}")
        return
    data.mkdir(parents=True, exist_ok=True)
    config = data / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {data / 'storage'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: {host}, secret: imaged-demo}}\n"
    )
    with open(data / "registry.log", "ab") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this script, like the daemon it serves
        )
    (data / "pid").write_text(f"{proc.pid}\n")
    for _ in range(200):
        if answers(host):
            print(f"demo: started docker-registry on {host} (pid {proc.pid}; stop: kill $(cat {data}/pid))")
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    sys.exit(f"demo: docker-registry did not start on {host}; see {data / 'registry.log'}")


def signing_key(d: pathlib.Path) -> ec.EllipticCurvePrivateKey:
    """The demo's key pair, made once: what `cosign generate-key-pair` would give (unencrypted)."""
    d.mkdir(parents=True, exist_ok=True)
    path = d / "cosign.key"
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    (d / "cosign.pub").write_bytes(public_pem(key))
    return key


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def push_signed(host: str, key: ec.EllipticCurvePrivateKey) -> str:
    digest = push_test_image(Target(host), REPO, TAG)
    payload = simple_signing_payload(digest, f"{host}/{REPO}")
    signature = sign(key, payload)
    sig = LegacySignature(payload, signature, {ANN_SIGNATURE: base64.b64encode(signature).decode()}, None)
    OciPusher(host).push_legacy_signatures(REPO, digest, [sig])
    return digest


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the PEM) as `|` blocks, as a person would write them."""


_Dumper.add_representer(
    str,
    lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None),
)


def add_rule(config: pathlib.Path, host: str, key: ec.EllipticCurvePrivateKey) -> str:
    """Put the demo's rule first in `verification.rules` (replacing an earlier demo rule), keeping a
    backup; returns the CRI containerd socket the configuration names."""
    text = config.read_text()
    doc: dict[str, Any] = yaml.safe_load(text) or {}
    verification = doc.setdefault("verification", {}) or {}
    doc["verification"] = verification
    pattern = f"{host}/demo/*"
    socket = str((doc.get("containerd") or {}).get("cri_socket") or "/run/containerd/containerd.sock")
    rule = {"image": pattern, "publicKey": {"certificate": public_pem(key).decode()}}
    before = verification.get("rules") or []
    if before and before[0] == rule:  # a second `make demo`: keep the file, and its backup of the first
        print(f"demo: {config} has the publicKey rule for {pattern} already")
        return socket
    verification["rules"] = [rule, *(r for r in before if r.get("image") != pattern)]
    backup = config.with_name(config.name + ".bak")
    if not backup.exists():  # the file as it was before the first demo
        backup.write_text(text)
    header = "# Development configuration; `make demo` added the rule for the demo images.\n"
    config.write_text(header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False))
    print(f"demo: added a publicKey rule for {pattern} to {config} (previous file: {config.name}.bak)")
    return socket


def reload_daemon(config: pathlib.Path) -> bool:
    """SIGHUP every imaged serving `config`; False if none runs."""
    r = subprocess.run(
        ["pgrep", "-f", "--", f"imaged.daemon.main --config {config}$"], capture_output=True, text=True
    )
    pids = [int(p) for p in r.stdout.split()]
    for pid in pids:
        os.kill(pid, signal.SIGHUP)
    return bool(pids)


def main(argv: list[str] | None = None) -> None:
    run = ROOT / ".run"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--registry", default="127.0.0.1:5000", help="loopback host:port (default %(default)s)")
    p.add_argument("--run-dir", type=pathlib.Path, default=run, help="state directory (default .run)")
    p.add_argument(
        "--config", type=pathlib.Path, default=None, help="daemon configuration to add the rule to"
    )
    args = p.parse_args(argv)
    config = (args.config or args.run_dir / "imaged.yaml").resolve()
    if not config.exists():
        sys.exit(f"demo: {config} does not exist: `make run` writes it (and starts the daemon) first")
    start_registry(args.registry, args.run_dir / "registry")
    key = signing_key(args.run_dir / "demo")
    digest = push_signed(args.registry, key)
    print(
        f"demo: pushed {args.registry}/{REPO}:{TAG} ({digest}), "
        f"signed with {args.run_dir / 'demo' / 'cosign.key'}"
    )
    push_test_image(Target(args.registry), UNSIGNED, TAG)
    print(f"demo: pushed {args.registry}/{UNSIGNED}:{TAG}, not signed")
    containerd = add_rule(config, args.registry, key)
    reloaded = reload_daemon(config)
    print(
        "demo: the daemon re-read its configuration" if reloaded else "demo: no daemon runs yet: `make run`"
    )
    sock = args.run_dir / "imaged.sock"
    print(
        f"""
next, with IMAGED_SOCKET={sock}:
  .venv/bin/imagectl pull {args.registry}/{REPO}:{TAG}
  ctr -a {containerd} -n k8s.io run --rm {args.registry}/{REPO}:{TAG} demo     # prints hello
  .venv/bin/imagectl verify {args.registry}/{REPO}:{TAG}        # verified:  yes
  .venv/bin/imagectl verify {args.registry}/{UNSIGNED}:{TAG}    # exit 2: … no signatures found …"""
    )


if __name__ == "__main__":
    main()
