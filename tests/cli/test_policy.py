"""Warn mode through the daemon (pull, run, label, metric) and the policy tools: imagectl policy
test (a candidate configuration through imaged.v1.PolicyService, checked against expectations;
and offline, against `cosign save` layouts of images signed and attested by the real cosign)
and imagectl policy explain (offline), against a real daemon, registry and containerd."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pathlib
import re
import shutil
import tarfile
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml

from imaged.pb.machine import image_pb2
from tests.cli.conftest import Ctl, run_imagectl
from tests.policy.layouts import signed_layout
from tests.pull.test_pull import pull, run
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.cosign import SLSA_PROVENANCE, Cosign
from tests.support.daemon import SYSTEM, DaemonProcess, run_imaged
from tests.support.registry import Registry, free_port
from tests.support.sigstore import OciPusher, PrivateSigstore


class Env:
    def __init__(self, reg: Registry, d: DaemonProcess, ps: PrivateSigstore, port: int) -> None:
        self.reg, self.d, self.ps, self.port = reg, d, ps, port
        self.ctl = Ctl(d.socket)
        self.key_pem = ps.static_key("policy").public_pem.decode()

    def metric(self, outcome: str) -> float:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10).read().decode()
        m = re.search(rf'^imaged_verifications_total\{{outcome="{outcome}"\}} (\S+)$', body, re.M)
        return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def env(containerd: PrivateContainerd) -> Iterator[Env]:
    reg = Registry()
    ps = PrivateSigstore(seed=b"cli-policy")
    key_pem = ps.static_key("policy").public_pem.decode()
    port = free_port()
    rules = [
        {"image": f"{reg.host}/warned/*", "mode": "warn", "publicKey": {"certificate": key_pem}},
        {"image": f"{reg.host}/enforced/*", "publicKey": {"certificate": key_pem}},
    ]
    d = DaemonProcess(
        containerd.socket, {"verification": {"rules": rules}, "metrics": {"listen": f"127.0.0.1:{port}"}}
    )
    d.start()
    try:
        yield Env(reg, d, ps, port)
    finally:
        d.stop()
        reg.close()


def test_unsigned_image_under_a_warn_rule_pulls_and_runs(env: Env, containerd: PrivateContainerd) -> None:
    before = env.metric("warned")
    digest = archives.push(env.reg, "warned/app", "v1", archives.simple_image("warned-runs"))
    name, _ = pull(env.d, f"{env.reg.host}/warned/app:v1", SYSTEM)
    assert name == f"{env.reg.host}/warned/app@{digest}"  # pinned to the digest that was evaluated
    listed = {r.name: r for r in env.d.images.List(image_pb2.ImageServiceListRequest(containerd=SYSTEM))}
    label = listed[f"{env.reg.host}/warned/app:v1"].labels["imaged.dev/verified"]
    assert label.startswith("allowed in warn mode, not verified: image verification failed: "), label
    assert "no signatures found" in label
    assert "warned-runs" in run(containerd, "system", f"{env.reg.host}/warned/app:v1")
    assert env.metric("warned") == before + 1
    resp = env.d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=f"{env.reg.host}/warned/app:v1"))
    assert resp.verified and resp.digested_image_ref == f"{env.reg.host}/warned/app@{digest}"
    assert (
        resp.message.startswith("image verification failed: ")
        and "; allowed in warn mode (rule 0" in resp.message
    )
    assert env.metric("warned") == before + 2
    out = env.ctl("verify", f"{env.reg.host}/warned/app:v1")
    assert out.rc == 0 and out.lines[0] == "verified:  yes, in warn mode: the checks failed"
    assert "WARNING" in env.d.logs() and "warn mode: allowing what rule 0" in env.d.logs()


def test_the_same_rule_in_enforce_refuses(env: Env, containerd: PrivateContainerd) -> None:
    before = env.metric("refused")
    archives.push(env.reg, "enforced/app", "v1", archives.simple_image("enforced-refused"))
    with pytest.raises(grpc.RpcError) as e:
        pull(env.d, f"{env.reg.host}/enforced/app:v1", SYSTEM)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no signatures found" in (e.value.details() or "")
    assert f"{env.reg.host}/enforced/app" not in containerd.ctr("images", "ls", namespace="system").stdout
    assert env.metric("refused") == before + 1


def candidate(env: Env, tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "candidate.yaml"
    rules: list[dict[str, Any]] = [
        {"image": f"{env.reg.host}/cand/signed*", "publicKey": {"certificate": env.key_pem}},
        {"image": f"{env.reg.host}/cand/denied", "deny": True},
        {"image": f"{env.reg.host}/cand/audit", "mode": "warn", "publicKey": {"certificate": env.key_pem}},
    ]
    path.write_text(yaml.safe_dump({"verification": {"rules": rules, "noMatch": "deny"}}))
    return path


def test_policy_test_compares_with_expectations(env: Env, tmp_path: pathlib.Path) -> None:
    push = OciPusher(env.reg)
    signed = push.push_minimal_image("cand/signed", "v1", label="cand-signed")
    sig = env.ps.sign_legacy(signed.digest, "cand/signed", env.ps.static_key("policy"), tlog=False)
    push.push_legacy_signatures("cand/signed", signed.digest, [sig])
    for repo in ("cand/signed-not", "cand/denied", "cand/audit"):
        push.push_minimal_image(repo, "v1", label=repo)
    h = env.reg.host
    right = {
        f"{h}/cand/signed:v1": "verified",
        f"{h}/cand/signed-not:v1": "denied",
        f"{h}/cand/denied:v1": "denied",
        f"{h}/cand/audit:v1": "warned",
        f"{h}/cand/elsewhere:v1": "denied",  # noMatch: deny
        f"{h}/cand/signed:missing": "error",
    }
    expect = tmp_path / "expect.yaml"
    expect.write_text(yaml.safe_dump(right))
    config = candidate(env, tmp_path)
    ok = env.ctl("policy", "test", "--config", str(config), "--expect", str(expect))
    assert ok.rc == 0, ok.out + ok.err
    assert f"{h}/cand/signed:v1: verified (as expected)" in ok.out
    assert f"  rule:    rule 0 ({h}/cand/signed*)" in ok.out
    assert ok.out.rstrip().endswith("6 as expected, 0 different")
    # One wrong expectation: exit 1, and the line says what was expected.
    wrong = {**right, f"{h}/cand/signed-not:v1": "verified"}
    expect.write_text(yaml.safe_dump(wrong))
    bad = env.ctl("policy", "test", "--config", str(config), "--expect", str(expect))
    assert bad.rc == 1, bad.out + bad.err
    assert f"{h}/cand/signed-not:v1: denied (EXPECTED verified)" in bad.out
    assert bad.out.rstrip().endswith("5 as expected, 1 different")
    # The daemon's own policy did not change: no rule of its matches these images.
    resp = env.d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=f"{h}/cand/denied:v1"))
    assert (resp.verified, resp.message) == (False, "no matched rule")
    # Without expectations: exit 1 when an image is denied; a bad candidate is a usage error.
    assert env.ctl("policy", "test", "--config", str(config), f"{h}/cand/signed:v1").rc == 0
    assert env.ctl("policy", "test", "--config", str(config), f"{h}/cand/denied:v1").rc == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text("verification:\n  rules:\n    - image: a.io/*\n")
    r = env.ctl("policy", "test", "--config", str(broken), f"{h}/cand/signed:v1")
    assert r.rc == 2 and "needs one of keyless or publicKey" in r.err


def test_policy_test_is_not_on_the_readonly_socket(
    containerd: PrivateContainerd, tmp_path: pathlib.Path
) -> None:
    ro = str(tmp_path / "ro.sock")
    d = DaemonProcess(containerd.socket, {"listen": {"readonly": {"path": ro}}})
    d.start()
    try:
        config = tmp_path / "c.yaml"
        config.write_text("verification:\n  noMatch: deny\n")
        r = run_imagectl("--socket", ro, "policy", "test", "--config", str(config), "a.io/app:v1")
        assert r.rc == 2 and "does not serve imaged.v1.PolicyService: it is the read-only socket" in r.err
        r = run_imagectl("--socket", d.socket, "policy", "test", "--config", str(config), "a.io/app:v1")
        assert r.rc == 1 and "a.io/app:v1: denied" in r.out
    finally:
        d.stop()


# -- imagectl policy test --offline: cosign save layouts, no daemon, no network ---------------------

SLSA_V02 = "https://slsa.dev/provenance/v0.2"  # what `cosign attest --type slsaprovenance` states
EMAIL, ISSUER = "release@example.com", "https://issuer.example"


class Saved:
    """Images signed and attested by the real cosign (and one keyless image by the private
    Sigstore), saved as OCI layouts under `root/<image>`; the registry is gone by then."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.root = tmp / "layouts"
        self.cosign = Cosign(tmp / "cosign")
        self.ps = PrivateSigstore(seed=b"cli-policy-offline")
        self.trusted_root = self.ps.write_trusted_root(tmp / "trusted_root.json")
        with Registry() as reg:
            self.host = reg.host
            for repo, how in (
                ("signed", "sign"),
                ("legacy", "legacy"),
                ("attested", "attest"),
                ("unsigned", ""),
                ("denied", "sign"),
            ):
                digest = archives.push(reg, f"off/{repo}", "v1", archives.simple_image(f"off-{repo}"))
                pinned = f"{reg.host}/off/{repo}@{digest}"
                if how == "attest":
                    self.cosign.attest(pinned)
                elif how:
                    self.cosign.sign(pinned, legacy=how == "legacy")
                self.cosign.save(self.image(repo), self.root / self.image(repo))
        # A keyless bundle of the private Sigstore, in a layout that lists its referrer.
        image = archives.simple_image("off-keyless")
        bundle = self.ps.sign_bundle(image.digest, self.ps.issue_leaf(EMAIL, ISSUER))
        data = signed_layout(self.image("keyless"), image, bundles=[bundle])
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            tf.extractall(self.root / self.image("keyless"), filter="data")

    def image(self, repo: str) -> str:
        return f"{self.host}/off/{repo}:v1"

    def config(self, tmp: pathlib.Path) -> pathlib.Path:
        pem = self.cosign.pub.read_text()
        rules: list[dict[str, Any]] = [
            {
                "image": f"{self.host}/off/attested",
                "publicKey": {"certificate": pem},
                "attestations": [
                    {
                        "predicateType": SLSA_V02,
                        "policy": f'predicate.builder.id == "{SLSA_PROVENANCE["builder"]["id"]}"',
                    }
                ],
            },
            {"image": f"{self.host}/off/denied", "deny": True},
            {"image": f"{self.host}/off/keyless", "keyless": {"issuer": ISSUER, "subject": EMAIL}},
            {"image": f"{self.host}/off/*", "publicKey": {"certificate": pem}},
        ]
        verification = {"rules": rules, "noMatch": "deny", "trustedRoot": str(self.trusted_root)}
        path = tmp / "candidate.yaml"
        path.write_text(yaml.safe_dump({"verification": verification}))
        return path

    def right(self) -> dict[str, str]:
        return {
            self.image("signed"): "verified",
            self.image("legacy"): "verified",
            self.image("attested"): "verified",
            self.image("keyless"): "verified",
            self.image("unsigned"): "denied",
            self.image("denied"): "denied",
            f"{self.host}/elsewhere/app:v1": "denied",  # noMatch: deny, no layout needed
            self.image("absent"): "error",  # no layout saved
        }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    return Saved(tmp_path_factory.mktemp("offline"))


def offline(config: pathlib.Path, root: pathlib.Path, *args: str) -> Any:
    """`imagectl policy test --offline`, with a socket that does not exist: no daemon is asked."""
    no_daemon = {"IMAGED_SOCKET": "/nonexistent/imaged.sock", "HTTPS_PROXY": "http://127.0.0.1:9"}
    return run_imagectl(
        "policy", "test", "--config", str(config), "--offline", str(root), *args, env=no_daemon
    )


def test_offline_policy_test_compares_with_expectations(saved: Saved, tmp_path: pathlib.Path) -> None:
    config = saved.config(tmp_path)
    expect = tmp_path / "expect.yaml"
    expect.write_text(yaml.safe_dump(saved.right()))
    ok = offline(config, saved.root, "--expect", str(expect))
    assert ok.rc == 0, ok.out + ok.err
    assert ok.out.rstrip().endswith("8 as expected, 0 different"), ok.out
    assert f"{saved.image('signed')}: verified (as expected)" in ok.out
    assert "verified via bundle referrer with digest" in ok.out  # found among the layout's blobs
    assert "verified via legacy signature (signed by ECDSA" in ok.out
    assert f"attestation {SLSA_V02} by ECDSA" in ok.out  # an attestation alone, under its rule
    assert f"{EMAIL} (issuer {ISSUER})" in ok.out  # keyless, against the configured trustedRoot
    assert f"no OCI layout for {saved.image('absent')}" in ok.out
    # One wrong expectation: exit 1, and the line says what was expected.
    expect.write_text(yaml.safe_dump({**saved.right(), saved.image("unsigned"): "verified"}))
    bad = offline(config, saved.root, "--expect", str(expect))
    assert bad.rc == 1, bad.out + bad.err
    assert f"{saved.image('unsigned')}: denied (EXPECTED verified)" in bad.out
    assert bad.out.rstrip().endswith("7 as expected, 1 different")
    # Without expectations: exit 1 when an image is denied; one layout given as DIR itself.
    layout = saved.root / saved.image("signed")
    assert offline(config, layout, saved.image("signed")).rc == 0
    assert offline(config, saved.root, saved.image("unsigned")).rc == 1
    several = offline(config, layout, saved.image("signed"), saved.image("legacy"))
    assert several.rc == 2 and "stands for one image" in several.err
    # A digest reference must be the layout's image.
    other = f"{saved.host}/off/signed@sha256:{'ab' * 32}"
    r = offline(config, layout, other)
    assert r.rc == 1 and f"{other}: error" in r.out and "holds the image sha256:" in r.out


def _copy(saved: Saved, repo: str, root: pathlib.Path) -> pathlib.Path:
    dest = root / saved.image(repo)
    shutil.copytree(saved.root / saved.image(repo), dest)
    return dest


def _blob(layout: pathlib.Path, digest: str) -> pathlib.Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def test_offline_an_altered_signature_in_the_layout_is_refused(saved: Saved, tmp_path: pathlib.Path) -> None:
    config = saved.config(tmp_path)
    root = tmp_path / "altered"
    # The legacy .sig manifest with one signature byte changed, written back as a consistent
    # layout (new blob, index.json pointing at it): the signature does not verify.
    legacy = _copy(saved, "legacy", root)
    index = json.loads((legacy / "index.json").read_text())
    (entry,) = [m for m in index["manifests"] if m["annotations"]["kind"] == "dev.cosignproject.cosign/sigs"]
    manifest = json.loads(_blob(legacy, entry["digest"]).read_bytes())
    annotations = manifest["layers"][0]["annotations"]
    sig = bytearray(base64.b64decode(annotations["dev.cosignproject.cosign/signature"]))
    sig[-1] ^= 0x01
    annotations["dev.cosignproject.cosign/signature"] = base64.b64encode(bytes(sig)).decode()
    body = json.dumps(manifest).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    _blob(legacy, digest).write_bytes(body)
    entry.update(digest=digest, size=len(body))
    (legacy / "index.json").write_text(json.dumps(index))
    # The bundle referrer's bundle changed in place: its blob no longer matches its digest.
    signed = _copy(saved, "signed", root)
    bundles = [
        p
        for p in (signed / "blobs" / "sha256").iterdir()
        if p.read_bytes().startswith(b'{"mediaType":"application/vnd.dev.sigstore.bundle')
    ]
    assert len(bundles) == 1, "cosign save kept the bundle referrer among the blobs"
    bundles[0].write_bytes(bundles[0].read_bytes().replace(b'"sig":"M', b'"sig":"N', 1))
    expect = tmp_path / "expect.yaml"
    expect.write_text(yaml.safe_dump({saved.image("legacy"): "verified", saved.image("signed"): "verified"}))
    r = offline(config, root, "--expect", str(expect))
    assert r.rc == 1, r.out + r.err
    assert f"{saved.image('legacy')}: denied (EXPECTED verified)" in r.out
    assert "signature does not verify with the rule's ECDSA" in r.out
    assert f"{saved.image('signed')}: error (EXPECTED verified)" in r.out
    assert "does not match its digest (altered)" in r.out
    assert r.out.rstrip().endswith("0 as expected, 2 different")


def test_policy_explain_reads_the_file(tmp_path: pathlib.Path) -> None:
    pem = PrivateSigstore(seed=b"explain").static_key().public_pem.decode()
    config = tmp_path / "config.yaml"
    rules = [
        {"image": "docker.io/library/*", "skip": True},
        {
            "image": "ghcr.io/org/*",
            "mode": "warn",
            "threshold": 2,
            "keyless": [
                {
                    "name": "release",
                    "issuer": "https://token.actions.githubusercontent.com",
                    "subjectRegex": "^https://github\\.com/org/",
                    "claims": {"sourceRepositoryURI": "https://github.com/org/app"},
                },
            ],
            "publicKey": [{"name": "key-2026", "certificate": pem}],
            "attestations": [
                {
                    "predicateType": "https://slsa.dev/provenance/v1",
                    "policy": "predicate.runDetails.builder.id != ''",
                }
            ],
        },
    ]
    config.write_text(yaml.safe_dump({"verification": {"rules": rules}}))
    r = run_imagectl("policy", "explain", "--config", str(config), "ghcr.io/org/app:v1", "busybox")
    assert r.rc == 0, r.err
    out = r.out
    assert "rule:       rules[1] 'ghcr.io/org/*' matches; the first match decides" in out
    assert "not matched before it: rules[0] 'docker.io/library/*'" in out
    assert "mode:       warn (the rule's)" in out
    assert "action:     verify: 2 authorities, 2 distinct ones, each by its own signature" in out
    assert "sourceRepositoryURI = 'https://github.com/org/app'" in out
    assert "key-2026 (publicKey[0]): ECDSA secp256r1 key sha256:" in out
    assert "https://slsa.dev/provenance/v1 where predicate.runDetails.builder.id != ''" in out
    assert "a satisfied one also counts as its signer's signature" in out
    assert "allowed with a warning (warn mode)" in out
    assert "repository: docker.io/library/busybox" in out and "action:     skip" in out
    r = run_imagectl("policy", "explain", "--config", str(tmp_path / "nope.yaml"), "busybox")
    assert r.rc == 2 and "does not exist" in r.err


def test_check_config_prints_warnings_and_strict_fails(tmp_path: pathlib.Path) -> None:
    import subprocess

    config = tmp_path / "config.yaml"
    rules = [
        {"image": "ghcr.io/*", "keyless": {"issuer": "https://i", "subjectRegex": "@example\\.com$"}},
        {"image": "ghcr.io/org/*", "deny": True},
        {"image": "quay.io/*", "mode": "warn", "keyless": {"issuer": "https://i", "subjectRegex": ".*"}},
        {
            "image": "docker.io/*",
            "keyless": {
                "issuer": "https://i",
                "subject": "https://github.com/o/w/.github/workflows/r.yml@refs/heads/main",
            },
        },
    ]
    config.write_text(yaml.safe_dump({"verification": {"rules": rules}}))

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        return run_imaged("--check-config", str(config), *extra)

    r = check()
    assert r.returncode == 0, r.stderr
    for part in (
        "keyless.subjectRegex '@example\\\\.com$' is not anchored",
        "rules[1] ('ghcr.io/org/*') is never used: rules[0] ('ghcr.io/*')",
        "keyless.subjectRegex '.*' matches any value; it constrains nothing",
        "rules[2] ('quay.io/*') is in warn mode",
        "names a GitHub workflow without a sourceRepositoryURI",
        "noMatch is allow",
    ):
        assert part in r.stdout, (part, r.stdout)
    assert r.stdout.rstrip().endswith("is valid (6 warnings)")
    r = check("--strict")
    assert r.returncode == 1 and "--strict" in r.stderr
