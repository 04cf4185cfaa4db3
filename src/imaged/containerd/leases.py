"""Leases: everything a pull or import writes belongs to one lease until its records exist."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from imaged import errors
from imaged.containerd import labels as L
from imaged.containerd.client import Containerd, Namespaced
from imaged.pb.containerd.services.leases.v1 import leases_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")


async def finish(aw: Awaitable[T]) -> T:
    """Await `aw` to the end even if our caller is cancelled meanwhile (cleanup must not be cut)."""
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


@asynccontextmanager
async def lease(
    ns: Namespaced,
    *,
    owner: str,
    purpose: str,
    expire: dt.timedelta = dt.timedelta(hours=24),
) -> AsyncIterator[Namespaced]:
    """A lease that holds content/snapshots created through the yielded client; deleted on exit.

    The `containerd.io/gc.expire` label bounds a leak even if this process dies before cleanup,
    and `imaged.dev/lease=<owner>` lets the next daemon remove it at start.
    """
    lease_id = f"imaged-{purpose}-{uuid.uuid4().hex[:16]}"
    expires = (dt.datetime.now(dt.UTC) + expire).strftime("%Y-%m-%dT%H:%M:%SZ")
    await ns.call(
        ns.leases.Create,
        leases_pb2.CreateRequest(id=lease_id, labels={L.GC_EXPIRE: expires, L.IMAGED_LEASE: owner}),
    )
    try:
        yield ns.with_lease(lease_id)
    finally:
        try:
            await finish(delete(ns, lease_id, sync=False))
        except errors.ImagedError as e:
            ns.cd.orphan_leases.add((ns.namespace, lease_id))
            log.warning("could not delete lease %s (will retry when containerd answers): %s", lease_id, e)


async def hold(ns: Namespaced, resource_id: str, kind: str = "content") -> None:
    """Put a resource (a blob digest, or a snapshot with kind `snapshots/<snapshotter>`) in the
    lease of `ns`, present or not yet: GC keeps it from then on. Without a lease, nothing to do."""
    if not ns.lease:
        return
    await ns.call(
        ns.leases.AddResource,
        leases_pb2.AddResourceRequest(id=ns.lease, resource=leases_pb2.Resource(id=resource_id, type=kind)),
    )


async def hold_if_present(
    ns: Namespaced, resource_id: str, present: Callable[[], Awaitable[bool]], kind: str = "content"
) -> bool:
    """Hold a resource found in containerd, then say whether it is (still) there.

    In this order, never look-then-hold: something nothing references (a failed pull's snapshot, a
    cancelled import's blob) may be collected between a look and a hold, and we would trust a
    resource that is gone. True means present and, under a lease, kept from now on; holding one
    that is gone is harmless (the name leaves with the lease). Without a lease it is only a look.
    """
    await hold(ns, resource_id, kind)
    return await present()


async def delete(ns: Namespaced, lease_id: str, *, sync: bool = False) -> None:
    try:
        await ns.call(ns.leases.Delete, leases_pb2.DeleteRequest(id=lease_id, sync=sync))
    except errors.NotFound:
        pass


async def list_leases(ns: Namespaced, *filters: str) -> list[leases_pb2.Lease]:
    resp = await ns.call(ns.leases.List, leases_pb2.ListRequest(filters=list(filters)))
    return list(resp.leases)


def process_owner() -> str:
    """`<pid>-<start time>-<pid namespace>-<boot>-<random>`: names this process's leases, so that a
    later start can tell a dead owner's leases (garbage) from those of another imaged still running
    on this containerd."""
    pid = os.getpid()
    return f"{pid}-{_start_time(pid)}-{_pid_namespace()}-{_boot_id()}-{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str) -> bool:
    """Whether the process that labelled a lease `owner` may still run: yes if it is this boot's
    and, in our pid namespace, the same pid with the same start time runs; also yes when it is
    in another pid namespace (another container: we cannot see it, its lease expires on its own)."""
    parts = owner.split("-")
    if len(parts) != 5 or not all(p.isdigit() for p in parts[:3]):
        return False  # an older label, or none of ours: its process is gone or unknown
    pid, start, namespace, boot = int(parts[0]), int(parts[1]), int(parts[2]), parts[3]
    if boot != _boot_id():
        return False  # from before a reboot
    if namespace != _pid_namespace():
        return True
    return _start_time(pid) == start


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "")[:12]
    except OSError:
        return "0"


def _start_time(pid: int) -> int:
    """Clock ticks since boot when `pid` started (/proc/<pid>/stat field 22); -1 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return -1
    fields = stat.rpartition(b")")[2].split()  # the name in parentheses may hold spaces
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return -1


async def remove_stale(ns: Namespaced, *, keep_owner: str) -> int:
    """Delete leases left by imaged processes that are gone; return how many.

    Leases of another imaged still running on this containerd (a second instance, a `make run`
    beside the node's) are kept: deleting them would let GC take its running pulls' content.
    """
    n = 0
    for le in await list_leases(ns, f'labels."{L.IMAGED_LEASE}"'):
        owner = le.labels.get(L.IMAGED_LEASE, "")
        if owner != keep_owner and not owner_alive(owner):
            await delete(ns, le.id)
            n += 1
    return n


async def retry_orphans(cd: Containerd) -> int:
    """Delete the leases whose deletion failed earlier; return how many are gone now."""
    done = 0
    for namespace, lease_id in sorted(cd.orphan_leases):
        try:
            await delete(cd.ns(namespace), lease_id)
        except errors.ImagedError as e:
            log.debug("lease %s still not deletable: %s", lease_id, e)
            continue
        cd.orphan_leases.discard((namespace, lease_id))
        done += 1
    return done
