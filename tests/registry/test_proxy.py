"""Proxies from the environment: selection rules (pure) and a pull through a real forward proxy."""

from __future__ import annotations

import base64

import pytest

from imaged.registry.proxy import ProxyRules
from tests.pull.test_pull import pull, run
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import SYSTEM, DaemonProcess
from tests.support.forward_proxy import ForwardProxy
from tests.support.images import push_test_image
from tests.support.registry import Registry


def rules(**env: str) -> ProxyRules:
    return ProxyRules.from_environment(env)


def test_scheme_picks_the_variable_and_uppercase_wins() -> None:
    r = rules(HTTP_PROXY="http://up:3128", http_proxy="http://low:1", https_proxy="proxy.corp:8080")
    http, https = r.for_url("http://reg.example/v2/"), r.for_url("https://reg.example/v2/")
    assert http is not None and str(http) == "http://up:3128"
    assert https is not None and str(https) == "http://proxy.corp:8080"
    assert rules().for_url("https://reg.example/v2/") is None


def test_credentials_are_kept_apart_from_the_url() -> None:
    p = rules(HTTPS_PROXY="http://user:p%40ss@proxy:3128").for_url("https://reg.example/")
    assert p is not None
    assert str(p) == "http://proxy:3128" and "p@ss" not in str(p)
    assert p.headers == {"Proxy-Authorization": "Basic " + base64.b64encode(b"user:p@ss").decode()}


@pytest.mark.parametrize(
    ("no_proxy", "url", "direct"),
    [
        ("", "https://localhost:5000/v2/", True),  # loopback is never proxied (as in Go)
        ("", "https://127.0.0.1:5000/v2/", True),
        ("", "https://[::1]:5000/v2/", True),
        ("", "https://reg.example/v2/", False),
        ("*", "https://reg.example/v2/", True),
        ("example.com", "https://reg.example.com/v2/", True),
        ("example.com", "https://example.com/v2/", True),
        (".example.com", "https://reg.example.com/v2/", True),
        ("example.com", "https://notexample.com/v2/", False),
        ("10.0.0.0/8", "https://10.1.2.3/v2/", True),
        ("10.0.0.0/8", "https://11.1.2.3/v2/", False),
        ("reg.example:5000", "https://reg.example:5000/v2/", True),
        ("reg.example:5000", "https://reg.example/v2/", False),
        ("a.test, 192.168.1.7 ,b.test", "https://192.168.1.7/v2/", True),
    ],
)
def test_no_proxy(no_proxy: str, url: str, direct: bool) -> None:
    r = rules(HTTPS_PROXY="http://proxy:3128", NO_PROXY=no_proxy)
    assert (r.for_url(url) is None) == direct


def test_a_malformed_proxy_is_ignored() -> None:
    assert rules(HTTPS_PROXY="ftp://proxy:21").for_url("https://reg.example/") is None


def test_pull_through_a_forward_proxy(containerd: PrivateContainerd) -> None:
    """The registry's name resolves only inside the proxy: the pull works only through it, and the
    proxy's credentials reach it but never the daemon's log."""
    with Registry() as reg:
        name = f"registry.proxy-test:{reg.port}"
        push_test_image(reg, "proxied/app", "v1")
        proxy = ForwardProxy({name: ("127.0.0.1", reg.port)})
        d = DaemonProcess(
            containerd.socket,
            {"registries": {"hosts": {name: {"plain_http": True}}}},
            env={"HTTP_PROXY": f"http://pxuser:px-s3cret@{proxy.address}", "NO_PROXY": "other.test"},
        )
        try:
            d.start()
            ref = f"{name}/proxied/app:v1"
            pulled, _ = pull(d, ref, SYSTEM)
            assert pulled.startswith(f"{name}/proxied/app@sha256:")
            assert "hello" in run(containerd, "system", ref)
            assert proxy.seen, "no request went through the proxy"
            expected = "Basic " + base64.b64encode(b"pxuser:px-s3cret").decode()
            assert all(s.proxy_authorization == expected for s in proxy.seen), proxy.seen
            assert all(f"http://{name}/v2/" in s.request_line for s in proxy.seen)
            assert "px-s3cret" not in d.logs()
        finally:
            d.stop()
            proxy.close()
            containerd.ctr("images", "rm", f"{name}/proxied/app:v1", namespace="system", check=False)
