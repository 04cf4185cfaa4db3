"""Issue 19.8: the read-only socket does not lend the node's registry credentials.

The attack: anyone allowed on the read-only socket (often mode 0666) asked Verify about images of
a private registry; the daemon used the credentials configured for it, so the caller learned
which private images exist, their digests (in refusal texts) and whether they are signed. Now
each socket has a `credentials` setting; the read-only socket's default is `request`: only the
credentials sent with the request."""

from __future__ import annotations

import grpc
import pytest

from imaged.pb.machine import image_pb2, image_pb2_grpc
from tests.policy.conftest import FAST, key_rule, refused
from tests.support import archives
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher

USER, PASSWORD = "node", "node-registry-pass-19"


@pytest.fixture(scope="module")
def private() -> Registry:
    with Registry(htpasswd={USER: PASSWORD}) as r:
        yield r  # type: ignore[misc]


def test_readonly_socket_uses_only_request_credentials(private, ps, key, start, tmp_path) -> None:  # type: ignore[no-untyped-def]
    signed = archives.push(private, "priv/app", "v1", archives.simple_image("private-signed"))
    OciPusher(private).push_legacy_signatures(
        "priv/app", signed, [ps.sign_legacy(signed, f"{private.host}/priv/app", key, tlog=False)]
    )
    unsigned = archives.push(private, "priv/unsigned", "v1", archives.simple_image("private-unsigned"))
    ro_path, lent_path = str(tmp_path / "ro.sock"), str(tmp_path / "lent.sock")
    registries = {**FAST, "hosts": {private.host: {"auth": {"username": USER, "password": PASSWORD}}}}
    d = start(
        {"rules": [key_rule(f"{private.host}/*", key)]},
        listen={"readonly": {"path": ro_path}},
        registries=registries,
    )

    def verify(stub, name, creds=None):  # type: ignore[no-untyped-def]
        req = image_pb2.ImageServiceVerifyRequest(image_ref=f"{private.host}/{name}:v1", credentials=creds)
        return stub.Verify(req, timeout=60)

    # The admin socket uses what is configured (and its verdict is now cached).
    assert verify(d.images, "priv/app").verified
    ro = image_pb2_grpc.ImageServiceStub(grpc.insecure_channel(f"unix:{ro_path}"))
    for name, digest in (("priv/app", signed), ("priv/unsigned", unsigned)):
        e = refused(lambda name=name: verify(ro, name))
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, (name, e.code(), e.details())
        assert digest not in (e.details() or ""), "a private image's digest was disclosed"
    creds = image_pb2.ImageServiceCredentials(host=private.host, username=USER, password=PASSWORD)
    resp = verify(ro, "priv/app", creds)
    assert resp.verified and resp.digested_image_ref.endswith(signed)
    d.stop()

    # A socket may be given the node's credentials on purpose.
    d = start(
        {"rules": [key_rule(f"{private.host}/*", key)]},
        listen={"readonly": {"path": lent_path, "credentials": "configured"}},
        registries=registries,
    )
    lent = image_pb2_grpc.ImageServiceStub(grpc.insecure_channel(f"unix:{lent_path}"))
    assert verify(lent, "priv/app").verified


def test_example_config_says_what_a_world_writable_socket_exposes() -> None:
    from tests.conftest import REPO

    text = (REPO / "config.example.yaml").read_text()
    assert 'mode: "0666"' not in text or "exposes" in text
    assert "credentials: request" in text


def test_request_only_transport_drops_configured_auth_certificates_and_headers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The pieces the read-only socket's view leaves out (unit: no network)."""
    from imaged.registry.auth import ANONYMOUS
    from imaged.registry.config import RegistriesConfig
    from imaged.registry.reference import parse
    from imaged.registry.transport import Pool, Transport

    certs = tmp_path / "certs.d" / "reg.example"
    certs.mkdir(parents=True)
    (tmp_path / "c.pem").write_text("x")
    (certs / "hosts.toml").write_text(
        'server = "https://reg.example"\nclient = ["../../c.pem"]\n'
        '[header]\nAuthorization = "Bearer node-secret"\n'
    )
    config = RegistriesConfig.model_validate(
        {
            "config_path": str(tmp_path / "certs.d"),
            "hosts": {"reg.example": {"auth": {"username": "u", "password": "p"}}},
        }
    )
    full = Transport(Pool(config, "t"))
    ro = full.request_credentials_only()
    ref = parse("reg.example/app:v1")
    [e_full] = full.endpoints(ref, "pull", "test")
    [e_ro] = ro.endpoints(ref, "pull", "test")
    assert e_full.client_certs and e_full.headers
    assert not e_ro.client_certs and not e_ro.headers
    assert full.credentials(e_full, ref.domain).username == "u"
    assert ro.credentials(e_ro, ref.domain) is ANONYMOUS
    sent = ro.with_credentials("reg.example", "caller", "pw")
    assert sent.credentials(e_ro, ref.domain).username == "caller"
    assert not sent.configured
