"""The soak: a 10-round kill -9 loop over pulls and imports, then 50 concurrent clients for 60 s.

Run with `make soak` (or `IMAGED_SOAK=1 pytest tests/soak`). `IMAGED_SOAK_SECONDS` and
`IMAGED_SOAK_CLIENTS` change the load's length and width, `IMAGED_TEST_SEED` fixes the randomness.
The load mixes List, Verify (a signed image, whose verdict is cached, and unsigned ones, whose
failures expire at once), Pulls of shared images (many clients, same blobs) and of distinct ones, and
Imports. Afterwards: no unexpected error, every pulled or imported image complete and unpacked, the
daemon's RSS bounded, no lease, ingest or orphan left. A summary is printed at the end of the run.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest

from imaged.pb.machine import image_pb2
from tests.reliability.conftest import FAST_REGISTRIES, unique_image
from tests.reliability.crash import import_chunks, import_unavailable, kill_during_imports, kill_during_pulls
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.hygiene import ctr_remove_all, inspect, rss_kib, wait_clean
from tests.soak.conftest import SUMMARY
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import CRI, SYSTEM, DaemonProcess
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher, PrivateSigstore

SEED = int(os.environ.get("IMAGED_TEST_SEED", time.time_ns() % 1_000_000))
SECONDS = float(os.environ.get("IMAGED_SOAK_SECONDS", "60"))
CLIENTS = int(os.environ.get("IMAGED_SOAK_CLIENTS", "50"))
RSS_LIMIT_MIB = 768


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


def test_kill_9_loop(cd: PrivateContainerd, registry: Registry) -> None:
    """10 random moments of a pull (start, download, unpack in turn) and 10 of an import."""
    rng = random.Random(SEED)
    image = unique_image(size=24 << 20)
    archives.push(registry, "soak/kill", "v1", image)
    d = DaemonProcess(cd.socket, {"registries": FAST_REGISTRIES})
    d.start()
    lines = []
    try:
        with FaultProxy(registry.host, rate=24 << 20) as proxy:
            ref = f"{proxy.host}/soak/kill:v1"
            for i, result in enumerate(kill_during_pulls(cd, d, ref, image.digest, rounds=10, rng=rng)):
                lines.append(f"pull round {i}: killed at {result.moment}: leaks {result.report.leaks()}")
                assert result.report.clean, f"seed {SEED} round {i} ({result.moment}): {result.report}"
        reason = import_unavailable(d)
        if reason:
            lines.append(f"import rounds skipped: {reason}")
        else:
            data = archives.oci_archive([("import.test/soak/kill:v1", image)])
            for i, rep in enumerate(kill_during_imports(cd, d, data, image.digest, rounds=10, rng=rng)):
                lines.append(f"import round {i}: leaks {rep.leaks()}")
                assert rep.clean, f"seed {SEED} import round {i}: {rep}"
    finally:
        d.stop()
        ctr_remove_all(cd.socket, "system")
        SUMMARY.append(f"kill -9 loop (seed {SEED}):")
        SUMMARY.extend(f"  {line}" for line in lines)


# -- load ------------------------------------------------------------------------------------------


@dataclass
class Stats:
    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    outcomes: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, op: str, code: str, elapsed: float, problem: str | None) -> None:
        with self.lock:
            self.ops[op] += 1
            self.outcomes[(op, code)] += 1
            self.latency[op].append(elapsed)
            if problem:
                self.unexpected.append(problem)


@dataclass
class World:
    shared: list[tuple[str, str]]  # (ref, digest) pulled by many clients
    distinct: list[tuple[str, str]]  # pulled by one client each (while they last)
    signed: tuple[str, str]
    unsigned: list[str]
    archives: list[tuple[bytes, str]]  # (archive, manifest digest)
    verification: dict  # type: ignore[type-arg]


@pytest.fixture(scope="module")
def world(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> World:
    host = registry.host
    shared = []
    for i in range(4):
        img = unique_image(size=4 << 20)
        archives.push(registry, f"soak/shared{i}", "v1", img)
        shared.append((f"{host}/soak/shared{i}:v1", img.digest))
    distinct = []
    for i in range(150):
        img = unique_image(size=256 << 10)
        archives.push(registry, f"soak/distinct{i}", "v1", img)
        distinct.append((f"{host}/soak/distinct{i}:v1", img.digest))
    ps = PrivateSigstore()
    key = ps.static_key("soak")
    push = OciPusher(registry)
    signed = push.push_minimal_image("soak/verify/signed", "v1", label="signed").digest
    push.push_legacy_signatures(
        "soak/verify/signed", signed, [ps.sign_legacy(signed, f"{host}/soak/verify/signed", key, tlog=False)]
    )
    unsigned = []
    for i in range(20):
        digest = push.push_minimal_image(f"soak/verify/unsigned{i}", "v1", label=str(i)).digest
        unsigned.append(f"{host}/soak/verify/unsigned{i}@{digest}")
    imports = []
    for i in range(12):
        img = unique_image(size=1 << 20)
        imports.append((archives.oci_archive([(f"import.test/soak/imported{i}:v1", img)]), img.digest))
    verification = {
        "rules": [{"image": f"{host}/soak/verify/*", "publicKey": {"certificate": key.public_pem.decode()}}],
        "cache": {"successTtl": "5m", "failureTtl": "1ms"},
    }
    return World(shared, distinct, (f"{host}/soak/verify/signed:v1", signed), unsigned, imports, verification)


def test_load(cd: PrivateContainerd, world: World) -> None:
    d = DaemonProcess(cd.socket, {"registries": FAST_REGISTRIES, "verification": world.verification})
    d.start()
    assert d.proc is not None
    pid = d.proc.pid
    rng = random.Random(SEED)
    stats = Stats()
    import_reason = import_unavailable(d)
    can_import = import_reason is None
    distinct = list(world.distinct)
    distinct_lock = threading.Lock()
    pulled: dict[str, str] = {}  # ref -> digest, for the completeness check
    imported: set[str] = set()
    rss_samples: list[int] = []
    stop = threading.Event()
    deadline = time.monotonic() + SECONDS

    def sample_rss() -> None:
        while not stop.is_set():
            rss_samples.append(rss_kib(pid)[0])
            stop.wait(0.5)

    def timed(op: str, call: Callable[[], str | None], expect: tuple[str, ...] = ("OK",)) -> None:
        start = time.monotonic()
        problem: str | None = None
        try:
            problem = call()
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
            if code not in expect:
                problem = f"{op}: {code}: {e.details()}"
        if code not in expect and problem is None:
            problem = f"{op}: {code} not in {expect}"
        stats.record(op, code, time.monotonic() - start, problem)

    def do_list() -> str | None:
        inst = rng.choice([CRI, SYSTEM])
        list(d.images.List(image_pb2.ImageServiceListRequest(containerd=inst), timeout=60))
        return None

    def do_pull(ref: str, digest: str) -> str | None:
        name = None
        for msg in d.images.Pull(
            image_pb2.ImageServicePullRequest(containerd=SYSTEM, image_ref=ref), timeout=180
        ):
            if msg.WhichOneof("response") == "name":
                name = msg.name
        if name != f"{ref.rsplit(':', 1)[0]}@{digest}":
            return f"Pull {ref}: named {name!r}, expected digest {digest}"
        with distinct_lock:
            pulled[ref] = digest
        return None

    def do_verify_signed() -> str | None:
        ref, digest = world.signed
        resp = d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=ref), timeout=60)
        if not resp.verified or not resp.digested_image_ref.endswith(digest):
            return f"Verify {ref}: {resp}"
        return None

    def do_verify_unsigned() -> str | None:
        ref = rng.choice(world.unsigned)
        resp = d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=ref), timeout=60)
        return f"Verify {ref}: NEGATIVE CASE ANSWERED {resp}"  # it must have raised PERMISSION_DENIED

    def do_import() -> str | None:
        data, digest = rng.choice(world.archives)
        resp = d.images.Import(import_chunks(data, rng.choice([64 << 10, 1 << 20])), timeout=180)
        if not resp.name:
            return "Import: no name"
        with distinct_lock:
            imported.add(digest)
        return None

    def client(n: int) -> None:
        while time.monotonic() < deadline:
            r = rng.random()
            if r < 0.25:
                timed("List", do_list)
            elif r < 0.40:
                timed("Verify signed (cached)", do_verify_signed)
            elif r < 0.55:
                timed("Verify unsigned (uncached)", do_verify_unsigned, ("PERMISSION_DENIED",))
            elif r < 0.75:
                ref, digest = rng.choice(world.shared)
                timed("Pull shared", lambda ref=ref, digest=digest: do_pull(ref, digest))
            elif r < 0.90:
                with distinct_lock:
                    item = distinct.pop() if distinct else None
                if item is None:  # all pulled once: pull one again (present: answered at once)
                    item = rng.choice(world.distinct)
                timed("Pull distinct", lambda item=item: do_pull(*item))
            elif can_import:
                timed("Import", do_import)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            list(pool.map(client, range(CLIENTS)))
        duration = time.monotonic() - started
    finally:
        stop.set()
        sampler.join(5)
    _, peak_kib = rss_kib(pid)
    rep = wait_clean(cd.socket, "system", timeout=30)
    images = {img.split()[0] for img in cd.ctr("images", "ls", namespace="system").stdout.splitlines()[1:]}
    missing = [ref for ref in pulled if ref not in images]
    listed = cd.ctr("images", "ls", namespace="system").stdout
    missing += [digest for digest in imported if digest not in listed]
    health = d.health()
    d.stop()

    errors_by_kind = collections.Counter(
        f"{op} {code}" for (op, code), n in stats.outcomes.items() for _ in range(n) if code != "OK"
    )
    first_half = rss_samples[: len(rss_samples) // 2] or [0]
    second_half = rss_samples[len(rss_samples) // 2 :] or [0]
    SUMMARY.extend(
        [
            f"load: {CLIENTS} clients for {duration:.0f} s (seed {SEED}); "
            f"import {'on' if can_import else f'off ({import_reason})'}",
            f"  operations: {sum(stats.ops.values())} "
            + ", ".join(
                f"{op} {n} (p50 {_pct(stats.latency[op], 50):.2f}s, p99 {_pct(stats.latency[op], 99):.2f}s)"
                for op, n in sorted(stats.ops.items())
            ),
            f"  outcomes other than OK: {dict(errors_by_kind) or 'none'}",
            f"  unexpected errors: {len(stats.unexpected)}"
            + "".join(f"\n    {p}" for p in stats.unexpected[:20]),
            f"  daemon RSS: peak {peak_kib // 1024} MiB; mean {_mean(first_half) // 1024} MiB "
            f"in the first half, {_mean(second_half) // 1024} MiB in the second",
            f"  images pulled {len(pulled)}, imported {len(imported)}, records in containerd {rep.images}; "
            f"incomplete {len(rep.incomplete_images) + len(missing)}",
            f"  leaks found: {rep.leaks()} (leases {len(rep.leases)}, ingests {len(rep.ingests)}, "
            f"orphan blobs {len(rep.orphan_content)}, orphan snapshots {len(rep.orphan_snapshots)})",
        ]
    )
    assert stats.unexpected == [], stats.unexpected[:20]
    assert stats.ops["Pull shared"] and stats.ops["Pull distinct"] and stats.ops["List"], stats.ops
    assert health == "SERVING"
    assert not missing and rep.incomplete_images == [], (missing, rep.incomplete_images)
    assert rep.clean, rep
    assert peak_kib < RSS_LIMIT_MIB * 1024, f"daemon peak RSS {peak_kib // 1024} MiB"
    # Bounded, not growing without end: the second half's mean stays near the first's.
    assert _mean(second_half) < 1.5 * _mean(first_half) + 64 * 1024, (first_half, second_half)


def _pct(values: list[float], p: int) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


def _mean(values: list[int]) -> int:
    return sum(values) // max(len(values), 1)


def test_namespace_is_empty_after_removing_everything(cd: PrivateContainerd) -> None:
    """The soak leaves nothing behind once its images are removed (content and snapshots all go)."""
    ctr_remove_all(cd.socket, "system")
    rep = inspect(cd.socket, "system")
    assert rep.clean and rep.images == 0, rep
    assert cd.ctr("content", "ls", "-q", namespace="system").stdout.split() == []
