"""`common.ContainerdInstance` -> (containerd endpoint, namespace), with the reference's checks."""

from __future__ import annotations

from dataclasses import dataclass

from imaged import errors
from imaged.pb.common import common_pb2

NAMESPACES = {common_pb2.NS_CRI: "k8s.io", common_pb2.NS_SYSTEM: "system"}


@dataclass(frozen=True, slots=True)
class Instance:
    driver: int
    namespace: str


def resolve_instance(msg: common_pb2.ContainerdInstance) -> Instance:
    driver, ns = msg.driver, msg.namespace
    if driver not in (common_pb2.CONTAINERD, common_pb2.CRI):
        raise errors.InvalidArgument(f"unknown containerd driver {driver}")
    if ns not in NAMESPACES:
        raise errors.InvalidArgument(
            f"unknown containerd namespace {common_pb2.ContainerdNamespace.Name(ns) if ns == 0 else ns}: "
            "set containerd.namespace to NS_CRI or NS_SYSTEM"
        )
    if driver == common_pb2.CONTAINERD and ns == common_pb2.NS_CRI:
        raise errors.InvalidArgument("the CONTAINERD driver does not serve the CRI namespace; use driver CRI")
    return Instance(driver, NAMESPACES[ns])
