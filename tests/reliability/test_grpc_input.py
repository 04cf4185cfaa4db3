"""Bad input at the gRPC edge: random references, instances and credentials for Pull, Remove and
Verify, and Import streams in the wrong order or with oversized chunks. A bad request is the
client's problem (INVALID_ARGUMENT, NOT_FOUND, ...), the registry's (UNAVAILABLE, ...), never
the daemon's: no UNKNOWN, no INTERNAL, and the daemon serves on.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imaged.pb.common import common_pb2
from imaged.pb.machine import image_pb2
from tests.reliability.hygiene import inspect
from tests.reliability.strategies import any_refs, valid_refs
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import SYSTEM, DaemonProcess
from tests.support.registry import Registry, free_port
from tests.support.sigstore import StaticKey

FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
PROFILE = settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def auth_registry() -> Iterator[Registry]:
    with Registry(htpasswd={"fuzz": "fuzz-pw"}) as reg:
        yield reg


@pytest.fixture(scope="module")
def daemon(containerd: PrivateContainerd, auth_registry: Registry) -> Iterator[DaemonProcess]:
    key = StaticKey.ecdsa(label="fuzz").public_pem.decode()
    d = DaemonProcess(
        containerd.socket,
        {
            "registries": {
                "retries": {"attempts": 1, "base_delay": 0.01, "max_delay": 0.01},
                "timeouts": {"connect": 1, "read": 2},
            },
            "verification": {
                "rules": [
                    {"image": "127.0.0.1:*/*", "publicKey": {"certificate": key}},
                    {"image": "deny.example/*", "deny": True},
                    {"image": "skip.example/*", "skip": True},
                    {"image": "docker.io/library/a*", "publicKey": {"certificate": key}},
                ]
            },
        },
    )
    d.start()
    yield d
    d.stop()


def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() not in FORBIDDEN, f"{e.code().name}: {e.details()}"
        assert e.details(), "an error without a message"
        return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@st.composite
def refs_with_hosts(draw: st.DrawFn, hosts: list[str]) -> str:
    """References on hosts that answer (or refuse) at once: the real registry, a closed port."""
    ref = draw(valid_refs)
    path = ref.split("/", 1)[1] if "/" in ref and any(c in ref.split("/", 1)[0] for c in ".:") else ref
    return f"{draw(st.sampled_from(hosts))}/{path}"


instances = st.builds(
    common_pb2.ContainerdInstance,
    driver=st.sampled_from([0, 1, 2, 7]),
    namespace=st.sampled_from([0, 1, 2, 9]),
)


def test_random_references_never_internal(daemon: DaemonProcess, auth_registry: Registry) -> None:
    closed = f"127.0.0.1:{free_port()}"
    hosts = [auth_registry.host, closed, "deny.example", "skip.example"]
    seen: dict[str, set[str]] = {"Pull": set(), "Remove": set(), "Verify": set()}

    @PROFILE
    @given(st.one_of(any_refs, refs_with_hosts(hosts)), instances)
    @example("deny.example/a:b", SYSTEM)
    @example(f"{closed}/a/b:c", SYSTEM)
    @example("skip.example/a@sha256:" + "0" * 64, SYSTEM)
    def check(ref: str, inst: common_pb2.ContainerdInstance) -> None:
        images = daemon.images
        seen["Pull"].add(
            code_of(
                lambda: list(
                    images.Pull(image_pb2.ImageServicePullRequest(containerd=inst, image_ref=ref), timeout=30)
                )
            ).name
        )
        seen["Remove"].add(
            code_of(
                lambda: images.Remove(
                    image_pb2.ImageServiceRemoveRequest(containerd=inst, image_ref=ref), timeout=30
                )
            ).name
        )
        seen["Verify"].add(
            code_of(
                lambda: images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=ref), timeout=30)
            ).name
        )

    check()
    # The random input reached past validation (not everything refused up front).
    assert {"UNAVAILABLE", "PERMISSION_DENIED"} <= seen["Verify"] | seen["Pull"], seen
    assert "NOT_FOUND" in seen["Remove"], seen
    assert daemon.health() == "SERVING"
    assert inspect(daemon.config["containerd"]["system_socket"], "system", gc=False).leases == []


def test_random_credentials_never_internal(daemon: DaemonProcess, auth_registry: Registry) -> None:
    ref = f"{auth_registry.host}/fuzz/app:v1"

    @PROFILE
    @given(
        st.one_of(st.just(auth_registry.host), st.text(max_size=30)),
        st.text(max_size=60),
        st.text(max_size=200),
    )
    def check(host: str, user: str, password: str) -> None:
        creds = image_pb2.ImageServiceCredentials(host=host, username=user, password=password)
        code_of(
            lambda: daemon.images.Verify(
                image_pb2.ImageServiceVerifyRequest(image_ref=ref, credentials=creds), timeout=30
            )
        )

    check()
    assert daemon.health() == "SERVING"


def _import(daemon: DaemonProcess, messages: list[image_pb2.ImageServiceImportRequest]) -> grpc.StatusCode:
    return code_of(lambda: daemon.images.Import(iter(messages), timeout=60))


def chunk(data: bytes) -> image_pb2.ImageServiceImportRequest:
    return image_pb2.ImageServiceImportRequest(image_chunk=common_pb2.Data(bytes=data))


HEADER = image_pb2.ImageServiceImportRequest(containerd=SYSTEM)


def test_import_message_order(daemon: DaemonProcess) -> None:
    cases = {
        "empty stream": [],
        "chunk first": [chunk(b"x" * 10), HEADER],
        "header only": [HEADER],
        "header twice": [HEADER, HEADER],
        "header in the middle": [HEADER, chunk(b"\0" * 512), HEADER, chunk(b"\0" * 512)],
        "empty message": [image_pb2.ImageServiceImportRequest()],
        "empty chunks": [HEADER, chunk(b""), chunk(b"")],
        "bad instance": [
            image_pb2.ImageServiceImportRequest(containerd=common_pb2.ContainerdInstance(driver=9))
        ],
    }
    for what, messages in cases.items():
        code = _import(daemon, messages)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, what
    assert inspect(daemon.config["containerd"]["system_socket"], "system", gc=False).leases == []


def test_import_oversized_chunk_is_refused(daemon: DaemonProcess) -> None:
    code = _import(daemon, [HEADER, chunk(b"\0" * (17 << 20))])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A chunk at the limit is accepted as data (then refused as an archive, not as a message).
    code = _import(daemon, [HEADER, chunk(b"\0" * ((16 << 20) - 64))])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert daemon.health() == "SERVING"


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


archive_members = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "index.json",
                "oci-layout",
                "manifest.json",
                "blobs/sha256/" + "a" * 64,
                "repositories",
                "x/layer.tar",
            ]
        ),
        st.one_of(
            st.binary(max_size=64),
            st.sampled_from(
                [
                    b"{}",
                    b"[]",
                    b'{"manifests": 5}',
                    b'[{"Config": "x", "Layers": ["../../etc/passwd"]}]',
                    b'{"imageLayoutVersion": "1.0.0"}',
                    b'{"schemaVersion": 2, "manifests": [{"digest": "sha256:0"}]}',
                ]
            ),
        ),
    ),
    max_size=5,
)


def test_random_archives_never_internal(daemon: DaemonProcess) -> None:

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=2048), archive_members.map(_tar)), st.integers(1, 700))
    def check(data: bytes, size: int) -> None:
        code = _import(daemon, [HEADER, *(chunk(data[i : i + size]) for i in range(0, len(data), size))])
        assert code != grpc.StatusCode.OK

    check()
    assert inspect(daemon.config["containerd"]["system_socket"], "system", gc=False).leases == []
