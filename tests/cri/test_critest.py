"""critest (cri-tools v1.37.0, built by tools/peers.py): its image conformance specs against imaged's
CRI socket, with containerd's CRI (1.6 and 2.x) as the runtime endpoint.

critest's own test images are served offline under their own names (tests/support/critools.py):
containerd's CRI and imaged read one hosts.toml directory that names a loopback registry as the
server of gcr.io, registry.k8s.io and k8s.gcr.io. Focused: "Image Manager" (pkg/validate/image.go),
"Image Consistency", "Image Identifier Consistency" (pulls through imaged, then runs a container
of the returned id in a pod sandbox of containerd's CRI) and "Idempotence RemoveImage". Skipped,
and why: "public image with digest should be pulled and removed", whose reference
`gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2…` names the bytes of the
published image: no stand-in can have that digest (pull by digest is covered by the other specs'
repo digests and by tests/cri/test_pull_image.py).

Three runs per containerd: a `skip` rule for critest's registries (noMatch deny, so nothing else
passes), a `publicKey` rule with every stand-in signed, and a rule trusting another key, under which
critest's pull fails with imaged's reason (the run can fail, and it is imaged that answers).
"""

from __future__ import annotations

import pathlib
import random
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.conftest import CONTAINERD_VERSIONS, new_containerd
from tests.cri.conftest import cri_daemon
from tests.support import archives, critools, peers
from tests.support.containerd import PrivateContainerd
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher, PrivateSigstore

FOCUS = "Image Manager|Image Consistency|Image Identifier Consistency|Idempotence RemoveImage"
DIGEST_SPEC = "public image with digest should be pulled and removed"
SKIP = re.escape(DIGEST_SPEC)

EXPECTED = [
    "Image Manager public image with tag should be pulled and removed [Conformance]",
    "Image Manager public image should timeout if requested [Conformance]",
    "Image Manager public image without tag should be pulled and removed [Conformance]",
    "Image Manager image status should support all kinds of references [Conformance]",
    "Image Manager image status get image fields should not have Uid|Username empty [Conformance]",
    "Image Manager listImage should get exactly 3 image in the result list [Conformance]",
    "Image Manager listImage should get exactly 3 repoTags in the result image [Conformance]",
    "Image Manager removing image by one tag should remove all tags [Conformance]",
    "Image Manager removing image from one registry should remove all tags from other "
    "registries [Conformance]",
    "Image Consistency should not list or get image status immediately after removal [Conformance]",
    "Image Consistency should list and get image status immediately after pulling [Conformance]",
    "Image Consistency should not fail on simultaneous RemoveImage calls [Conformance]",
    "Image Identifier Consistency should return the same image identifier across all APIs [Conformance]",
    "Image Identifier Consistency should return the same image identifier when pulled from different "
    "registries [Conformance]",
    "Idempotence RemoveImage should not return an error if not found",
]
IDENTIFIER = [n for n in EXPECTED if n.startswith("Image Identifier Consistency")]
# containerd 1.6's CRI leaves ContainerStatus.image_id empty (a CRI field of Kubernetes 1.36):
# critest then skips the rest of these specs itself, after its PullImage image_ref == Image.id check.
SELF_SKIP_1_6 = "ContainerStatus.image_id is empty; runtime does not seem to implement CRI API image_id"

SANDBOX_IMAGE = "imaged.test/pause:critest"


@pytest.fixture(scope="module", autouse=True)
def _cri_tools() -> None:
    """Before anything is started: cri-tools is built (or the module is skipped, IMAGED_PEERS=none)."""
    peers.require("cri-tools")


@dataclass
class StandIns:
    served: critools.StandIns
    sigstore: PrivateSigstore
    key: Any  # signs every stand-in
    other_key: Any  # signs nothing


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIns]:
    ps = PrivateSigstore(seed=b"critest-stand-ins")
    key, other = ps.static_key("stand-ins"), ps.static_key("another")

    def sign(reg: Registry, path: str, repository: str, digest: str) -> None:
        sig = ps.sign_legacy(digest, repository, key, tlog=False)
        OciPusher(reg).push_legacy_signatures(path, digest, [sig])

    served = critools.serve_stand_ins(tmp_path_factory.mktemp("critest") / "hosts", sign=sign)
    yield StandIns(served, ps, key, other)
    served.close()


@pytest.fixture(scope="module", params=CONTAINERD_VERSIONS, ids=lambda v: f"containerd{v}")
def pod_containerd(request: pytest.FixtureRequest, stand_ins: StandIns) -> Iterator[PrivateContainerd]:
    """A containerd whose CRI reads the stand-ins' hosts.toml directory and runs pod sandboxes."""
    cd = new_containerd(request.param)
    bridge = f"icri{random.randrange(1 << 32):08x}"  # 12 characters: a Linux name has at most 15
    subnet = f"10.{random.randrange(200, 250)}.{random.randrange(256)}.0/24"
    critools.prepare_for_pods(cd, sandbox_image=SANDBOX_IMAGE, bridge=bridge, subnet=subnet)
    cd.config.write_text(
        cd.config.read_text() + critools.containerd_config_path(cd.major, stand_ins.served.hosts_dir)
    )
    try:
        cd.start()
        pause = archives.Image([archives.busybox_layer()], cmd=["/bin/busybox", "sleep", "3600"])
        cd.ctr(
            "images", "import", "-", namespace="k8s.io", input=archives.oci_archive([(SANDBOX_IMAGE, pause)])
        )
        yield cd
    finally:
        cd.destroy()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def critest_against_imaged(
    cd: PrivateContainerd,
    stand_ins: StandIns,
    rules: list[dict[str, object]],
    focus: str,
    workdir: pathlib.Path,
) -> tuple[subprocess.CompletedProcess[str], dict[str, critools.SpecResult], str]:
    """critest's `focus` against a new imaged with `rules` (noMatch deny) reading the stand-ins'
    hosts.toml directory; returns the process, the specs that ran or failed by name, imaged's log."""
    d, sock = cri_daemon(cd.socket, rules)
    d.config["registries"] = {"config_path": str(stand_ins.served.hosts_dir)}
    d.config["verification"]["noMatch"] = "deny"
    d.config_path.write_text(yaml.safe_dump(d.config))
    d.start()
    try:
        proc, results = critools.run_critest(cd.socket, sock, workdir, focus=focus, skip=SKIP, timeout=240)
    finally:
        d.stop()
    # Specs left out by focus or skip are reported "skipped" without a message.
    ran = {r.name: r for r in results if r.state != "skipped" or r.failure}
    return proc, ran, d.logs()


def hosts_rules(**rule: object) -> list[dict[str, object]]:
    return [{"image": f"{host}/*", **rule} for host in ("gcr.io", "registry.k8s.io", "k8s.gcr.io")]


def check_all_passed(
    cd: PrivateContainerd, proc: subprocess.CompletedProcess[str], ran: dict[str, critools.SpecResult]
) -> None:
    problems = {}
    for name in EXPECTED:
        r = ran.get(name)
        if name in IDENTIFIER and cd.major == 1 and r is not None and r.state == "skipped":
            if SELF_SKIP_1_6 not in r.failure:
                problems[name] = f"skipped: {r.failure}"
        elif r is None or r.state != "passed":
            problems[name] = f"{r.state}: {r.failure}" if r else "did not run"
    assert not problems, f"{problems}\n{proc.stdout[-6000:]}"
    assert sorted(ran) == sorted(EXPECTED), f"unexpected specs ran: {sorted(set(ran) - set(EXPECTED))}"
    assert not [n for n in ran if DIGEST_SPEC in n]


def test_critest_image_specs_pass_against_imaged(
    pod_containerd: PrivateContainerd, stand_ins: StandIns, tmp_path: pathlib.Path
) -> None:
    proc, ran, log = critest_against_imaged(
        pod_containerd, stand_ins, hosts_rules(skip=True), FOCUS, tmp_path
    )
    check_all_passed(pod_containerd, proc, ran)
    # Every reference critest pulls was pulled through imaged.
    pulled = set(re.findall(r"PullImage ref=(\S+) code=OK", log))
    assert pulled == set(stand_ins.served.digests), sorted(set(stand_ins.served.digests) ^ pulled)


def test_critest_image_specs_pass_under_a_verify_rule(
    pod_containerd: PrivateContainerd, stand_ins: StandIns, tmp_path: pathlib.Path
) -> None:
    pem = stand_ins.key.public_pem.decode()
    proc, ran, log = critest_against_imaged(
        pod_containerd, stand_ins, hosts_rules(publicKey={"certificate": pem}), FOCUS, tmp_path
    )
    check_all_passed(pod_containerd, proc, ran)
    assert "code=PERMISSION_DENIED" not in log


def test_critest_pull_is_refused_with_imageds_reason_under_an_unmet_rule(
    pod_containerd: PrivateContainerd, stand_ins: StandIns, tmp_path: pathlib.Path
) -> None:
    pem = stand_ins.other_key.public_pem.decode()
    focus = "Image Manager public image with tag should be pulled and removed"
    proc, ran, _ = critest_against_imaged(
        pod_containerd, stand_ins, hosts_rules(publicKey={"certificate": pem}), focus, tmp_path
    )
    assert proc.returncode != 0
    (result,) = ran.values()
    assert result.state == "failed", result
    assert "code = PermissionDenied desc = image verification failed: " in proc.stdout, proc.stdout[-4000:]
    digest = stand_ins.served.digests[f"{critools.CRI_TOOLS}/test-image-tag:test"]
    assert f"{critools.CRI_TOOLS}/test-image-tag@{digest}: " in proc.stdout
    assert "rule 0 (gcr.io/*)" in proc.stdout, proc.stdout[-4000:]
