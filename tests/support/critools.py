"""cri-tools' programs as clients of a CRI image endpoint: `crictl`, and `critest`'s image tests offline.

critest pulls published images (`gcr.io/k8s-staging-cri-tools/...`, `registry.k8s.io/pause:3.9`,
`k8s.gcr.io/pause:3.9`; pkg/validate/consts.go of cri-tools v1.37.0) and this machine has no
internet. `serve_stand_ins` serves those exact references from loopback `docker-registry`s, one per
registry host, each named as that host's `server` in a containerd hosts.toml directory: containerd's
CRI (`registry.config_path`) and imaged (`registries.config_path`) both read it, so the names stay
critest's own (its checks compare repo tags with them) and nothing is asked of the real hosts.

The stand-ins are busybox-based, as the published ones are (`FROM busybox`), built the way
cri-tools' images/build script builds them: an index over linux/amd64, arm/v7, arm64/v8, ppc64le and
s390x (amd64 runnable here, the others small non-runnable images for platform selection), one
image per tag of `test-image-tag` (`test`, `all`), one image under the three tags of
`test-image-tags`, and `USER` 1002, www-data, 1003:1004 and www-data:1004 in the
`test-image-user-*` images. `test-image-digest@sha256:9700f9a2…` names its published bytes and
cannot have a stand-in.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import pathlib
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support import archives, peers
from tests.support.containerd import PrivateContainerd
from tests.support.registry import Registry

CRI_TOOLS = "gcr.io/k8s-staging-cri-tools"
# (architecture, variant) of cri-tools' images/build ARCHITECTURES; amd64 is the runnable one.
CNI_PLUGINS = pathlib.Path("/usr/lib/cni")  # Debian's containernetworking-plugins
ARCHITECTURES = (("amd64", ""), ("arm", "v7"), ("arm64", "v8"), ("ppc64le", ""), ("s390x", ""))


@dataclass(frozen=True)
class StandIn:
    repository: str  # "gcr.io/k8s-staging-cri-tools/test-image-tag"
    tags: tuple[str, ...]
    marker: str  # what makes the image unique (the build's TEST argument)
    user: str = ""

    @property
    def host(self) -> str:
        return self.repository.split("/", 1)[0]

    @property
    def path(self) -> str:
        return self.repository.split("/", 1)[1]


STAND_INS: tuple[StandIn, ...] = (
    StandIn(f"{CRI_TOOLS}/test-image-tag", ("test",), "test"),
    StandIn(f"{CRI_TOOLS}/test-image-tag", ("all",), "all"),
    StandIn(f"{CRI_TOOLS}/test-image-latest", ("latest",), "test-image-latest"),
    StandIn(f"{CRI_TOOLS}/test-image-1", ("latest",), "test-image-1"),
    StandIn(f"{CRI_TOOLS}/test-image-2", ("latest",), "test-image-2"),
    StandIn(f"{CRI_TOOLS}/test-image-3", ("latest",), "test-image-3"),
    StandIn(f"{CRI_TOOLS}/test-image-tags", ("1", "2", "3"), "same-image"),
    StandIn(f"{CRI_TOOLS}/test-image-user-uid", ("latest",), "user", "1002"),
    StandIn(f"{CRI_TOOLS}/test-image-user-username", ("latest",), "user", "www-data"),
    StandIn(f"{CRI_TOOLS}/test-image-user-uid-group", ("latest",), "user", "1003:1004"),
    StandIn(f"{CRI_TOOLS}/test-image-user-username-group", ("latest",), "user", "www-data:1004"),
    # The same image from two registries (the "same image, different registries" specs).
    StandIn("registry.k8s.io/pause", ("3.9",), "pause"),
    StandIn("k8s.gcr.io/pause", ("3.9",), "pause"),
)


@functools.cache
def _busybox() -> archives.Layer:
    return archives.busybox_layer()


def stand_in_index(s: StandIn) -> archives.Index:
    images = []
    for arch, variant in ARCHITECTURES:
        if arch == "amd64":
            marker = archives.layer({"etc/cri-test": s.marker.encode()})
            images.append(archives.Image([_busybox(), marker], cmd=["sh"], user=s.user))
        else:
            fake = archives.layer({"fake.txt": f"{s.marker} for linux/{arch}: not runnable here\n".encode()})
            images.append(archives.Image([fake], cmd=["sh"], architecture=arch, variant=variant, user=s.user))
    return archives.Index(images)


@dataclass
class StandIns:
    """The loopback registries and the hosts.toml directory that names them."""

    registries: dict[str, Registry]  # registry host ("gcr.io") -> its stand-in
    hosts_dir: pathlib.Path
    digests: dict[str, str] = field(default_factory=dict)  # "repository:tag" -> index digest

    def close(self) -> None:
        for reg in self.registries.values():
            reg.close()


# sign(registry, path in that registry, the reference's repository, index digest)
Sign = Callable[[Registry, str, str, str], None]


def serve_stand_ins(
    dir: pathlib.Path, stand_ins: tuple[StandIn, ...] = STAND_INS, *, sign: Sign | None = None
) -> StandIns:
    """Push every stand-in to a loopback registry of its host, optionally signed; write `dir`
    as a hosts.toml directory whose `server` for each host is that registry (plain HTTP)."""
    out = StandIns({}, dir)
    try:
        for s in stand_ins:
            reg = out.registries.get(s.host)
            if reg is None:
                reg = out.registries[s.host] = Registry()
                (dir / s.host).mkdir(parents=True, exist_ok=True)
                (dir / s.host / "hosts.toml").write_text(
                    f'server = "{reg.url}"\n[host."{reg.url}"]\n  capabilities = ["pull", "resolve"]\n'
                )
            digest = archives.push_index(reg, s.path, list(s.tags), stand_in_index(s))
            if sign is not None:
                sign(reg, s.path, s.repository, digest)
            out.digests.update({f"{s.repository}:{t}": digest for t in s.tags})
    except BaseException:
        out.close()
        raise
    return out


def containerd_config_path(major: int, hosts_dir: pathlib.Path) -> str:
    """The CRI config naming `hosts_dir` (config version 2 for 1.6, 3 for 2.x)."""
    section = (
        "[plugins.'io.containerd.cri.v1.images'.registry]"
        if major == 2
        else '[plugins."io.containerd.grpc.v1.cri".registry]'
    )
    return f'\n{section}\n  config_path = "{hosts_dir}"\n'


def prepare_for_pods(cd: PrivateContainerd, *, sandbox_image: str, bridge: str, subnet: str) -> None:
    """Before `cd.start()`: pod sandboxes as critest makes them (pod network, no host network).

    The sandbox image is `sandbox_image` (the caller imports it; nothing pulls it), OOM score
    adjustments are restricted (the machine may lack CAP_SYS_RESOURCE), and the CNI network is
    a `bridge` named `bridge` with host-local addresses from `subnet`, no gateway and no
    masquerading (nothing of the host's routing or iptables changes), Debian's plugins from
    /usr/lib/cni. The caller deletes the bridge (`ip link del`) after containerd is gone."""
    text = cd.config.read_text()
    anchor = "disable_apparmor = true"
    assert anchor in text, "the test containerd's CRI section changed"
    extra = "\n  restrict_oom_score_adj = true"
    if cd.major == 2:
        text += f"\n[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = \"{sandbox_image}\"\n"
    else:
        extra += f'\n  sandbox_image = "{sandbox_image}"'
    cd.config.write_text(text.replace(anchor, anchor + extra, 1))
    (cd.dir / "cni-bin").symlink_to(CNI_PLUGINS)
    (cd.dir / "cni-conf").mkdir(exist_ok=True)
    network = {
        "cniVersion": "1.0.0",
        "name": "imaged-critest",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": False,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "dataDir": str(cd.dir / "cni-ipam"),
                },
            }
        ],
    }
    (cd.dir / "cni-conf" / "10-imaged-critest.conflist").write_text(json.dumps(network))


# -- crictl -----------------------------------------------------------------------------------------


@functools.cache
def _empty_config() -> str:
    fd, path = tempfile.mkstemp(prefix="crictl-", suffix=".yaml", dir="/tmp")
    os.close(fd)
    atexit.register(os.unlink, path)
    return path


def crictl(
    runtime_socket: str, image_socket: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`crictl --runtime-endpoint unix://<runtime> --image-endpoint unix://<image> ARGS` (the
    machine's /etc/crictl.yaml is not read: `--config` names an empty file)."""
    cmd = [
        peers.program("cri-tools", "crictl"),
        "--config",
        _empty_config(),
        "--runtime-endpoint",
        f"unix://{runtime_socket}",
        "--image-endpoint",
        f"unix://{image_socket}",
        "--timeout",
        "60s",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# -- critest ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecResult:
    name: str  # "Image Manager public image with tag should be pulled and removed [Conformance]"
    state: str  # passed, failed, skipped, pending, panicked, ...
    failure: str


def run_critest(
    runtime_socket: str,
    image_socket: str,
    workdir: pathlib.Path,
    *,
    focus: str,
    skip: str | None = None,
    timeout: float = 600,
) -> tuple[subprocess.CompletedProcess[str], list[SpecResult]]:
    """Run critest's specs matching `focus` (and not `skip`); return the process and every spec's
    result from Ginkgo's JSON report (specs left out by focus or skip are reported `skipped`)."""
    report = workdir / "critest-report.json"
    report.unlink(missing_ok=True)
    cmd = [
        peers.program("cri-tools", "critest"),
        "--config",
        _empty_config(),
        f"--runtime-endpoint=unix://{runtime_socket}",
        f"--image-endpoint=unix://{image_socket}",
        f"--ginkgo.focus={focus}",
        *([f"--ginkgo.skip={skip}"] if skip else []),
        f"--ginkgo.json-report={report}",
        "--ginkgo.no-color",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    if not report.exists():
        raise AssertionError(f"critest wrote no report (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc, parse_report(json.loads(report.read_text()))


def parse_report(doc: list[dict[str, Any]]) -> list[SpecResult]:
    out = []
    for suite in doc:
        for spec in suite.get("SpecReports") or []:
            if spec.get("LeafNodeType") != "It":
                if spec.get("State") not in ("passed", "skipped"):  # a failed BeforeSuite, ...
                    out.append(SpecResult(spec.get("LeafNodeType", "?"), spec["State"], _failure(spec)))
                continue
            texts = [t for t in spec.get("ContainerHierarchyTexts") or [] if t != "[k8s.io]"]
            texts = [t.removeprefix("[k8s.io] ") for t in texts]
            name = " ".join([*texts, spec.get("LeafNodeText", "")])
            out.append(SpecResult(name, spec.get("State", "?"), _failure(spec)))
    return out


def _failure(spec: dict[str, Any]) -> str:
    f = spec.get("Failure") or {}
    where = f.get("Location")
    return str(f.get("Message", "")) + (f" ({where['FileName']}:{where['LineNumber']})" if where else "")
