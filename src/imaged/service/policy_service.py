"""imaged.v1.PolicyService: a candidate verification policy tried on real images, offered on the
admin socket only. The candidate gets its own verifier (no verdict cache) over the daemon's registry
client, so it sees the registries as the daemon does; the running policy is not touched."""

from __future__ import annotations

import grpc

from imaged import errors
from imaged.config import ConfigError
from imaged.config.loader import load_text
from imaged.daemon.runtime import Runtime
from imaged.pb.policy.v1 import policy_pb2, policy_pb2_grpc
from imaged.service.status import unary
from imaged.verify.config import CacheConfig
from imaged.verify.service import ImageVerifier, Verdict

MAX_CONFIG = 1024 * 1024
MAX_IMAGES = 64


def _verdict(v: Verdict) -> policy_pb2.PolicyVerdict:
    if v.warned:
        return policy_pb2.POLICY_VERDICT_WARNED
    return policy_pb2.POLICY_VERDICT_VERIFIED if v.verified else policy_pb2.POLICY_VERDICT_UNVERIFIED


class PolicyService(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

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
        try:
            config = load_text(request.config_yaml, "candidate configuration")
        except ConfigError as e:
            raise errors.InvalidArgument(str(e)) from None
        verification = config.verification.model_copy(update={"cache": CacheConfig(maxEntries=0)})
        verifier = ImageVerifier(verification, self.rt.registry, quiet=True, trust=self.rt.trust_for(config))
        out = policy_pb2.PolicyTestResponse()
        for ref in request.image_refs:
            result = out.results.add(image_ref=ref)
            try:
                matched = verifier.match(ref)
                result.rule = matched.describe() if matched is not None else ""
                v = await verifier.verify(ref)
            except errors.PermissionDenied as e:
                result.verdict = policy_pb2.POLICY_VERDICT_DENIED
                result.message = e.message
            except errors.ImagedError as e:
                result.verdict = policy_pb2.POLICY_VERDICT_ERROR
                result.message = e.message
                result.error_code = e.code.name
            else:
                result.verdict = _verdict(v)
                result.message = v.message
                result.digested_image_ref = v.digested_ref
        return out
