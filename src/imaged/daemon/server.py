"""The gRPC server: ImageService, health (tracking containerd) and reflection, on unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imaged.config import Config
from imaged.daemon import sockets, systemd
from imaged.daemon.runtime import Runtime
from imaged.pb.machine import image_pb2, image_pb2_grpc
from imaged.service.image_service import ImageService

log = logging.getLogger("imaged")
SERVICE_NAME = image_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name
HEALTH_INTERVAL = 1.0
MAX_MESSAGE = 16 * 1024 * 1024


class Daemon:
    def __init__(self, config: Config, *, grace: float = 30.0) -> None:
        self.config = config
        self.grace = grace
        self.rt = Runtime(config)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self._stop = asyncio.Event()
        self._serving: bool | None = None

    def _build(self) -> grpc.aio.Server:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ]
        )
        image_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(self.rt), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        for sock in (self.config.listen.admin,):
            sockets.prepare(sock.path)
            old = os.umask(0o777 & ~sock.mode)
            try:
                server.add_insecure_port(f"unix:{sock.path}")
            finally:
                os.umask(old)
        return server

    async def _watch_health(self) -> None:
        while True:
            ok = all([await cd.healthy() for cd in self.rt.endpoints()])
            if ok != self._serving:
                status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
                await self.health.set("", status)
                await self.health.set(SERVICE_NAME, status)
                if self._serving is not None or not ok:
                    log.info("containerd %s", "reachable: serving" if ok else "unreachable: not serving")
                self._serving = ok
            await asyncio.sleep(HEALTH_INTERVAL)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        self.server = self._build()
        await self.server.start()
        for sock in (self.config.listen.admin,):
            sockets.apply_permissions(sock)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        watcher = asyncio.create_task(self._watch_health())
        log.info("imaged serving %s on %s", SERVICE_NAME, self.config.listen.admin.path)
        systemd.notify("READY=1")
        try:
            await self._stop.wait()
        finally:
            log.info("shutting down")
            systemd.notify("STOPPING=1")
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self.server.stop(self.grace)
            await self.rt.close()
            for sock in (self.config.listen.admin,):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sock.path)
