"""The daemon: gRPC servers on the admin (and optional read-only and CRI) sockets, health tracking
containerd, reflection, metrics, SIGHUP reload, graceful SIGTERM, and start-up lease hygiene."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imaged import errors
from imaged.config import Config, ConfigError, load
from imaged.config.models import SocketConfig
from imaged.containerd import leases
from imaged.daemon import sockets, systemd
from imaged.daemon.observe import ObservingInterceptor
from imaged.pb.machine import image_pb2
from imaged.pb.policy.v1 import policy_pb2, policy_pb2_grpc
from imaged.pb.runtime.v1 import api_pb2 as cri_pb2
from imaged.pb.runtime.v1 import api_pb2_grpc as cri_pb2_grpc
from imaged.service.cri_service import CriImageService
from imaged.service.image_service import ImageService, add_image_service
from imaged.service.metrics import Metrics
from imaged.service.policy_service import PolicyService
from imaged.service.runtime import Runtime

log = logging.getLogger("imaged")
SERVICE_NAME = image_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name
CRI_SERVICE_NAME = cri_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name
POLICY_SERVICE = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# A health service of its own: NOT_SERVING while the Sigstore trust root is older than
# verification.tuf.maxAge (the daemon itself still serves; verification still works).
TRUST_HEALTH_SERVICE = "imaged.TrustRoot"
HEALTH_INTERVAL = 1.0
MAX_MESSAGE = 16 * 1024 * 1024
NAMESPACES = ("k8s.io", "system")


class Daemon:
    def __init__(self, config: Config, *, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        self.rt: Runtime | None = None
        self.health = health.aio.HealthServicer()
        self.servers: list[grpc.aio.Server] = []
        self._stop = asyncio.Event()
        self._serving: bool | None = None
        self._trust_stale: bool | None = None  # None: not reported yet
        self._tasks: set[asyncio.Task[None]] = set()

    def _sockets(self) -> list[tuple[SocketConfig, str]]:
        """Each socket and its role: `admin`, `readonly` or `cri`."""
        listen = self.config.listen
        out = [(listen.admin, "admin")]
        out += [(sock, role) for sock, role in ((listen.readonly, "readonly"), (listen.cri, "cri")) if sock]
        return out

    def _build(self, rt: Runtime, sock: SocketConfig, role: str) -> grpc.aio.Server:
        server = grpc.aio.server(
            interceptors=[ObservingInterceptor(self.metrics, role)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        if role == "cri":
            cri_pb2_grpc.add_ImageServiceServicer_to_server(CriImageService(rt), server)
            names = [CRI_SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME]
        else:
            readonly = role == "readonly"
            lend = (sock.credentials or ("request" if readonly else "configured")) == "configured"
            add_image_service(ImageService(rt, readonly=readonly, configured_credentials=lend), server)
            names = [SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME]
            if not readonly:  # a candidate policy may name files on this node (trustedRoot): operators only
                policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyService(rt), server)
                names.append(POLICY_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(names, server)
        sockets.prepare(sock.path)
        old = os.umask(0o777 & ~sock.mode)
        try:
            server.add_insecure_port(f"unix:{sock.path}")
        finally:
            os.umask(old)
        return server

    async def _watch_health(self, rt: Runtime) -> None:
        cleaned: set[str] = set()
        while True:
            states = {cd.address: await cd.healthy() for cd in rt.endpoints()}
            for address, up in states.items():
                if up and address not in cleaned:
                    cleaned.add(address)
                    await self._remove_stale_leases(rt, address)
            for cd in rt.endpoints():
                if states.get(cd.address) and cd.orphan_leases and (n := await leases.retry_orphans(cd)):
                    log.info("removed %d lease(s) a call could not remove while containerd was away", n)
            ok = all(states.values())
            if ok != self._serving:
                serving = health_pb2.HealthCheckResponse.SERVING
                status = serving if ok else health_pb2.HealthCheckResponse.NOT_SERVING
                await self.health.set("", status)
                await self.health.set(SERVICE_NAME, status)
                if self._serving is not None or not ok:
                    log.info("containerd %s", "reachable: serving" if ok else "unreachable: not serving")
                self._serving = ok
                systemd.notify(f"STATUS={'serving' if ok else 'waiting for containerd'}")
            await self._watch_trust(rt)
            await asyncio.sleep(HEALTH_INTERVAL)

    async def _watch_trust(self, rt: Runtime) -> None:
        """The trust root's own health service; the detail (its age) goes to the log on change."""
        problem = rt.trust_problem()
        stale = problem is not None
        if stale == self._trust_stale:
            return
        first, self._trust_stale = self._trust_stale is None, stale
        r = health_pb2.HealthCheckResponse
        await self.health.set(TRUST_HEALTH_SERVICE, r.NOT_SERVING if stale else r.SERVING)
        if problem is not None:
            log.warning("%s: health %s is NOT_SERVING", problem, TRUST_HEALTH_SERVICE)
        elif not first:
            log.info("trust root fresh again: health %s is SERVING", TRUST_HEALTH_SERVICE)

    async def _remove_stale_leases(self, rt: Runtime, address: str) -> None:
        """Leases of an earlier imaged that died mid-call: theirs only, recognised by our label."""
        cd = next(c for c in rt.endpoints() if c.address == address)
        for ns in NAMESPACES:
            try:
                n = await leases.remove_stale(cd.ns(ns), keep_owner=rt.owner)
            except errors.ImagedError as e:
                log.warning("could not clean stale leases in %s/%s: %s", address, ns, e)
                continue
            if n:
                log.info("removed %d lease(s) left by an earlier imaged in namespace %s", n, ns)

    async def _watchdog(self, interval: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def reload(self) -> None:
        """SIGHUP: a valid file takes effect for new calls; an invalid one is refused and logged."""
        if self.rt is None:
            return
        rt = self.rt
        try:
            config, restart = rt.reload(load(self.config_path))
        except (ConfigError, errors.ImagedError, ValueError) as e:
            log.error("configuration reload refused, keeping the running one: %s", e)
            return
        finally:
            rt.trust.request_refresh()  # SIGHUP also refreshes the trust root
        self.config = config
        log.info("configuration reloaded from %s", self.config_path or "(defaults)")
        if restart:
            log.warning("changes to %s take effect only after a restart", ", ".join(restart))

    def _start_metrics(self) -> None:
        listen = self.config.metrics.listen
        if not listen:
            return
        from prometheus_client import start_http_server

        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=self.metrics.registry)
        log.info("metrics on http://%s/metrics", listen)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        rt = self.rt = Runtime(self.config, self.metrics)
        self.servers = []
        bound: list[str] = []  # socket paths this process made (never another daemon's)
        try:
            for sock, role in self._sockets():
                self.servers.append(self._build(rt, sock, role))
                bound.append(sock.path)
            for server in self.servers:
                await server.start()
            for sock, _ in self._sockets():
                sockets.apply_permissions(sock)
            self._start_metrics()
        except BaseException as e:
            # Nothing half-started stays behind: no server, no socket file, no open client.
            await asyncio.gather(*(s.stop(None) for s in self.servers))
            await rt.close()
            for path in bound:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            if isinstance(e, OSError):
                raise sockets.StartupError(f"cannot start: {e}") from None
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        rt.start()
        self._spawn(self._watch_health(rt))
        interval = systemd.watchdog_interval()
        if interval:
            self._spawn(self._watchdog(interval))
        shown = {"admin": "", "readonly": " (read-only)", "cri": f" ({CRI_SERVICE_NAME})"}
        paths = ", ".join(s.path + shown[role] for s, role in self._sockets())
        log.info("imaged serving %s on %s", SERVICE_NAME, paths)
        systemd.notify("READY=1")
        try:
            await self._stop.wait()
        finally:
            log.info("shutting down: finishing running calls (grace %ss)", self.config.shutdown.grace_seconds)
            systemd.notify("STOPPING=1")
            await asyncio.gather(*(s.stop(self.config.shutdown.grace_seconds) for s in self.servers))
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await rt.close()
            for sock, _ in self._sockets():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sock.path)
            log.info("stopped")
