"""Pulls into k8s.io that containerd's CRI plugin makes, pinned to a digest and under imaged's lease.

Why: a kubelet's pull runs inside containerd, with no extra process and no copy of every byte
through gRPC; imaged's own pipeline cannot beat that on the same machine (bench/results/analysis.md).
So for the CRI namespace imaged decides (policy, digest) and containerd's CRI `PullImage` moves the
bytes. Sent with `containerd-lease: <imaged's lease>`, that call works under imaged's lease
(containerd's client pull takes a lease found in the incoming call instead of making one), so
the usual guarantees hold:

- a cancelled or failed pull removes its lease and leaves no record; its partial downloads are
  first reopened outside the lease, which gives them containerd's 24 h expiry of unleased
  ingests: the next pull (containerd's or imaged's, same `layer-<digest>` refs) resumes them with
  `Range`;
- records are those containerd's CRI makes (`repo@digest`, `sha256:<config>`, labelled
  `io.cri-containerd.image=managed`) plus the tag, which a pull pinned to a digest does not make,
  and imaged's labels (`imaged.dev/verified`) on all of them;
- progress comes from looking at containerd while it works (`cri/progress.py`).

It is used only where containerd can be told everything imaged would do: no mirrors, TLS settings
or plain-HTTP choice of imaged's for the registry (containerd uses its own registry configuration),
credentials that containerd's CRI understands, and a CRI plugin answering on the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

import grpc

from imaged import errors
from imaged.containerd import labels as L
from imaged.containerd.client import Namespaced
from imaged.containerd.content import ContentStore
from imaged.containerd.images import Image, ImageStore, Target
from imaged.containerd.leases import finish, lease
from imaged.cri import upstream
from imaged.cri.auth import configured_auth
from imaged.cri.progress import IngestWatcher
from imaged.images.records import CRI_NAMESPACE, record_names, undo_records
from imaged.oci.manifest import Descriptor
from imaged.pb.containerd.services.leases.v1 import leases_pb2
from imaged.pb.runtime.v1 import api_pb2
from imaged.pull.progress import Progress
from imaged.registry.config import RegistriesConfig
from imaged.registry.hosts import Endpoint, endpoints
from imaged.registry.reference import Reference, is_localhost, registry_host
from imaged.tasks import gather

log = logging.getLogger(__name__)

# How long containerd gets to let go of a cancelled pull's ingests before they are left to it.
RELEASE_WAIT = 2.0
# How long a CRI plugin found missing is not asked again.
PROBE_AGAIN = 30.0


@dataclass(frozen=True, slots=True)
class Pulled:
    image_id: str
    target: Target
    names: list[str]


def pull_error(e: upstream.CriError, what: str) -> errors.ImagedError:
    """containerd's CRI words for a failed pull, under the status imaged's own pull would give."""
    m = e.message
    low = m.lower()
    cls: type[errors.ImagedError]
    if "unexpected commit digest" in low or "unexpected commit size" in low or "digest mismatch" in low:
        cls = errors.DataLoss  # containerd says FAILED_PRECONDITION: the bytes were wrong
    elif e.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        cls = type(errors.from_code(e.code, ""))
    elif "401 unauthorized" in low or "authorization failed" in low:
        cls = errors.Unauthenticated
    elif "403 forbidden" in low:
        cls = errors.PermissionDenied
    elif "not found" in low:
        cls = errors.NotFound
    else:
        cls = errors.Unavailable
    return cls(f"{what}: containerd's CRI: {m}")


@contextlib.asynccontextmanager
async def _undone_on_failure(ns: Namespaced) -> AsyncIterator[tuple[list[str], dict[str, int]]]:
    """(`created`, `updated`) for `CriTransfer._records` to fill; if the block fails, the records
    it made (or labelled and still its own) are removed again."""
    created: list[str] = []
    updated: dict[str, int] = {}
    try:
        yield created, updated
    except BaseException:
        await undo_records(ns, created, updated)
        raise


class CriTransfer:
    """Moves images into k8s.io through containerd's CRI `PullImage` (module docstring)."""

    def __init__(
        self,
        *,
        owner: str,
        snapshotter: str,
        lease_expire: dt.timedelta,
        registries: RegistriesConfig,
        enabled: bool = True,
        progress_interval: float = 0.1,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.owner = owner
        self.snapshotter = snapshotter
        self.lease_expire = lease_expire
        self.registries = registries
        self.enabled = enabled
        self.progress_interval = progress_interval
        self.on_bytes = on_bytes
        self._missing: dict[str, float] = {}  # containerd address -> when its CRI was found missing

    # -- when ------------------------------------------------------------------------------------

    def containerd_can_reach(self, domain: str) -> bool:
        """Whether imaged would talk to `domain` exactly as containerd does by default: one
        endpoint, the registry itself, in containerd's default scheme, with no TLS settings."""
        api_host = registry_host(domain)
        default = Endpoint(scheme="http" if is_localhost(api_host) else "https", host=api_host, path="/v2")
        try:
            return endpoints(self.registries, domain) == [default]
        except errors.ImagedError:
            return False

    def found_missing(self, ns: Namespaced) -> bool:
        """Whether containerd's CRI plugin was found missing on this socket lately."""
        missing = self._missing.get(ns.cd.address)
        return missing is not None and time.monotonic() - missing < PROBE_AGAIN

    async def available(self, ns: Namespaced) -> bool:
        """Whether containerd's CRI plugin answers on this socket (asked again after a while)."""
        if self.found_missing(ns):
            return False
        try:
            await upstream.fs_info(ns)
        except errors.ImagedError as e:
            self._missing[ns.cd.address] = time.monotonic()
            log.info(
                "containerd's CRI at %s does not answer (%s): imaged pulls itself", ns.cd.address, e.message
            )
            return False
        self._missing.pop(ns.cd.address, None)
        return True

    async def applies(self, ns: Namespaced, ref: Reference) -> bool:
        """For machine.ImageService Pull: k8s.io, a registry containerd reaches as imaged would."""
        return (
            self.enabled
            and ns.namespace == CRI_NAMESPACE
            and self.containerd_can_reach(ref.domain)
            and await self.available(ns)
        )

    # -- the pull --------------------------------------------------------------------------------

    async def pull(
        self,
        ns: Namespaced,
        ref: Reference,
        progress: Progress,
        labels: dict[str, str],
        root: Descriptor | None,
    ) -> str:
        """machine.ImageService Pull of `ref` (pinned to a digest); returns the digest-pinned name."""
        assert ref.digest is not None
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref.pinned()))
        auth = configured_auth(self.registries, ref.domain)
        if auth is not None:
            request.auth.CopyFrom(auth)
        desc = root or Descriptor("", ref.digest, 0)
        what = f"error pulling image {ref}"
        try:
            pulled = await self.run(ns, ref, request, labels, progress=progress, root=desc)
        except upstream.CriError as e:
            raise pull_error(e, what) from None
        except errors.ImagedError as e:
            raise errors.in_context(e, what) from e
        return ref.pinned(pulled.target.digest)

    async def run(
        self,
        ns: Namespaced,
        ref: Reference,
        request: api_pb2.PullImageRequest,
        labels: dict[str, str],
        *,
        progress: Progress | None = None,
        root: Descriptor | None = None,
    ) -> Pulled:
        """containerd's CRI pulls `request.image` under a lease of ours; then the records of `ref`
        (its tag too) get `labels`. Raises `upstream.CriError` with containerd's answer."""
        started = time.time()
        async with lease(ns, owner=self.owner, purpose="cri-pull", expire=self.lease_expire) as lns:
            assert lns.lease is not None
            watcher = (
                IngestWatcher(lns, root, self.snapshotter, progress, started=started)
                if progress is not None and root is not None
                else None
            )
            watching = asyncio.create_task(watcher.run(self.progress_interval)) if watcher else None
            try:
                image_id = await upstream.pull(lns, request)
            except BaseException:
                await finish(self._release_ingests(ns, lns.lease))
                raise
            finally:
                if watching is not None:
                    watching.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watching
            async with _undone_on_failure(ns) as (created, updated):
                records = functools.partial(
                    self._records, lns, ref, image_id, labels, started, created, updated
                )
                if watcher is None:
                    pulled = await records()
                else:
                    # The last look (every layer's final state) beside the records, not after them.
                    steps: list[Callable[[], Awaitable[object]]] = [records, watcher.finish]
                    recorded, _ = await gather(steps)
                    assert isinstance(recorded, Pulled)
                    pulled = recorded
                    if self.on_bytes is not None:
                        self.on_bytes(watcher.downloaded_bytes())
        return pulled

    async def record(self, ns: Namespaced, ref: Reference, image_id: str, labels: dict[str, str]) -> Pulled:
        """The records and labels of an image containerd's CRI holds already, as `run` leaves
        them after a pull (only what differs is written; what this call made goes if it fails)."""
        async with _undone_on_failure(ns) as (created, updated):
            return await self._records(ns, ref, image_id, labels, time.time(), created, updated)

    async def _records(
        self,
        ns: Namespaced,
        ref: Reference,
        image_id: str,
        labels: dict[str, str],
        started: float,
        created: list[str],
        updated: dict[str, int],
    ) -> Pulled:
        """The tag record and imaged's labels beside those containerd's CRI made. `created` gets
        the names this pull made (containerd's CRI's too), for undoing them if the call fails,
        and `updated` when imaged labelled those containerd's CRI made: they are still this
        pull's (and go with it) unless another pull updated them since.

        One read (two without a digest) and the writes that change something, those at once:
        containerd commits each write on its own, and a pull of small layers is short enough for
        a round trip to show."""
        store = ImageStore(ns)
        # A pull pinned to a digest knows every name at once, and its target is the record
        # `repo@<pinned>` containerd's CRI made. Never the id's: containerd's CRI points the id
        # at the last image pulled with that config (a concurrent pull of an index wrapping the
        # same manifest), and the tag and the verified labels would follow it to that digest.
        names = record_names(ref, ref.digest, image_id, ns.namespace) if ref.digest else [image_id]
        found = {r.name: r for r in await store.list(*(f'name=="{n}"' for n in names))}
        self._made_here(found.values(), started, created)
        if ref.digest:
            pinned = found.get(ref.pinned())
            if pinned is None or pinned.target.digest != ref.digest:
                now = "is gone" if pinned is None else f"names {pinned.target.digest}"
                raise errors.Unavailable(
                    f"containerd's CRI pulled {ref.pinned()}, but its record {now} (removed or "
                    "changed meanwhile); nothing was recorded or labelled, try again"
                )
            target = pinned.target
        else:
            id_record = found.get(image_id)
            if id_record is None:
                raise errors.Unavailable(
                    f"containerd's CRI pulled {ref} as {image_id}, but that record is gone"
                )
            target = id_record.target
        wanted = {k: L.fit(k, v) for k, v in {**labels, L.CRI_MANAGED: "managed"}.items()}
        if not ref.digest:
            names = record_names(ref, target.digest, image_id, ns.namespace)
            others = [n for n in names if n not in found]
            if others:  # (no filter at all would list every record)
                more = await store.list(*(f'name=="{n}"' for n in others))
                self._made_here(more, started, created)
                found.update({r.name: r for r in more})

        async def write(name: str) -> None:
            record = found.get(name)
            if record is not None:
                if record.target.digest == target.digest and all(
                    record.labels.get(k, "") == v for k, v in wanted.items()
                ):
                    return
                changed = await store.update(name, target, wanted)  # known to exist: no Create first
                if changed is not None:
                    if name in created:
                        updated[name] = changed.updated_at
                    return
                # removed meanwhile: made again below
            if await store.put(name, target, wanted):
                created.append(name)

        await gather([functools.partial(write, name) for name in names])
        return Pulled(image_id, target, names)

    @staticmethod
    def _made_here(records: Iterable[Image], started: float, created: list[str]) -> None:
        """Records containerd's CRI made for this pull (since it started) are this pull's."""
        for record in records:
            if record.created_at / 1e9 >= started:
                created.append(record.name)

    async def _release_ingests(self, ns: Namespaced, lease_id: str) -> None:
        """Leave a failed pull's partial downloads to containerd's 24 h expiry of unleased
        ingests, so the next pull resumes them: an ingest reopened without a lease gets that
        expiry, and then outlives the lease. containerd may still hold one for a moment after
        the call ends (its pull stops on its own time): that one is waited for, briefly. An
        ingest holding all its bytes failed its digest check: it is aborted, or every later
        pull would resume it and fail the same way; one holding no bytes has nothing to resume
        and is aborted too (kept, it lingered for 24 h when the next pull found the blob present
        and never reopened it)."""
        try:
            resources = await ns.call(ns.leases.ListResources, leases_pb2.ListResourcesRequest(id=lease_id))
            refs = {r.id for r in resources.resources if r.type == "ingests"}
            if not refs:
                return
            content = ContentStore(ns.with_lease(None))
            statuses = [st for st in await content.statuses() if st.ref in refs]
            async with asyncio.timeout(RELEASE_WAIT):
                for st in statuses:
                    if st.offset == 0 or (st.total and st.offset >= st.total):
                        await content.abort(st.ref)
                        continue
                    w = await content.open_writer(st.ref, total=st.total, expected=st.expected)
                    if w is not None:
                        await w.close()
        except (errors.ImagedError, TimeoutError) as e:
            log.info("partial downloads of a failed pull may not be resumed: %s", getattr(e, "message", e))
