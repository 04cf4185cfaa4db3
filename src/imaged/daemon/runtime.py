"""Everything a request handler needs, built once from the configuration (and on reload)."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging

from imaged.config import Config
from imaged.containerd import Containerd, Namespaced, leases
from imaged.cri.images import CriImages
from imaged.cri.transfer import CriTransfer
from imaged.daemon.observe import Metrics
from imaged.images.listing import SizeCache
from imaged.images.records import CRI_NAMESPACE
from imaged.pb.common import common_pb2
from imaged.pull.puller import Puller, PullOptions, VerifiedPin
from imaged.registry.auth import Credentials
from imaged.registry.client import RegistryClient
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
        self.verifier = ImageVerifier(
            config.verification, self.registry, on_cache_hit=self.metrics.cache_hits.inc
        )
        self.puller = self._puller()
        self.cri_images = self._cri_images()

    def _pull_options(self) -> PullOptions:
        cfg = self.config
        return PullOptions(
            owner=self.owner,
            snapshotter=cfg.containerd.snapshotter,
            max_concurrent_downloads=cfg.pull.max_concurrent_downloads,
            lease_expire=dt.timedelta(seconds=cfg.containerd.lease_expire_seconds),
        )

    def _puller(self) -> Puller:
        cfg = self.config
        self.cri_transfer = CriTransfer(
            owner=self.owner,
            snapshotter=cfg.containerd.snapshotter,
            lease_expire=dt.timedelta(seconds=cfg.containerd.lease_expire_seconds),
            registries=cfg.registries,
            enabled=cfg.pull.cri_transfer == "containerd",
            progress_interval=1.0 / cfg.pull.progress_rate,
            on_bytes=self.metrics.pulled_bytes.inc,
        )
        return Puller(
            self.registry,
            self._pull_options(),
            verify=self.verify_for_pull,
            on_bytes=self.metrics.pulled_bytes.inc,
            transfer=self.cri_transfer,
        )

    def _cri_images(self) -> CriImages:
        return CriImages(
            self.containerd_for(common_pb2.CRI).ns(CRI_NAMESPACE),
            decide=self.verify_for_pull,
            transfer=self.cri_transfer,
            registry=self.registry,
            pull_options=self._pull_options(),
            on_bytes=self.metrics.pulled_bytes.inc,
        )

    async def verify_for_pull(
        self, ref: Reference, auth: tuple[str, Credentials] | None = None
    ) -> VerifiedPin | None:
        """Pull applies the verification policy first: deny/failure raise, success pins the digest.
        `auth`: (host, credentials) a CRI pull brings for the registry."""
        if self.verifier.match(ref) is None and self.config.verification.no_match == "allow":
            return None
        verdict = await self.verifier.verify(str(ref), auth=auth)
        (self.metrics.verified if verdict.verified else self.metrics.unverified).inc()
        if not verdict.verified:
            return None
        digest = parse(verdict.digested_ref).digest
        assert digest is not None
        return VerifiedPin(digest, verdict.message)

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
        verifier = ImageVerifier(config.verification, registry, on_cache_hit=self.metrics.cache_hits.inc)
        self.config = config
        self.registry = registry
        self.verifier = verifier
        self.puller = self._puller()
        self.cri_images = self._cri_images()
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
