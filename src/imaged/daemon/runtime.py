"""Everything a request handler needs, built once from the configuration (and on reload)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging

from imaged import errors
from imaged.config import Config
from imaged.containerd import Containerd, Namespaced, leases
from imaged.daemon.observe import Metrics
from imaged.images.listing import SizeCache
from imaged.pb.common import common_pb2
from imaged.pull.puller import Puller, PullOptions, VerifiedPin
from imaged.registry.client import RegistryClient
from imaged.registry.reference import Reference, parse
from imaged.service.instance import resolve_instance
from imaged.verify.service import WARN_NOTE, ImageVerifier, Verdict
from imaged.verify.trust import TrustRootError
from imaged.verify.trustroots import Settings, TrustRoots

log = logging.getLogger("imaged")

# Replaced registry clients kept open for the calls still using them (a pull has no time limit);
# past this many, the oldest is closed. Idle, one holds no connection for long (keep-alive ends).
MAX_RETIRED = 8
# containerd refuses a label over 4096 bytes (key and value); a warned verdict's failure may be long.
MAX_LABEL_VALUE = 3000


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
        self.verifier = ImageVerifier(
            config.verification, self.registry, on_cache_hit=self.metrics.cache_hits.inc, trust=self.trust
        )
        self.puller = self._puller()

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

    def count_verdict(self, verdict: Verdict) -> None:
        m = self.metrics
        (m.warned if verdict.warned else m.verified if verdict.verified else m.unverified).inc()

    async def verify_for_pull(self, ref: Reference) -> VerifiedPin | None:
        """Pull applies the verification policy first: deny/failure raise, success pins the digest.

        A verdict allowed in warn mode pins the digest that was evaluated when one was resolved
        (what runs is what was looked at), and its label says it was allowed, not verified."""
        if self.verifier.match(ref) is None and self.config.verification.no_match == "allow":
            return None
        try:
            verdict = await self.verifier.verify(str(ref))
        except errors.PermissionDenied:
            self.metrics.refused.inc()
            raise
        self.count_verdict(verdict)
        if not verdict.verified:
            return None
        digest = parse(verdict.digested_ref).digest if verdict.digested_ref else None
        label = verdict.message
        if verdict.warned:
            label = f"{WARN_NOTE}, not verified: {label}"
        if len(label) > MAX_LABEL_VALUE:
            label = label[: MAX_LABEL_VALUE - 1] + "…"
        return VerifiedPin(digest, label)

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
        verifier = ImageVerifier(
            config.verification, registry, on_cache_hit=self.metrics.cache_hits.inc, trust=trust
        )
        self.config = config
        self.registry = registry
        self.verifier = verifier
        self.puller = self._puller()
        if trust is not self.trust:
            self.trust = trust
            if self._trust_task is not None:
                self._trust_task.cancel()
                self.start()
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
