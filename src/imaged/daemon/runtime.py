"""Everything a request handler needs, built once from the configuration (and on reload)."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging

from imaged import errors
from imaged.archive.importer import SignatureSource
from imaged.archive.signatures import ArchiveSignature
from imaged.config import Config
from imaged.containerd import Containerd, Namespaced, leases
from imaged.containerd import labels as L
from imaged.daemon.observe import Metrics
from imaged.images.listing import SizeCache
from imaged.pb.common import common_pb2
from imaged.pull.puller import Puller, PullOptions, VerifiedPin
from imaged.registry.client import RegistryClient
from imaged.registry.hosts import plain_http
from imaged.registry.reference import Reference, parse
from imaged.service.instance import resolve_instance
from imaged.verify.service import ImageVerifier

log = logging.getLogger("imaged")

# Replaced registry clients kept open for the calls still using them (a pull has no time limit);
# past this many, the oldest is closed. Idle, one holds no connection for long (keep-alive ends).
MAX_RETIRED = 8


class Runtime:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        # Identifies this process's leases, so the next start can clean up after a crash.
        self.owner = leases.process_owner()
        self.size_cache = SizeCache()
        self._containerd: dict[str, Containerd] = {}
        self._retired: collections.deque[RegistryClient] = collections.deque()
        self._closing: set[asyncio.Task[None]] = set()
        self.registry = RegistryClient(config.registries)
        self.verifier = self._verifier(config, self.registry)
        self.puller = self._puller()

    def _verifier(self, config: Config, registry: RegistryClient) -> ImageVerifier:
        registries = config.registries
        return ImageVerifier(
            config.verification,
            registry,
            on_cache_hit=self.metrics.cache_hits.inc,
            # Rules see a host as the client reaches it: `host:80` is `host` where that is plain HTTP.
            plain_http=lambda host: plain_http(registries.host(host), host),
        )

    def _puller(self) -> Puller:
        cfg = self.config
        return Puller(
            self.registry,
            PullOptions(
                owner=self.owner,
                snapshotter=cfg.containerd.snapshotter,
                max_concurrent_downloads=cfg.pull.max_concurrent_downloads,
                lease_expire=dt.timedelta(seconds=cfg.containerd.lease_expire_seconds),
            ),
            verify=self.verify_for_pull,
            on_bytes=self.metrics.pulled_bytes.inc,
        )

    async def verify_for_pull(self, ref: Reference, recorded: VerifiedPin | None) -> VerifiedPin | None:
        """Pull applies the verification policy first: deny/failure raise, success pins the digest.
        `recorded`: the verdict on the record of a pinned digest, which counts only under the
        same rule."""
        if self.verifier.match(ref) is None and self.config.verification.no_match == "allow":
            return None
        verdict = await self.verifier.verify(
            str(ref), recorded=(recorded.message, recorded.rule) if recorded is not None else None
        )
        (self.metrics.verified if verdict.verified else self.metrics.unverified).inc()
        if not verdict.verified:
            return None
        digest = parse(verdict.digested_ref).digest
        assert digest is not None
        return VerifiedPin(digest, verdict.message, verdict.rule)

    async def import_policy(
        self, names: list[tuple[Reference, str]], signatures: SignatureSource
    ) -> dict[tuple[Reference, str], dict[str, str]]:
        """Import applies the policy to every name the archive would create: deny (and an
        unmatched name under `noMatch: deny`) refuses, before any signature is looked at; a verify
        rule wants a signature of the imported digest; the labels of verified names."""
        verifier = self.verifier
        admitted = [(ref, digest, verifier.admit(ref)) for ref, digest in names]
        found: list[ArchiveSignature] | None = None
        out: dict[tuple[Reference, str], dict[str, str]] = {}
        for ref, digest, matched in admitted:
            if matched is None or matched.action != "verify":
                continue
            if found is None:
                found = await signatures()
            sigs = [s.signature for s in found if s.concerns(digest)]
            try:
                verdict = await verifier.verify_archive_image(ref, digest, sigs)
            except errors.PermissionDenied:
                self.metrics.refused.inc()
                raise
            self.metrics.verified.inc()
            out[(ref, digest)] = {L.VERIFIED: verdict.message, L.VERIFIED_RULE: verdict.rule}
        return out

    def containerd_for(self, driver: int) -> Containerd:
        cfg = self.config.containerd
        address = cfg.cri_socket if driver == common_pb2.CRI else cfg.system_socket
        cd = self._containerd.get(address)
        if cd is None:
            cd = self._containerd[address] = Containerd(address)
        return cd

    def namespaced(self, msg: common_pb2.ContainerdInstance) -> Namespaced:
        inst = resolve_instance(msg)
        return self.containerd_for(inst.driver).ns(inst.namespace)

    def endpoints(self) -> list[Containerd]:
        cfg = self.config.containerd
        drivers = (
            [common_pb2.CONTAINERD, common_pb2.CRI]
            if cfg.cri_socket != cfg.system_socket
            else [common_pb2.CRI]
        )
        return [self.containerd_for(d) for d in drivers]

    def reload(self, config: Config) -> tuple[Config, list[str]]:
        """Apply a new configuration to new calls; return it as applied, and the sections that
        need a restart to change (they keep their running values: the sockets bound, the
        containerd and snapshotter every running pull uses)."""
        needs_restart = [
            key
            for key in ("listen", "containerd", "log", "metrics")
            if getattr(config, key) != getattr(self.config, key)
        ]
        config = config.model_copy(update={key: getattr(self.config, key) for key in needs_restart})
        old_registry = self.registry
        registry = (
            RegistryClient(config.registries) if config.registries != self.config.registries else old_registry
        )
        # Raises on a bad policy: nothing has changed yet.
        verifier = self._verifier(config, registry)
        self.config = config
        self.registry = registry
        self.verifier = verifier
        self.puller = self._puller()
        if registry is not old_registry:
            self._retired.append(old_registry)
            if len(self._retired) > MAX_RETIRED:
                oldest = self._retired.popleft()
                task = asyncio.get_running_loop().create_task(oldest.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        return config, needs_restart

    async def close(self) -> None:
        for task in list(self._closing):
            await task
        while self._retired:
            await self._retired.popleft().close()
        await self.registry.close()
        for cd in self._containerd.values():
            await cd.close()
