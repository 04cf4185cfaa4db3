"""imaged.v1.PolicyService: a candidate verification policy tried on real images, offered on the
admin socket only. The candidate gets its own verifier (no verdict cache) over the daemon's registry
client, so it sees the registries as the daemon does; the running policy is not touched.

A candidate is text from a client, made into a verifier by CPU and disk work (YAML, validation,
keys, regexes, CEL, trust root files): that work runs in a thread, one candidate at a time, within
CANDIDATE_TIMEOUT, so that no candidate stalls the daemon's other calls. YAML anchors and aliases
are refused (a small document must not stand for thousands of rules), and the only files a
candidate may name are those the running configuration names (`trustedRoot`, `tuf.root`): the
daemon reads no other file on a client's behalf."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from imaged import errors
from imaged.config import ConfigError
from imaged.config.loader import parse_text, validate
from imaged.pb.policy.v1 import policy_pb2, policy_pb2_grpc
from imaged.service.runtime import Runtime
from imaged.service.status import unary
from imaged.verify.config import VerificationConfig
from imaged.verify.policytest import evaluate, uncached
from imaged.verify.service import ImageVerifier
from imaged.verify.trustroots import in_daemon_thread

MAX_CONFIG = 1024 * 1024
MAX_IMAGES = 64
SOURCE = "candidate configuration"
# Longest a candidate may take to load and compile (waiting for the one before it included).
CANDIDATE_TIMEOUT = 30.0


def check_trust_files(doc: dict[str, Any], running: VerificationConfig) -> None:
    """Refuse a candidate naming a trust file the running configuration does not name: checked on
    the parsed document, before validation would open it."""
    section = doc.get("verification")
    if not isinstance(section, dict):
        return
    named: list[tuple[str, object, str | None]] = [
        ("trustedRoot", section[k], running.trusted_root)
        for k in ("trustedRoot", "trusted_root")
        if k in section
    ]
    tuf = section.get("tuf")
    if isinstance(tuf, dict) and "root" in tuf:
        named.append(("tuf.root", tuf["root"], running.tuf.root))
    for key, value, allowed in named:
        if value is not None and value != allowed:
            has = f"names {allowed}" if allowed is not None else "names none"
            raise errors.InvalidArgument(
                f"{SOURCE}: verification.{key}: a candidate may name only the running configuration's "
                f"file (it {has}): the daemon opens no other file for PolicyService.Test"
            )


class PolicyService(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        # Held from the start of a candidate's thread to its end (not just while a caller waits:
        # a thread cannot be stopped), so candidates are compiled one at a time.
        self._slot = asyncio.Semaphore(1)

    def _build(self, text: str) -> ImageVerifier:
        """The candidate's verifier; blocking (run in a thread)."""
        running = self.rt.config
        try:
            doc = parse_text(text, SOURCE, aliases=False)
            check_trust_files(doc, running.verification)
            config = validate(doc, SOURCE)
        except ConfigError as e:
            raise errors.InvalidArgument(str(e)) from None
        verification = uncached(config.verification)
        return ImageVerifier(verification, self.rt.registry, quiet=True, trust=self.rt.trust_for(config))

    async def _candidate(self, text: str) -> ImageVerifier:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANDIDATE_TIMEOUT
        late = errors.DeadlineExceeded(
            f"the {SOURCE} took more than {CANDIDATE_TIMEOUT:g}s to load and compile (or waited that "
            "long for another one): split it, or use fewer rules, authorities and attestations"
        )
        try:
            await asyncio.wait_for(self._slot.acquire(), CANDIDATE_TIMEOUT)
        except TimeoutError:
            raise late from None
        try:
            task = asyncio.ensure_future(in_daemon_thread(lambda: self._build(text)))
        except BaseException:
            self._slot.release()
            raise

        def done(t: asyncio.Future[ImageVerifier]) -> None:
            self._slot.release()
            if not t.cancelled():
                t.exception()  # retrieved: an abandoned candidate's error is not logged as lost

        task.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise late from None

    @unary
    async def Test(
        self, request: policy_pb2.PolicyTestRequest, context: grpc.aio.ServicerContext
    ) -> policy_pb2.PolicyTestResponse:
        if len(request.config_yaml) > MAX_CONFIG:
            raise errors.InvalidArgument(f"the candidate configuration is over {MAX_CONFIG} bytes")
        if not request.image_refs:
            raise errors.InvalidArgument("no image to test")
        if len(request.image_refs) > MAX_IMAGES:
            raise errors.InvalidArgument(f"at most {MAX_IMAGES} images per call")
        verifier = await self._candidate(request.config_yaml)
        out = policy_pb2.PolicyTestResponse()
        for ref in request.image_refs:
            v = await evaluate(verifier, ref)
            out.results.add(
                image_ref=v.image_ref,
                verdict=policy_pb2.PolicyVerdict.Value(f"POLICY_VERDICT_{v.verdict.upper()}"),
                message=v.message,
                digested_image_ref=v.digested_ref,
                rule=v.rule,
                error_code=v.error_code,
            )
        return out
