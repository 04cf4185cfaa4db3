"""RegistryClient against a real docker-registry 2.8: resolve, manifests, blobs, auth, TLS, mirrors."""

from __future__ import annotations

import hashlib
import pathlib
import urllib.parse

import pytest
from aiohttp import web
from multidict import CIMultiDict

from imaged.errors import DataLoss, FailedPrecondition, NotFound, Unauthenticated, Unavailable
from imaged.oci import mediatypes as mt
from imaged.oci.manifest import parse_index, parse_manifest
from imaged.registry.client import MAX_REFERRERS, RegistryClient
from imaged.registry.reference import parse
from imaged.registry.token import _oauth_error
from tests.registry.conftest import PASSWORD, USER, Seeded, make_config
from tests.reliability.hostile import HostileRegistry, compact
from tests.support.images import push_test_image
from tests.support.registry import Registry, free_port


async def test_resolve_tag_oci(seeded: Seeded) -> None:
    async with RegistryClient(make_config()) as c:
        desc = await c.resolve(parse(f"{seeded.host}/test/app:v1"))
        body, media_type, digest = await c.get_manifest(parse(f"{seeded.host}/test/app:v1"), "v1")
    assert desc.digest == seeded.oci == digest
    assert desc.media_type == mt.OCI_MANIFEST == media_type
    assert desc.size == len(body)
    assert "sha256:" + hashlib.sha256(body).hexdigest() == seeded.oci


async def test_resolve_docker_schema2_and_by_digest(seeded: Seeded) -> None:
    async with RegistryClient(make_config()) as c:
        by_tag = await c.resolve(parse(f"{seeded.host}/test/docker:v1"))
        by_digest = await c.resolve(parse(f"{seeded.host}/test/docker@{seeded.docker}"))
    assert by_tag.media_type == mt.DOCKER_MANIFEST
    assert by_tag.digest == seeded.docker
    assert by_digest == by_tag


async def test_resolve_index_and_fetch_children(seeded: Seeded) -> None:
    ref = parse(f"{seeded.host}/test/multi:v1")
    async with RegistryClient(make_config()) as c:
        desc = await c.resolve(ref)
        assert desc.media_type == mt.OCI_INDEX
        assert desc.digest == seeded.multi.index_digest
        body, _, digest = await c.get_manifest(ref, desc.digest)
        index = parse_index(body)
        assert {str(m.platform) for m in index.manifests} == {"linux/amd64", "linux/arm64/v8"}
        for m in index.manifests:
            child, media_type, child_digest = await c.get_manifest(ref, m.digest)
            assert child_digest == m.digest and media_type == mt.OCI_MANIFEST and len(child) == m.size
    assert digest == seeded.multi.index_digest


async def test_fetch_blob_full_and_resumed(seeded: Seeded) -> None:
    ref = parse(f"{seeded.host}/test/app:v1")
    async with RegistryClient(make_config()) as c:
        body, _, _ = await c.get_manifest(ref, seeded.oci)
        layer = max(parse_manifest(body).layers, key=lambda d: d.size)
        full = b"".join([chunk async for chunk in c.fetch_blob(ref, layer)])
        assert len(full) == layer.size
        assert "sha256:" + hashlib.sha256(full).hexdigest() == layer.digest
        offset = layer.size // 3
        before = seeded.registry.blob_get_count(layer.digest)
        tail = b"".join([chunk async for chunk in c.fetch_blob(ref, layer, offset=offset)])
        assert tail == full[offset:]
        assert seeded.registry.blob_get_count(layer.digest) == before + 1
        assert [chunk async for chunk in c.fetch_blob(ref, layer, offset=layer.size)] == []


async def test_get_blob_config_verified(seeded: Seeded) -> None:
    ref = parse(f"{seeded.host}/test/app:v1")
    async with RegistryClient(make_config()) as c:
        body, _, _ = await c.get_manifest(ref, seeded.oci)
        config = parse_manifest(body).config
        data = await c.get_blob(ref, config.digest, max_size=1 << 20)
    assert len(data) == config.size
    assert b'"/bin/echo"' in data


async def test_not_found_messages(seeded: Seeded) -> None:
    async with RegistryClient(make_config()) as c:
        with pytest.raises(NotFound) as e1:
            await c.resolve(parse(f"{seeded.host}/test/app:nope"))
        assert f"{seeded.host}/test/app:nope" in e1.value.message and f"on {seeded.host}" in e1.value.message
        with pytest.raises(NotFound) as e2:
            await c.resolve(parse(f"{seeded.host}/no/such/repo:v1"))
        assert "no/such/repo" in e2.value.message
        with pytest.raises(NotFound):
            await c.get_manifest(parse(f"{seeded.host}/test/app:v1"), "sha256:" + "0" * 64)
        with pytest.raises(NotFound):
            await c.get_blob(parse(f"{seeded.host}/test/app:v1"), "sha256:" + "1" * 64, max_size=100)


async def test_get_manifest_by_digest_falls_back_to_tag(seeded: Seeded) -> None:
    """A digest unknown to the registry is fetched by the fallback tag and still verified."""
    ref = parse(f"{seeded.host}/test/docker:v1")
    async with RegistryClient(make_config()) as c:
        # seeded.oci lives in test/app: unknown by digest in test/docker.
        with pytest.raises(NotFound):
            await c.get_manifest(ref, seeded.oci)
        # Known by digest: no fallback needed.
        body, _, digest = await c.get_manifest(ref, seeded.docker, fallback_tag="v1")
        assert digest == seeded.docker
        assert hashlib.sha256(body).hexdigest() == seeded.docker.removeprefix("sha256:")
        # Unknown digest, and the fallback tag serves other bytes: DataLoss, never the wrong manifest.
        with pytest.raises(DataLoss) as e:
            await c.get_manifest(ref, seeded.oci, fallback_tag="v1")
        assert seeded.oci in e.value.message


async def test_referrers_absent_and_tags(seeded: Seeded) -> None:
    """docker-registry 2.8 has no referrers API: None, not an error."""
    ref = parse(f"{seeded.host}/test/app:v1")
    async with RegistryClient(make_config()) as c:
        assert await c.referrers(ref, seeded.oci) is None
        assert await c.list_tags(ref) == ["v1"]


async def test_basic_auth(basic_registry: tuple[Registry, str]) -> None:
    reg, digest = basic_registry
    ref = parse(f"{reg.host}/private/app:v1")
    good = make_config(hosts={reg.host: {"auth": {"username": USER, "password": PASSWORD}}})
    async with RegistryClient(good) as c:
        assert (await c.resolve(ref)).digest == digest
    bad = make_config(hosts={reg.host: {"auth": {"username": USER, "password": "wrong-password-123"}}})
    async with RegistryClient(bad) as c:
        with pytest.raises(Unauthenticated) as e:
            await c.resolve(ref)
    assert "wrong-password-123" not in e.value.message
    assert reg.host in e.value.message and "private/app" in e.value.message
    async with RegistryClient(make_config()) as c:
        with pytest.raises(Unauthenticated) as e:
            await c.resolve(ref)
        assert "no credentials" in e.value.message
        # A view with credentials works; the parent is unchanged.
        view = c.with_credentials(reg.host, USER, PASSWORD)
        assert (await view.resolve(ref)).digest == digest
        with pytest.raises(Unauthenticated):
            await c.resolve(ref)


async def test_token_auth_and_cache(token_registry: tuple[Registry, str]) -> None:
    reg, digest = token_registry
    assert reg.token_server is not None
    ref = parse(f"{reg.host}/private/app:v1")
    cfg = make_config(hosts={reg.host: {"auth": {"username": USER, "password": PASSWORD}}})
    before = len(reg.token_server.requests)
    async with RegistryClient(cfg) as c:
        assert (await c.resolve(ref)).digest == digest
        body, _, _ = await c.get_manifest(ref, digest)
        layer = parse_manifest(body).layers[0]
        data = b"".join([chunk async for chunk in c.fetch_blob(ref, layer)])
        assert hashlib.sha256(data).hexdigest() == layer.digest.removeprefix("sha256:")
    # One token for repository:private/app:pull served every request.
    assert reg.token_server.requests[before:] == [("repository:private/app:pull", USER)]

    bad = make_config(hosts={reg.host: {"auth": {"username": USER, "password": "not-the-password"}}})
    async with RegistryClient(bad) as c:
        with pytest.raises(Unauthenticated) as e:
            await c.resolve(ref)
    assert "not-the-password" not in e.value.message and reg.host in e.value.message
    async with RegistryClient(make_config()) as c:
        with pytest.raises(Unauthenticated):
            await c.resolve(ref)  # anonymous token grants nothing
        view = c.with_credentials(reg.host, USER, PASSWORD)
        assert (await view.resolve(ref)).digest == digest


async def test_tls_private_ca(tls_registry: tuple[Registry, str]) -> None:
    reg, digest = tls_registry
    ref = parse(f"{reg.host}/secure/app:v1")
    async with RegistryClient(make_config(hosts={reg.host: {"tls": {"ca_file": reg.ca_pem_path}}})) as c:
        assert (await c.resolve(ref)).digest == digest
    # HTTPS requested but the CA is unknown: a clear failure, no silent downgrade.
    async with RegistryClient(make_config(hosts={reg.host: {"plain_http": False}})) as c:
        with pytest.raises(Unavailable) as e:
            await c.resolve(ref)
    assert "certificate" in e.value.message and reg.host in e.value.message
    skip = make_config(hosts={reg.host: {"tls": {"insecure_skip_verify": True}}})
    async with RegistryClient(skip) as c:
        assert (await c.resolve(ref)).digest == digest
    # Loopback defaults to plain HTTP (as containerd): talking HTTP to a TLS port fails.
    async with RegistryClient(make_config()) as c:
        with pytest.raises(Unavailable):
            await c.resolve(ref)


async def test_token_server_under_the_registrys_private_ca() -> None:
    # As Harbor serves it: the realm is HTTPS under the registry's own private CA, so the token
    # request must use the host's TLS settings (it once used only the system's CAs and failed).
    with Registry(tls=True, token_auth=True, htpasswd={USER: PASSWORD}) as reg:
        assert reg.token_server is not None and reg.token_server.realm.startswith("https://")
        digest = push_test_image(reg, "private/app", "v1")
        ref = parse(f"{reg.host}/private/app:v1")
        host = {"tls": {"ca_file": reg.ca_pem_path}, "auth": {"username": USER, "password": PASSWORD}}
        async with RegistryClient(make_config(hosts={reg.host: host})) as c:
            assert (await c.resolve(ref)).digest == digest
        assert reg.token_server.requests[-1] == ("repository:private/app:pull", USER)


async def test_credentials_do_not_go_to_a_plain_http_realm_of_an_https_registry() -> None:
    # An HTTPS registry whose token realm is plain HTTP would have the password cross the network
    # in the clear (containerd sends it). It goes only where plain HTTP is the host's setting (or
    # its default: loopback), as it would for a registry on that host.
    with Registry(tls=True, token_auth=True, token_tls=False, htpasswd={USER: PASSWORD}) as reg:
        assert reg.token_server is not None and reg.token_server.realm.startswith("http://")
        realm_host = urllib.parse.urlsplit(reg.token_server.realm).netloc
        digest = push_test_image(reg, "private/app", "v1")
        ref = parse(f"{reg.host}/private/app:v1")
        tls = {"ca_file": reg.ca_pem_path}
        auth = {"username": USER, "password": PASSWORD}
        https_only = {realm_host: {"plain_http": False}}
        before = len(reg.token_server.requests)
        refused = make_config(hosts={reg.host: {"tls": tls, "auth": auth}, **https_only})
        async with RegistryClient(refused) as c:
            with pytest.raises(FailedPrecondition) as err:
                await c.resolve(ref)
        message = err.value.message
        assert f"token server {realm_host}" in message and "plain HTTP" in message
        assert f"registries.hosts.{realm_host}.plain_http" in message and PASSWORD not in message
        assert len(reg.token_server.requests) == before  # nothing was sent
        # Without credentials there is nothing to protect: the anonymous token is asked for.
        async with RegistryClient(make_config(hosts={reg.host: {"tls": tls}, **https_only})) as c:
            with pytest.raises(Unauthenticated):
                await c.resolve(ref)
        assert reg.token_server.requests[before:] == [("repository:private/app:pull", None)]
        # A loopback realm is plain HTTP by default, as a loopback registry is.
        async with RegistryClient(make_config(hosts={reg.host: {"tls": tls, "auth": auth}})) as c:
            assert (await c.resolve(ref)).digest == digest
        assert reg.token_server.requests[-1] == ("repository:private/app:pull", USER)


async def test_mirror_from_hosts_toml_while_upstream_down(seeded: Seeded, tmp_path: pathlib.Path) -> None:
    upstream = f"127.0.0.1:{free_port()}"  # nothing listens there
    ref = parse(f"{upstream}/test/app:v1")
    (tmp_path / upstream).mkdir()
    (tmp_path / upstream / "hosts.toml").write_text(
        f'server = "http://{upstream}"\n\n'
        f'[host."http://{seeded.host}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    async with RegistryClient(make_config(config_path=str(tmp_path))) as c:
        desc = await c.resolve(ref)
        assert desc.digest == seeded.oci
        body, _, _ = await c.get_manifest(ref, desc.digest)
        layer = parse_manifest(body).layers[0]
        data = b"".join([chunk async for chunk in c.fetch_blob(ref, layer)])
    assert hashlib.sha256(data).hexdigest() == layer.digest.removeprefix("sha256:")
    mirrored = [p for m, p, _ in seeded.registry.requests() if f"ns={upstream}" in p]
    assert any("/manifests/v1" in p for p in mirrored)
    assert any(f"/blobs/{layer.digest}" in p for p in mirrored)


async def test_dead_mirror_falls_through_to_upstream(seeded: Seeded) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = make_config(hosts={seeded.host: {"mirrors": [dead]}})
    async with RegistryClient(cfg) as c:
        desc = await c.resolve(parse(f"{seeded.host}/test/app:v1"))
    assert desc.digest == seeded.oci


async def test_mirror_without_the_image_falls_through(seeded: Seeded) -> None:
    with Registry() as empty_mirror:
        cfg = make_config(hosts={seeded.host: {"mirrors": [empty_mirror.url]}})
        async with RegistryClient(cfg) as c:
            desc = await c.resolve(parse(f"{seeded.host}/test/docker:v1"))
        assert desc.digest == seeded.docker
        assert any(s == 404 for _, _, s in empty_mirror.requests())


async def test_mirror_without_referrers_api_leaves_it_to_the_upstream() -> None:
    # A docker-registry 2.8 pull-through mirror has no referrers API (404); the upstream does. The
    # mirror's answer once stood for both, and cosign 3 signatures were "not found".
    digest, referrer = "sha256:" + "c" * 64, "sha256:" + "d" * 64
    index = compact(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": mt.OCI_MANIFEST,
                    "digest": "sha256:" + "d" * 64,
                    "size": 10,
                    "artifactType": "x",
                }
            ],
        }
    )

    async def upstream(request: web.Request) -> web.StreamResponse:
        if request.path == f"/v2/org/app/referrers/{digest}":
            return web.Response(body=index, headers={"Content-Type": mt.OCI_INDEX})
        return web.Response(status=404)

    with Registry() as mirror, HostileRegistry(upstream) as up:
        cfg = make_config(hosts={up.host: {"mirrors": [mirror.url]}})
        async with RegistryClient(cfg) as c:
            found = await c.referrers(parse(f"{up.host}/org/app"), digest)
        assert found is not None and [m.digest for m in found.manifests] == [referrer]
        assert any("/referrers/" in p and s == 404 for _, p, s in mirror.requests()), "the mirror was asked"


async def test_mirror_without_referrers_api_and_the_upstream_down() -> None:
    # The upstream cannot be asked: the mirror's "no API" stands, so discovery goes on to the
    # tags (which the mirror serves) instead of the verification failing as UNAVAILABLE.
    upstream = f"127.0.0.1:{free_port()}"  # nothing listens there
    with Registry() as mirror:
        cfg = make_config(hosts={upstream: {"mirrors": [mirror.url]}})
        async with RegistryClient(cfg) as c:
            assert await c.referrers(parse(f"{upstream}/org/app"), "sha256:" + "c" * 64) is None


async def test_referrers_are_filtered_per_page_and_bounded() -> None:
    digest = "sha256:" + "e" * 64

    def page(n: int) -> bytes:
        manifests = [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": f"sha256:{i:064x}",
                "size": 1,
                "artifactType": "wanted" if i % 2 else "other",
            }
            for i in range(n)
        ]
        return compact({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests})

    async def handler(request: web.Request) -> web.StreamResponse:
        # Endless pages of 3,000, half of the wanted type, never filtered by the registry.
        link = f'<{request.path}?page={int(request.query.get("page", "0")) + 1}>; rel="next"'
        return web.Response(body=page(3000), headers={"Content-Type": mt.OCI_INDEX, "Link": link})

    with HostileRegistry(handler) as reg:
        async with RegistryClient(make_config()) as c:
            found = await c.referrers(parse(f"{reg.host}/org/app"), digest, artifact_type="wanted")
        assert found is not None and len(found.manifests) == MAX_REFERRERS
        assert {m.artifact_type for m in found.manifests} == {"wanted"}
        assert reg.count("/referrers/") == 1, "a full page was enough: no more were asked for"


async def test_challenges_in_several_www_authenticate_headers() -> None:
    # Basic first, Bearer in a second header: only the first header was read, and a registry that
    # offers anonymous tokens looked as if it wanted a password.
    manifest = compact({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": {}, "layers": []})

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            return web.json_response({"token": "anon"})
        if request.headers.get("Authorization") != "Bearer anon":
            headers = CIMultiDict(
                [
                    ("WWW-Authenticate", 'Basic realm="registry"'),
                    ("WWW-Authenticate", f'Bearer realm="http://{request.host}/token",service="s"'),
                ]
            )
            return web.Response(status=401, headers=headers)
        return web.Response(body=manifest, headers={"Content-Type": mt.OCI_MANIFEST})

    with HostileRegistry(handler) as reg:
        async with RegistryClient(make_config()) as c:
            desc = await c.resolve(parse(f"{reg.host}/org/app:v1"))
        assert desc.digest == "sha256:" + hashlib.sha256(manifest).hexdigest()


async def test_a_plain_http_registry_s_token_server_on_its_machine_gets_the_credentials() -> None:
    # docker_auth beside a plain-HTTP registry, on another port of the same machine: talking plain
    # HTTP to the registry already accepts that machine, even where its other ports are not.
    with Registry(token_auth=True, htpasswd={USER: PASSWORD}) as reg:
        assert reg.token_server is not None and reg.token_server.realm.startswith("http://127.0.0.1:")
        realm_host = urllib.parse.urlsplit(reg.token_server.realm).netloc
        digest = push_test_image(reg, "private/app", "v1")
        auth = {"username": USER, "password": PASSWORD}
        hosts = {reg.host: {"auth": auth}, realm_host: {"plain_http": False}}
        async with RegistryClient(make_config(hosts=hosts)) as c:
            assert (await c.resolve(parse(f"{reg.host}/private/app:v1"))).digest == digest
        assert reg.token_server.requests[-1] == ("repository:private/app:pull", USER)


def test_oauth_error_detail() -> None:
    assert _oauth_error(b'{"error":"invalid_grant","error_description":"token revoked"}') == (
        ": invalid_grant: token revoked"
    )
    assert _oauth_error(rb'{"error":"x\u001b[31m"}') == ": x[31m"
    assert _oauth_error(b"<html>") == _oauth_error(b"[]") == _oauth_error(b"{}") == ""


async def test_a_token_realm_with_user_information_is_refused() -> None:
    # `http://localhost:1@<host>/` passed for a loopback realm while the request went to <host>,
    # with the identity token in the clear (found in review); nothing is sent to such a realm.
    received: list[str] = []

    async def token_server(request: web.Request) -> web.StreamResponse:
        received.append(request.path_qs)
        return web.json_response({"token": "t"})

    with HostileRegistry(token_server) as tok:

        async def registry(request: web.Request) -> web.StreamResponse:
            realm = f"http://localhost:1@{tok.host}/token"
            return web.Response(status=401, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})

        with HostileRegistry(registry) as reg:
            for auth in ({"identity_token": "SECRET"}, {"username": "u", "password": "SECRET"}, None):
                hosts = {reg.host: {"auth": auth}} if auth else {}
                async with RegistryClient(make_config(hosts=hosts)) as c:
                    with pytest.raises(Unauthenticated) as err:
                        await c.resolve(parse(f"{reg.host}/org/app:v1"))
                assert "unusable token realm" in err.value.message and "SECRET" not in err.value.message
    assert received == []


async def test_one_attempt_asks_once() -> None:
    # For a pull with a recorded image to fall back on: one try per request, not retries.attempts.
    asked: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        asked.append(request.path)
        return web.Response(status=503)

    with HostileRegistry(handler) as reg:
        async with RegistryClient(make_config()) as c:
            ref = parse(f"{reg.host}/org/app:v1")
            with pytest.raises(Unavailable):
                await c.resolve(ref)
            assert len(asked) == 3  # make_config's attempts
            with pytest.raises(Unavailable):
                await c.resolve(ref, attempts=1)
            assert len(asked) == 4


async def test_unreachable_registry_is_unavailable() -> None:
    host = f"127.0.0.1:{free_port()}"
    async with RegistryClient(make_config()) as c:
        with pytest.raises(Unavailable) as e:
            await c.resolve(parse(f"{host}/test/app:v1"))
    assert host in e.value.message and "test/app:v1" in e.value.message


async def test_registry_restart_between_calls(tmp_path: pathlib.Path) -> None:
    """The pooled connection to a restarted registry is replaced transparently."""
    with Registry() as reg:
        digest = push_test_image(reg, "test/app", "v1")
        ref = parse(f"{reg.host}/test/app:v1")
        async with RegistryClient(make_config()) as c:
            assert (await c.resolve(ref)).digest == digest
            reg.stop()
            with pytest.raises(Unavailable):
                await c.resolve(ref)
            reg.start()
            assert (await c.resolve(ref)).digest == digest
