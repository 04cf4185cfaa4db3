"""PolicyService.Test's candidate configuration, without a daemon: it is loaded and compiled off the
event loop, one at a time, within a time limit; YAML aliases, too many rules and files the running
configuration does not name are refused; file-valued keys never block on a FIFO."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import yaml
from pydantic import ValidationError

from imaged.config import Config, ConfigError, load_text
from imaged.pb.policy.v1 import policy_pb2
from imaged.service import policy_service
from imaged.service.policy_service import PolicyService
from imaged.verify.config import VerificationConfig
from imaged.verify.trust import TrustRootError, load_trust_root_file
from tests.support.sigstore import PrivateSigstore
from tests.support.tufrepo import TufRepository


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def service(running: dict[str, Any] | None = None) -> PolicyService:
    """The servicer over a runtime that has a configuration and nothing else: the candidates below
    decide without the registry (deny, skip, noMatch)."""
    rt = SimpleNamespace(config=Config.model_validate(running or {}), registry=None, trust_for=lambda c: None)
    return PolicyService(rt)  # type: ignore[arg-type]


async def run_test(svc: PolicyService, text: str, *refs: str) -> policy_pb2.PolicyTestResponse:
    request = policy_pb2.PolicyTestRequest(config_yaml=text, image_refs=list(refs or ["a.io/app:v1"]))
    return await svc.Test(request, Context())  # type: ignore[arg-type]


DENY = "verification:\n  rules:\n    - {image: 'a.io/*', deny: true}\n"


def _unblock(path: pathlib.Path) -> None:
    """A reader waiting in open() gets its writer, then EOF."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@pytest.fixture
def fifo(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A FIFO: opening it for reading waits for a writer, forever. A reader still waiting after 8 s
    (or at the end) is released, so that a failing test fails instead of hanging the session."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    timer = threading.Timer(8.0, _unblock, (path,))
    timer.start()
    yield path
    timer.cancel()
    _unblock(path)


def returns_within(seconds: float, fn: Any) -> Any:
    """fn() in a thread; fails (instead of hanging) when it has not returned in time."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds}s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


async def test_the_candidate_is_loaded_and_compiled_off_the_event_loop(monkeypatch: Any) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    real = policy_service.ImageVerifier

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(policy_service, "ImageVerifier", spy)
    out = await run_test(service(), DENY)
    assert out.results[0].verdict == policy_pb2.POLICY_VERDICT_DENIED
    assert seen and loop_thread not in seen


async def test_one_candidate_at_a_time_within_a_time_limit(monkeypatch: Any) -> None:
    """A slow candidate answers DEADLINE_EXCEEDED; the next waits until its thread has ended."""
    running, most = 0, 0
    real = policy_service.ImageVerifier
    lock = threading.Lock()

    def slow(*args: Any, **kwargs: Any) -> Any:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.6)
        with lock:
            running -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(policy_service, "ImageVerifier", slow)
    monkeypatch.setattr(policy_service, "CANDIDATE_TIMEOUT", 0.3)
    svc = service()
    results = await asyncio.gather(*(run_test(svc, DENY) for _ in range(3)), return_exceptions=True)
    assert most == 1
    assert all(isinstance(r, Aborted) and r.code == grpc.StatusCode.DEADLINE_EXCEEDED for r in results)
    assert "took more than 0.3s" in str(results[0])
    monkeypatch.setattr(policy_service, "CANDIDATE_TIMEOUT", 5.0)
    out = await run_test(svc, DENY)  # once the abandoned threads are done
    assert out.results[0].verdict == policy_pb2.POLICY_VERDICT_DENIED


async def test_yaml_aliases_are_refused_in_a_candidate() -> None:
    text = "verification:\n  rules:\n    - &r {image: 'a.io/*', deny: true}\n" + "    - *r\n" * 3
    with pytest.raises(Aborted) as info:
        await run_test(service(), text)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "anchors and aliases are not accepted" in info.value.details
    # The daemon's own file may use them (a person wrote it).
    assert len(load_text(text).verification.rules) == 4


MAX_RULES = 256


def test_the_number_of_rules_is_capped() -> None:
    rules = [{"image": f"r{i}.io/*", "deny": True} for i in range(MAX_RULES + 1)]
    with pytest.raises(ValidationError) as info:
        VerificationConfig.model_validate({"rules": rules})
    assert f"at most {MAX_RULES} rules, not {MAX_RULES + 1}" in str(info.value)
    assert len(VerificationConfig.model_validate({"rules": rules[:MAX_RULES]}).rules) == MAX_RULES


@pytest.mark.parametrize("key", ["trustedRoot", "tuf.root"])
async def test_a_candidate_names_only_the_running_trust_files(
    key: str, fifo: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    def candidate(value: str) -> str:
        v: dict[str, Any] = {"rules": [{"image": "a.io/*", "deny": True}]}
        if key == "trustedRoot":
            v["trustedRoot"] = value
        else:
            v["tuf"] = {"url": "https://tuf.example", "root": value}
        return yaml.safe_dump({"verification": v})

    with pytest.raises(Aborted) as info:
        await asyncio.wait_for(run_test(service(), candidate(str(fifo))), 10)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"verification.{key}" in info.value.details
    assert "only the running configuration's" in info.value.details
    # The running configuration's own file is accepted.
    if key == "trustedRoot":
        good = PrivateSigstore(seed=b"candidate").write_trusted_root(tmp_path / "root.json")
        running: dict[str, Any] = {"verification": {"trustedRoot": str(good)}}
    else:
        repo = TufRepository()
        try:
            good = repo.write_initial_root(tmp_path / "tuf-root.json")
        finally:
            repo.close()
        running = {"verification": {"tuf": {"url": "https://tuf.example", "root": str(good)}}}
    out = await run_test(service(running), candidate(str(good)))
    assert out.results[0].verdict == policy_pb2.POLICY_VERDICT_DENIED


def test_file_valued_keys_refuse_what_is_not_a_regular_file(fifo: pathlib.Path) -> None:
    """A FIFO would block the open (and a device the read) forever: refused at once, everywhere."""
    with pytest.raises(TrustRootError, match="not a regular file"):
        returns_within(5, lambda: load_trust_root_file(fifo))
    with pytest.raises(ValidationError, match="not a regular file"):
        returns_within(5, lambda: VerificationConfig.model_validate({"trustedRoot": str(fifo)}))
    with pytest.raises(ValidationError, match="not a regular file"):
        returns_within(
            5,
            lambda: VerificationConfig.model_validate(
                {"tuf": {"url": "https://t.example", "root": str(fifo)}}
            ),
        )
    with pytest.raises(ConfigError, match="not a regular file"):
        returns_within(5, lambda: load_text(f"verification:\n  trustedRoot: {fifo}\n"))


async def test_a_candidate_naming_the_same_root_uses_the_running_manager(tmp_path: pathlib.Path) -> None:
    """What names the root (TUF url and initial root, trustedRoot, state dir) decides; how often it is
    refreshed, when it is stale and how long a refresh may take do not."""
    from imaged.service.runtime import Runtime

    repo = TufRepository()
    try:
        root = str(repo.write_initial_root(tmp_path / "tuf-root.json"))
    finally:
        repo.close()
    rules = [{"image": "a.io/*", "keyless": {"issuer": "https://i.example", "subject": "s@example.com"}}]
    running = {
        "state": {"dir": str(tmp_path / "state")},
        "verification": {"rules": rules, "tuf": {"url": "https://tuf.example", "root": root}},
    }
    rt = Runtime(Config.model_validate(running))
    try:

        def candidate(**tuf: Any) -> Config:
            v = {**running["verification"], "tuf": {"url": "https://tuf.example", "root": root, **tuf}}
            return Config.model_validate({**running, "verification": v})

        assert rt.trust_for(candidate()) is rt.trust
        assert rt.trust_for(candidate(refreshInterval="1h", maxAge="48h", timeout="5s")) is rt.trust
        assert rt.trust_for(candidate(url="https://other.example")) is None
        other_state = candidate().model_copy(update={"state": Config().state})
        assert rt.trust_for(other_state) is None
    finally:
        await rt.close()
