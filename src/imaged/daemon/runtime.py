"""Everything a request handler needs, built once from the configuration."""

from __future__ import annotations

import datetime as dt
import os
import uuid

from imaged.config import Config
from imaged.containerd import Containerd, Namespaced
from imaged.images.listing import SizeCache
from imaged.pb.common import common_pb2
from imaged.pull.puller import Puller, PullOptions
from imaged.registry.client import RegistryClient
from imaged.service.instance import resolve_instance


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        # Identifies this process's leases, so the next start can clean up after a crash.
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.size_cache = SizeCache()
        self._containerd: dict[str, Containerd] = {}
        self.registry = RegistryClient(config.registries)
        self.puller = Puller(
            self.registry,
            PullOptions(
                owner=self.owner,
                snapshotter=config.containerd.snapshotter,
                max_concurrent_downloads=config.pull.max_concurrent_downloads,
                lease_expire=dt.timedelta(seconds=config.containerd.lease_expire_seconds),
            ),
        )

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
        return [self.containerd_for(common_pb2.CONTAINERD), self.containerd_for(common_pb2.CRI)] if (
            cfg.cri_socket != cfg.system_socket
        ) else [self.containerd_for(common_pb2.CRI)]

    async def close(self) -> None:
        await self.registry.close()
        for cd in self._containerd.values():
            await cd.close()
