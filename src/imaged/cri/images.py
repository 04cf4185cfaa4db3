"""CRI's image service for the kubelet (`imageServiceEndpoint`): imaged's policy on every pull.

What the kubelet reads (ImageStatus, ListImages, ImageFsInfo) and RemoveImage are containerd's
CRI's own answers, passed on: the kubelet must see exactly what containerd's CRI says, and the
runtime side (CreateContainer) is containerd's CRI anyway. PullImage is where imaged stands:

1. the policy decides first, as `Verify` does (rules, verdict cache, messages), with the request's
   credentials for the registry; a refusal is PERMISSION_DENIED with the reason, before any layer
   is downloaded;
2. a verified pull is pinned to the verified digest, so a tag cannot move in between;
3. containerd's CRI moves the bytes (`transfer.py`), with the request's `auth` (else the configured
   credentials for that registry, which the policy used too), and the image is
   recorded as containerd's CRI records a pull of the tag, with imaged's verification label. A
   request only a registry token authenticates is pulled by imaged itself (containerd's CRI
   ignores registry tokens);
4. it returns once containerd's CRI knows every name of the image (bounded wait): the kubelet's
   next call, CreateContainer with the returned id, goes to containerd's CRI directly.

A verified digest that is recorded, unpacked and known to containerd's CRI already is not pulled
again (`_here`): the policy still decides and the tag is still resolved at the registry, but
containerd is not asked to resolve it once more and compare what it has.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from imaged import errors
from imaged.containerd import labels as L
from imaged.containerd.client import Namespaced
from imaged.containerd.content import ContentStore
from imaged.containerd.images import ImageStore
from imaged.cri import upstream
from imaged.cri.auth import configured_auth, containerd_ignores, request_credentials
from imaged.cri.transfer import CriTransfer
from imaged.images.walk import host_manifest, unpacked_record
from imaged.pb.runtime.v1 import api_pb2
from imaged.pull.progress import Progress
from imaged.pull.puller import Puller, PullOptions, VerifiedPin
from imaged.registry.auth import Credentials, HostAuth
from imaged.registry.client import RegistryClient
from imaged.registry.reference import Reference, parse

log = logging.getLogger(__name__)

# How long PullImage waits for containerd's CRI to take in the names imaged recorded.
KNOWN_WAIT = 10.0
# One ImageStatus call of that wait: a call that hangs is given up and asked again.
STATUS_TIMEOUT = 2.0

# (reference, a verdict recorded for it, the request's registry credentials) -> the policy's pin.
Decide = Callable[[Reference, VerifiedPin | None, HostAuth | None], Awaitable[VerifiedPin | None]]


class CriImages:
    """The domain behind the CRI socket (module docstring). Built per configuration."""

    def __init__(
        self,
        ns: Namespaced,
        *,
        decide: Decide,
        transfer: CriTransfer,
        registry: RegistryClient,
        pull_options: PullOptions,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.ns = ns
        self.decide = decide
        self.transfer = transfer
        self.registry = registry
        self.pull_options = pull_options
        self.on_bytes = on_bytes

    # -- forwarded -------------------------------------------------------------------------------

    async def status(self, request: api_pb2.ImageStatusRequest) -> api_pb2.ImageStatusResponse:
        return await upstream.status(self.ns, request)

    async def list_images(self, request: api_pb2.ListImagesRequest) -> api_pb2.ListImagesResponse:
        return await upstream.list_images(self.ns, request)

    async def remove(self, request: api_pb2.RemoveImageRequest) -> None:
        await upstream.remove(self.ns, request)

    async def fs_info(self) -> api_pb2.ImageFsInfoResponse:
        return await upstream.fs_info(self.ns)

    # -- PullImage -------------------------------------------------------------------------------

    async def pull(self, request: api_pb2.PullImageRequest) -> str:
        """Pull as the kubelet asked, under the policy; return the image id."""
        ref = parse(request.image.image)
        creds = request_credentials(request.auth, ref.domain) if request.HasField("auth") else None
        pin = await self.decide(ref, None, HostAuth(ref.domain, creds) if creds is not None else None)
        labels = {L.VERIFIED: pin.message if pin else "", L.VERIFIED_RULE: pin.rule if pin else ""}
        # containerd's CRI records no tag for `repo:tag@digest` (the digest wins); neither do we.
        record_ref = dataclasses.replace(ref, tag=None) if ref.digest else ref
        cri = not containerd_ignores(creds) and self.transfer.enabled
        if cri and pin is not None and pin.digest is not None and not self.transfer.found_missing(self.ns):
            # Its CRI knowing the image also says it answers: no probe first.
            present = record_ref.with_digest(pin.digest)
            here = await self._here(present, labels)
            if here is not None:
                await self._known([n for n in [present.tagged()] if n], here)
                return here
        if cri and await self.transfer.available(self.ns):
            forward = api_pb2.PullImageRequest()
            forward.CopyFrom(request)  # keeps what this copy of the API leaves out (sandbox_config)
            if creds is None and (configured := configured_auth(self.transfer.registries, ref.domain)):
                # No auth for this registry in the request: the configured credentials, which the
                # policy used too (containerd's CRI falls back to its own configured ones so).
                forward.auth.CopyFrom(configured)
            ours: list[str] = []
            if pin is not None and pin.digest is not None:
                record_ref = record_ref.with_digest(pin.digest)
                forward.image.image = record_ref.pinned()
                ours = [n for n in [record_ref.tagged()] if n]  # the only name not CRI's own
            pulled = await self.transfer.run(self.ns, record_ref, forward, labels)
            await self._known(ours, pulled.image_id)
            return pulled.image_id
        return await self._pull_here(record_ref, creds, pin)

    async def _here(self, ref: Reference, labels: dict[str, str]) -> str | None:
        """The image id, without asking containerd's CRI to pull, when the verified digest is
        recorded, unpacked and known to containerd's CRI: its pull would fetch nothing then, only
        resolve the digest again and compare its records. That is every pull of a kubelet with
        `imagePullPolicy: Always` of an image the node has. The records and labels are then made
        what a pull makes. Anything missing or unreadable: None, and containerd pulls."""
        assert ref.digest is not None
        try:
            found = await unpacked_record(self.ns, ref.pinned(), ref.digest, self.pull_options.snapshotter)
            if found is None:
                return None
            image_id = found[1]
            if not await upstream.knows(self.ns, ref.pinned(), image_id):
                return None
        except (errors.ImagedError, upstream.CriError):
            return None
        await self.transfer.record(self.ns, ref, image_id, labels)
        return image_id

    async def _pull_here(self, ref: Reference, creds: Credentials | None, pin: VerifiedPin | None) -> str:
        """imaged's own pipeline, with the request's credentials."""

        async def decided(_: Reference, __: VerifiedPin | None) -> VerifiedPin | None:
            return pin

        registry = self.registry.with_auth(ref.domain, creds) if creds is not None else self.registry
        puller = Puller(registry, self.pull_options, verify=decided, on_bytes=self.on_bytes)
        pinned = parse(await puller.pull(self.ns, str(ref), Progress()))
        record = await ImageStore(self.ns).get(pinned.pinned())
        if record is None:
            raise errors.Unavailable(f"{pinned.pinned()} was pulled but its record is gone")
        t = record.target
        resolved = await host_manifest(ContentStore(self.ns), t.media_type, t.digest, t.size)
        image_id = resolved.manifest.config.digest
        await self._known([n for n in [ref.tagged(), pinned.pinned(), image_id] if n], image_id)
        return image_id

    async def _known(self, names: list[str], image_id: str) -> None:
        """Wait (bounded) until containerd's CRI has taken in `names`, which it learns from
        containerd's image events, a moment after the records are made. The pull is done and
        recorded: a call that hangs is given up (and asked again) within the wait, and an error
        is logged, never the pull's failure."""
        deadline = time.monotonic() + KNOWN_WAIT
        delay = 0.002
        for name in names:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "containerd's CRI does not know %s after %.0f s; the pull returns anyway",
                        name,
                        KNOWN_WAIT,
                    )
                    return
                try:
                    async with asyncio.timeout(min(STATUS_TIMEOUT, left)):
                        if await self._knows(name, image_id):
                            break
                except TimeoutError:
                    continue
                except errors.ImagedError as e:
                    log.warning(
                        "containerd's CRI cannot say whether it knows %s (%s); the pull returns anyway",
                        name,
                        e.message,
                    )
                    return
                await asyncio.sleep(min(delay, max(left, 0.0)))
                delay = min(delay * 2, 0.05)

    async def _knows(self, name: str, image_id: str) -> bool:
        try:
            return await upstream.knows(self.ns, name, image_id)
        except upstream.CriError as e:
            if e.code == grpc.StatusCode.UNIMPLEMENTED:
                return True  # no CRI plugin on this containerd: nobody to wait for
            raise
