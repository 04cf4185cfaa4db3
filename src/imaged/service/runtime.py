"""Everything a request handler needs, built once from the configuration (and on reload)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable

from imaged import errors
from imaged.archive.importer import SignatureSource
from imaged.config import Config
from imaged.containerd import Containerd, Namespaced, leases
from imaged.containerd import labels as L
from imaged.cri.images import CriImages
from imaged.cri.transfer import CriTransfer
from imaged.images.listing import SizeCache
from imaged.images.records import CRI_NAMESPACE
from imaged.pb.common import common_pb2
from imaged.pull.puller import Puller, PullOptions, VerifiedPin
from imaged.registry.auth import HostAuth
from imaged.registry.client import RegistryClient
from imaged.registry.hosts import plain_http
from imaged.registry.reference import Reference, parse
from imaged.service.instance import resolve_instance
from imaged.service.metrics import Metrics
from imaged.verdicts import WARN_NOTE
from imaged.verify.service import ImageVerifier, Verdict
from imaged.verify.trust import TrustRootError
from imaged.verify.trustroots import Settings, TrustRoots

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
        self.trust = self._trust_roots(config, None)
        self._trust_task: asyncio.Task[None] | None = None
        self.metrics.trust_status = lambda: self.trust.status()
        self.verifier = self._verifier(config, self.registry, self.trust)
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

    def _verifier(self, config: Config, registry: RegistryClient, trust: TrustRoots) -> ImageVerifier:
        registries = config.registries
        return ImageVerifier(
            config.verification,
            registry,
            on_cache_hit=self.metrics.cache_hits.inc,
            trust=trust,
            # Rules see a host as the client reaches it: `host:80` is `host` where that is plain HTTP.
            plain_http=lambda host: plain_http(registries.host(host), host),
        )

    def _trust_roots(self, config: Config, running: TrustRoots | None) -> TrustRoots:
        """The trust-root manager for `config`: the running one when its TUF settings are
        unchanged (its root, refresh schedule and failure streak carry on); a `trustedRoot` file
        alone is read again, as SIGHUP always did."""
        try:
            settings = Settings.from_config(config.verification, config.state.dir)
        except TrustRootError as e:
            raise errors.FailedPrecondition(f"verification trust root: {e}") from None
        if running is not None and settings.tuf is not None and running.settings == settings:
            return running
        counter = self.metrics.trust_refreshes
        return TrustRoots(settings, on_refresh=lambda outcome: counter.labels(outcome).inc())

    def trust_for(self, config: Config) -> TrustRoots | None:
        """The running trust-root manager if `config` names the same trust root (refresh timings
        aside), else None (a candidate policy then gets an offline root of its own, never a
        refresh loop)."""
        try:
            settings = Settings.from_config(config.verification, config.state.dir)
        except TrustRootError:
            return None
        return self.trust if self.trust.settings.names_same_root(settings) else None

    def keyless_rules(self) -> bool:
        """Whether the policy has a rule that needs the trust root (else it is not refreshed)."""
        return any(rule.keyless_authorities() for rule in self.config.verification.rules)

    def trust_problem(self) -> str | None:
        """A trust root too old (or missing) while keyless rules need it: for health."""
        return self.trust.stale() if self.keyless_rules() else None

    def start(self) -> None:
        """Background work: the trust root's refresh loop."""
        self._trust_task = asyncio.get_running_loop().create_task(self.trust.run(self.keyless_rules))

    async def _stop_trust(self) -> None:
        task, self._trust_task = self._trust_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

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

    def count_verdict(self, verdict: Verdict) -> None:
        m = self.metrics
        (m.warned if verdict.warned else m.verified if verdict.verified else m.unverified).inc()

    async def counted(self, verification: Awaitable[Verdict]) -> Verdict:
        """`verification`'s verdict, counted in the metrics; a refusal is counted and raised."""
        try:
            verdict = await verification
        except errors.PermissionDenied:
            self.metrics.refused.inc()
            raise
        self.count_verdict(verdict)
        return verdict

    @staticmethod
    def _label(verdict: Verdict) -> str:
        """The `imaged.dev/verified` value of an allowed verdict (a warned one says it was not)."""
        label = verdict.message
        if verdict.warned:
            label = f"{WARN_NOTE}, not verified: {label}"
        # containerd counts key and value in bytes; the failure may quote non-ASCII registry text.
        return L.fit(L.VERIFIED, label)

    async def verify_for_pull(
        self,
        ref: Reference,
        recorded: VerifiedPin | None = None,
        auth: HostAuth | None = None,
    ) -> VerifiedPin | None:
        """Pull applies the verification policy first: deny/failure raise, success pins the digest.
        `recorded`: the verdict on the record of a pinned digest, which counts only under the
        same rule; `auth`: the credentials a CRI pull brings for the registry.

        A verdict allowed in warn mode pins the digest that was evaluated when one was resolved
        (what runs is what was looked at), and its label says it was allowed, not verified."""
        if self.verifier.match(ref) is None and self.config.verification.no_match == "allow":
            return None
        verdict = await self.counted(
            self.verifier.verify(
                str(ref),
                recorded=(recorded.message, recorded.rule) if recorded is not None else None,
                auth=auth,
            )
        )
        if not verdict.verified:
            return None
        digest = parse(verdict.digested_ref).digest if verdict.digested_ref else None
        return VerifiedPin(digest, self._label(verdict), verdict.rule)

    async def import_policy(
        self, names: list[tuple[Reference, str]], signatures: SignatureSource
    ) -> dict[tuple[Reference, str], dict[str, str]]:
        """Import applies the policy to every name the archive would create: deny (and an
        unmatched name under `noMatch: deny`) refuses, before any signature is looked at; a verify
        rule wants a signature (or the attestations it requires) of the imported digest, from the
        archive or else the registry; the labels of verified (or warned) names."""
        verifier = self.verifier
        try:
            admitted = [(ref, digest, verifier.admit(ref, ref.pinned(digest))) for ref, digest in names]
        except errors.PermissionDenied:
            self.metrics.refused.inc()
            raise
        out: dict[tuple[Reference, str], dict[str, str]] = {}
        for ref, digest, decided in admitted:
            if isinstance(decided, Verdict):  # no rule, skip, or warned deny: no signature looked at
                if decided.warned:
                    self.count_verdict(decided)
                    out[(ref, digest)] = {L.VERIFIED: self._label(decided), L.VERIFIED_RULE: ""}
                continue
            carried = await signatures(digest)
            verdict = await self.counted(
                verifier.verify_archive_image(ref, digest, carried.signatures, notes=carried.notes)
            )
            if verdict.verified or verdict.warned:  # (a reload meanwhile may have left no rule)
                out[(ref, digest)] = {L.VERIFIED: self._label(verdict), L.VERIFIED_RULE: verdict.rule}
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
        trust = self._trust_roots(config, self.trust)
        verifier = self._verifier(config, registry, trust)
        self.config = config
        self.registry = registry
        self.verifier = verifier
        self.puller = self._puller()
        if trust is not self.trust:
            self.trust = trust
            if self._trust_task is not None:
                self._trust_task.cancel()
                self.start()
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
        await self._stop_trust()
        for task in list(self._closing):
            await task
        while self._retired:
            await self._retired.popleft().close()
        await self.registry.close()
        for cd in self._containerd.values():
            await cd.close()
        from imaged.verify.cel import close_evaluator

        await asyncio.to_thread(close_evaluator)
