"""imagectl verify (and pull through a verifying policy) against a daemon with real rules,
a real registry holding a statically signed image, and one that needs credentials."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.cli.conftest import Ctl
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher, PrivateSigstore

PASSWORD = "s3cret-Pa55w0rd"


class Env:
    def __init__(self, open_reg: Registry, private_reg: Registry, ctl: Ctl) -> None:
        self.open = open_reg
        self.private = private_reg
        self.ctl = ctl


def push_signed(reg: Registry, ps: PrivateSigstore, repo: str, marker: str, sign: bool = True) -> str:
    img = archives.simple_image(marker)
    digest = archives.push(reg, repo, "v1", img)
    if sign:
        sig = ps.sign_legacy(digest, f"{reg.host}/{repo}", ps.static_key("cli"), tlog=False)
        OciPusher(reg).push_legacy_signatures(repo, digest, [sig])
    return digest


@pytest.fixture(scope="module")
def env(containerd: PrivateContainerd) -> Iterator[Env]:
    ps = PrivateSigstore()
    key_pem = ps.static_key("cli").public_pem.decode()
    open_reg = Registry()
    private_reg = Registry(htpasswd={"alice": PASSWORD})
    rules = [
        {"image": f"{open_reg.host}/signed/*", "publicKey": {"certificate": key_pem}},
        {"image": f"{open_reg.host}/denied/*", "deny": True},
        {"image": f"{open_reg.host}/skipped/*", "skip": True},
        {"image": f"{private_reg.host}/private/*", "publicKey": {"certificate": key_pem}},
    ]
    daemon = DaemonProcess(containerd.socket, config={"verification": {"rules": rules}})
    try:
        daemon.start()
        for reg, repo in ((open_reg, "signed/app"), (private_reg, "private/app")):
            push_signed(reg, ps, repo, f"{repo}-{uuid.uuid4().hex[:6]}")
        push_signed(open_reg, ps, "signed/unsigned", "unsigned", sign=False)
        archives.push(open_reg, "denied/app", "v1", archives.simple_image("denied"))
        archives.push(open_reg, "skipped/app", "v1", archives.simple_image("skipped"))
        yield Env(open_reg, private_reg, Ctl(daemon.socket))
    finally:
        daemon.stop()
        open_reg.close()
        private_reg.close()


def test_verified(env: Env) -> None:
    ref = f"{env.open.host}/signed/app:v1"
    r = env.ctl("verify", ref)
    assert r.rc == 0, r.err
    assert r.lines[0] == "verified:  yes"
    assert r.lines[1].startswith("message:   verified")
    pinned = r.lines[2].removeprefix("reference: ")
    assert pinned.startswith(f"{env.open.host}/signed/app@sha256:") and len(pinned.split("@")[1]) == 71
    j = env.ctl("verify", ref, "-o", "json")
    assert j.rc == 0
    doc = json.loads(j.out)
    assert doc == {
        "image": ref,
        "verified": True,
        "warned": False,
        "message": doc["message"],
        "digested_image_ref": pinned,
    }
    assert doc["message"].startswith("verified")


def test_not_verified_exit_1(env: Env) -> None:
    r = env.ctl("verify", f"{env.open.host}/skipped/app:v1")
    assert r.rc == 1, r.err
    assert r.lines[0] == "verified:  no" and "skipped" in r.lines[1]
    nomatch = env.ctl("verify", "-o", "json", f"{env.open.host}/elsewhere/app:v1")
    assert nomatch.rc == 1
    assert json.loads(nomatch.out)["verified"] is False
    assert json.loads(nomatch.out)["message"] == "no matched rule"


@pytest.mark.parametrize(("repo", "needle"), [("denied/app", "denied"), ("signed/unsigned", "verification")])
def test_denied_or_failed_exit_2(env: Env, repo: str, needle: str) -> None:
    r = env.ctl("verify", f"{env.open.host}/{repo}:v1")
    assert r.rc == 2
    assert r.out == ""
    assert r.err.startswith("imagectl: ") and r.err.count("\n") == 1 and needle in r.err
    # Asked for JSON, a script gets the refusal as JSON too.
    j = env.ctl("verify", "-o", "json", f"{env.open.host}/{repo}:v1")
    assert (j.rc, j.err) == (2, r.err)
    doc = json.loads(j.out)
    assert doc == {"image": f"{env.open.host}/{repo}:v1", "verified": False, "error": doc["error"]}
    assert doc["error"]["code"] == "PERMISSION_DENIED" and needle in doc["error"]["message"]
    assert r.err == f"imagectl: {doc['error']['message']}\n"


def test_pull_refused_by_policy(env: Env) -> None:
    r = env.ctl("pull", f"{env.open.host}/denied/app:v1")
    assert r.rc == 1
    assert "denied" in r.err and r.err.count("\n") == 1


def test_credentials(env: Env) -> None:
    ref = f"{env.private.host}/private/app:v1"
    without = env.ctl("verify", ref)
    assert without.rc == 2 and without.err.startswith("imagectl: ")

    ok = env.ctl("verify", ref, "--username", "alice", "--password-stdin", input=f"{PASSWORD}\n".encode())
    assert ok.rc == 0, ok.err
    assert ok.lines[0] == "verified:  yes"
    assert ok.lines[2].startswith(f"reference: {env.private.host}/private/app@sha256:")

    flag = env.ctl("verify", ref, "-u", "alice", "-p", PASSWORD, "--registry-host", env.private.host)
    assert flag.rc == 0, flag.err

    # Credentials for another host are not used for this one.
    other = env.ctl("verify", ref, "-u", "alice", "-p", PASSWORD, "--registry-host", "other.example:5000")
    assert other.rc == 2

    wrong = "not-" + PASSWORD
    bad = env.ctl("verify", ref, "-u", "alice", "--password-stdin", input=wrong.encode())
    assert bad.rc == 2
    assert bad.err.startswith("imagectl: ") and bad.err.count("\n") == 1
    bad_json = env.ctl("verify", ref, "-o", "json", "-u", "alice", "--password-stdin", input=wrong.encode())
    assert bad_json.rc == 2 and json.loads(bad_json.out)["error"]["code"] == "UNAUTHENTICATED"
    for r in (without, ok, flag, other, bad, bad_json):
        assert PASSWORD not in r.out + r.err and wrong not in r.out + r.err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("-p", "x"), "a password needs --username"),
        (("--password-stdin",), "a password needs --username"),
        (("--registry-host", "h"), "--registry-host"),
        (("-u", "alice"), "--username needs --password"),
        (("-u", "a", "-p", "x", "--password-stdin"), "not allowed with argument"),
    ],
)
def test_credential_usage_errors(env: Env, args: tuple[str, ...], needle: str) -> None:
    r = env.ctl("verify", f"{env.open.host}/signed/app:v1", *args)
    assert r.rc == 2
    assert needle in r.err and r.err.count("\n") == 1


def test_offline_a_recorded_tag_serves_only_where_no_rule_wants_a_signature(env: Env) -> None:
    # Registry unreachable: a tag recorded here serves where no signature is wanted (a skip rule);
    # under a rule that wants one, the pull fails, verified before or not (the key may have changed).
    host = env.open.host
    signed, skipped = f"{host}/signed/app:v1", f"{host}/skipped/app:v1"
    for image in (signed, skipped):
        assert env.ctl("-n", "system", "pull", image).rc == 0
    env.open.stop()
    try:
        served = env.ctl("-n", "system", "pull", skipped)
        assert served.rc == 0 and served.lines[-1].startswith(f"pulled image {skipped[:-3]}@sha256:")
        refused = env.ctl("-n", "system", "pull", signed)
        assert refused.rc == 1 and refused.err.startswith("imagectl: ") and host in refused.err
    finally:
        env.open.start()
    assert env.ctl("-n", "system", "rm", signed, skipped).rc == 0
