"""The trust root on a node: the real daemon refreshing from a TUF repository on loopback, a CA
rotation trusted after SIGHUP, a restart offline on the saved root, kill -9 in mid-refresh,
what metrics, health and `Verify` messages show of it, and private mirrors: over https with a
company CA (`tuf.caFile`), and an air-gapped copy on disk (`tuf.url: file:///...`)."""

from __future__ import annotations

import pathlib
import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from imaged.daemon.server import TRUST_HEALTH_SERVICE
from imaged.pb.machine import image_pb2
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess
from tests.support.registry import Registry, TestCA, free_port
from tests.support.sigstore import OciPusher
from tests.support.tufrepo import TufRepository
from tests.verify.test_trustroots import EMAIL, ISSUER, NEW, OLD, merged_root

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def signed_by_new_ca(registry: Registry) -> str:
    """An image whose only signature comes from the new CA (not in the first published root)."""
    push = OciPusher(registry)
    image = push.push_minimal_image("trust/node", "v1", label="trust-node")
    push.push_bundle_referrer(
        "trust/node", image, NEW.sign_bundle(image.digest, NEW.issue_leaf(EMAIL, ISSUER))
    )
    return f"{registry.host}/trust/node:v1"


def node_config(registry: Registry, repo: TufRepository, tmp: pathlib.Path, **tuf: Any) -> dict[str, Any]:
    return {
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "verification": {
            "rules": [{"image": f"{registry.host}/trust/*", "keyless": {"issuer": ISSUER, "subject": EMAIL}}],
            "tuf": {
                "url": repo.url,
                "root": str(repo.write_initial_root(tmp / "tuf-root.json")),
                "refreshInterval": "1h",
                **tuf,
            },
        },
        "registries": {"retries": {"attempts": 1}},
        "state": {"dir": str(tmp / "state")},  # kept across the restarts below
    }


def metrics(d: DaemonProcess) -> str:
    listen = d.config["metrics"]["listen"]
    return str(urllib.request.urlopen(f"http://{listen}/metrics", timeout=10).read().decode())


def sample(d: DaemonProcess, name: str, labels: str = "") -> float | None:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", metrics(d), re.M)
    return float(m.group(1)) if m else None


def wait_for(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def verify(d: DaemonProcess, ref: str) -> image_pb2.ImageServiceVerifyResponse:
    return d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=ref), timeout=TIMEOUT)


def denied(d: DaemonProcess, ref: str) -> str:
    with pytest.raises(grpc.RpcError) as e:
        verify(d, ref)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value.details()
    return str(e.value.details())


def sighup(d: DaemonProcess) -> None:
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)


def refreshes(d: DaemonProcess, outcome: str) -> float:
    return sample(d, "imaged_trust_root_refreshes_total", f'{{outcome="{outcome}"}}') or 0.0


def test_rotation_refresh_restart_offline_and_staleness(
    containerd: PrivateContainerd, registry: Registry, signed_by_new_ca: str, tmp_path: pathlib.Path
) -> None:
    repo = TufRepository()
    repo.publish(OLD.trusted_root_json())
    config = node_config(registry, repo, tmp_path)
    d = DaemonProcess(containerd.socket, config)
    d.start()
    try:
        # No root yet for a private repository: the first keyless Verify waits for one refresh.
        assert "no signature satisfies" in denied(d, signed_by_new_ca)
        assert refreshes(d, "updated") == 1
        age = sample(d, "imaged_trust_root_age_seconds", '{source="refreshed"}')
        assert age is not None and 0 <= age < 60
        assert sample(d, "imaged_trust_root_stale") == 0
        saved = next((tmp_path / "state" / "trust").glob("127.0.0.1_*/trusted_root.json"))
        assert saved.read_bytes() == OLD.trusted_root_json()

        repo.publish(merged_root(OLD, NEW))  # the rotation: the new CA and logs join the root
        assert "no signature satisfies" in denied(d, signed_by_new_ca)  # not before a refresh
        sighup(d)
        wait_for("the refresh SIGHUP asks for", lambda: refreshes(d, "updated") == 2)
        ok = verify(d, signed_by_new_ca)
        assert ok.verified, ok.message
        assert re.search(r"; trust root: refreshed \d{4}-\d\d-\d\dT\d\d:\d\dZ$", ok.message), ok.message
        assert saved.read_bytes() == merged_root(OLD, NEW)
    finally:
        assert d.stop() == 0
        repo.close()  # from here on the node is offline

    # Restarted offline (and with a tight maxAge): the saved root, not nothing, not the old one.
    config["verification"]["tuf"]["maxAge"] = "3s"
    d = DaemonProcess(containerd.socket, config)
    d.start()
    try:
        ok = verify(d, signed_by_new_ca)
        assert ok.verified and re.search(r"; trust root: disk \d{4}-", ok.message), ok.message
        assert sample(d, "imaged_trust_root_age_seconds", '{source="disk"}') is not None
        for n in (1, 2, 3):  # refreshes fail: each counted, the streak logged once
            sighup(d)
            wait_for(f"failed refresh {n}", lambda n=n: refreshes(d, "failed") == n)  # type: ignore[misc]
        warnings = [line for line in d.logs().splitlines() if "trust root refresh from" in line]
        assert len(warnings) == 1 and "WARNING" in warnings[0] and "keeping the disk" in warnings[0], warnings
        assert verify(d, signed_by_new_ca).verified  # a failed refresh never fails a verification
        # Older than maxAge: a health detail of its own, a gauge and a log line; serving goes on.
        wait_for("staleness", lambda: d.health(TRUST_HEALTH_SERVICE) == "NOT_SERVING")
        assert d.health() == "SERVING"
        assert sample(d, "imaged_trust_root_stale") == 1
        time.sleep(2.5)  # the health watch runs every second: the detail is logged when it changes
        assert d.logs().count("more than tuf.maxAge 3s") == 1, d.logs()
    finally:
        assert d.stop() == 0


def test_kill_9_during_a_refresh_leaves_the_previous_root(
    containerd: PrivateContainerd, registry: Registry, signed_by_new_ca: str, tmp_path: pathlib.Path
) -> None:
    repo = TufRepository()
    try:
        repo.publish(OLD.trusted_root_json())
        config = node_config(registry, repo, tmp_path)
        d = DaemonProcess(containerd.socket, config)
        d.start()
        try:
            denied(d, signed_by_new_ca)  # the first refresh: OLD saved
            saved = next((tmp_path / "state" / "trust").glob("127.0.0.1_*/trusted_root.json"))
            repo.publish(merged_root(OLD, NEW))
            repo.stall_targets.set()
            sighup(d)
            assert repo.stalled.wait(TIMEOUT)  # the new root is half downloaded
            d.kill()
        finally:
            d.stop()
        assert saved.read_bytes() == OLD.trusted_root_json()
        repo.stall_targets.clear()
        repo.release.set()

        again = DaemonProcess(containerd.socket, config)
        again.start()
        try:
            assert "no signature satisfies" in denied(again, signed_by_new_ca)  # the previous root
            assert sample(again, "imaged_trust_root_age_seconds", '{source="disk"}') is not None
            leftovers = [*saved.parent.glob(".download-*"), *saved.parent.glob(".trusted_root*")]
            assert leftovers == []  # the killed refresh's temporary files are gone
            sighup(again)  # the TUF metadata the killed refresh left are still usable
            wait_for("a refresh after the kill", lambda: refreshes(again, "updated") == 1)
            assert verify(again, signed_by_new_ca).verified
            assert saved.read_bytes() == merged_root(OLD, NEW)
        finally:
            assert again.stop() == 0
    finally:
        repo.close()


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


async def test_reload_keeps_the_manager_unless_its_settings_change(tmp_path: pathlib.Path) -> None:
    from imaged.config import load_text
    from imaged.service.runtime import Runtime

    base = f"state:\n  dir: {tmp_path}\nverification:\n  tufRefresh: false\n"
    rules = "  rules:\n    - image: r.io/*\n      keyless: {issuer: i, subject: s}\n"
    rt = Runtime(load_text(base))
    try:
        first = rt.trust
        assert rt.trust_problem() is None and not rt.keyless_rules()
        rt.reload(load_text(base + rules))  # rules change: the root, schedule and streak carry on
        assert rt.trust is first and rt.keyless_rules() and rt.verifier.trust is first
        status = rt.metrics.trust_status()
        assert status is not None and status[0] == "embedded" and status[2] is False
        rt.reload(load_text(base + rules + "  tuf:\n    refreshInterval: 2h\n"))
        assert rt.trust is not first and rt.trust.settings.interval == 7200.0
        assert rt.verifier.trust is rt.trust
        # A trustedRoot file alone is read again on each reload (an operator replaced it).
        f = OLD.write_trusted_root(tmp_path / "root.json")
        file_mode = base + rules + f"  trustedRoot: {f}\n"
        for instance in (OLD, NEW):
            instance.write_trusted_root(f)
            rt.reload(load_text(file_mode))
            root = rt.verifier.trust_root
            assert root is not None and root.fingerprint == f"sha256:{_sha256(instance.trusted_root_json())}"
    finally:
        await rt.close()


def test_https_mirror_with_a_private_ca_on_a_node(
    containerd: PrivateContainerd, registry: Registry, signed_by_new_ca: str, tmp_path: pathlib.Path
) -> None:
    """A private mirror behind a company CA: trusted with tuf.caFile; without it every refresh
    fails, the metric counts it, the log and the health detail name the setting, and the last
    good root stays in use."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = TestCA(pki, "company CA")
    repo = TufRepository(tls=ca.issue("tuf-mirror"))
    try:
        repo.publish(OLD.trusted_root_json())
        config = node_config(registry, repo, tmp_path, caFile=str(ca.cert_path))
        d = DaemonProcess(containerd.socket, config)
        d.start()
        try:
            assert "no signature satisfies" in denied(d, signed_by_new_ca)  # OLD, over https
            assert refreshes(d, "updated") == 1
        finally:
            assert d.stop() == 0
        repo.publish(merged_root(OLD, NEW))

        del config["verification"]["tuf"]["caFile"]
        config["verification"]["tuf"]["maxAge"] = "3s"
        d = DaemonProcess(containerd.socket, config)
        d.start()
        try:
            sighup(d)
            wait_for("a failed refresh", lambda: refreshes(d, "failed") == 1)
            assert refreshes(d, "updated") == 0
            warning = [line for line in d.logs().splitlines() if "trust root refresh from" in line]
            assert len(warning) == 1 and "CERTIFICATE_VERIFY_FAILED" in warning[0], warning
            assert "set verification.tuf.caFile" in warning[0] and "keeping the disk" in warning[0]
            assert "no signature satisfies" in denied(d, signed_by_new_ca)  # the last good root
            wait_for("staleness", lambda: d.health(TRUST_HEALTH_SERVICE) == "NOT_SERVING")
            assert d.health() == "SERVING"

            def health_detail() -> list[str]:
                return [line for line in d.logs().splitlines() if "more than tuf.maxAge" in line]

            wait_for("the health detail in the log", lambda: bool(health_detail()))
            detail = health_detail()[0]
            assert "last refresh error: DownloadError" in detail and "set verification.tuf.caFile" in detail
        finally:
            assert d.stop() == 0

        config["verification"]["tuf"]["caFile"] = str(ca.cert_path)
        del config["verification"]["tuf"]["maxAge"]
        d = DaemonProcess(containerd.socket, config)
        d.start()
        try:
            sighup(d)
            wait_for("the refresh with caFile", lambda: refreshes(d, "updated") == 1)
            assert verify(d, signed_by_new_ca).verified
            wait_for("a fresh root", lambda: d.health(TRUST_HEALTH_SERVICE) == "SERVING")
        finally:
            assert d.stop() == 0
    finally:
        repo.close()


def test_an_air_gapped_node_refreshes_from_a_copy_on_disk(
    containerd: PrivateContainerd, registry: Registry, signed_by_new_ca: str, tmp_path: pathlib.Path
) -> None:
    """tuf.url file:///dir: the operator copies the repository onto the node, then SIGHUP."""
    repo = TufRepository()
    try:
        repo.publish(OLD.trusted_root_json())
        copy = tmp_path / "tuf-copy"
        config = node_config(registry, repo, tmp_path, url=repo.export(copy))
        d = DaemonProcess(containerd.socket, config)
        d.start()
        try:
            assert "no signature satisfies" in denied(d, signed_by_new_ca)
            assert refreshes(d, "updated") == 1
            repo.rotate_root("snapshot")
            repo.publish(merged_root(OLD, NEW))
            repo.export(copy)  # the next copy, brought to the node
            sighup(d)
            wait_for("the refresh SIGHUP asks for", lambda: refreshes(d, "updated") == 2)
            ok = verify(d, signed_by_new_ca)
            assert ok.verified and re.search(r"; trust root: refreshed \d{4}-", ok.message), ok.message
            saved = next((tmp_path / "state" / "trust").glob("file-*/trusted_root.json"))
            assert saved.read_bytes() == merged_root(OLD, NEW)
            assert repo.requests == []  # nothing went over the network
        finally:
            assert d.stop() == 0
    finally:
        repo.close()
