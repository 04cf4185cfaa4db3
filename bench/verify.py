"""Verify: latency (cached, uncached) and throughput with concurrent grpc.aio clients.

Policy: one static-key rule, `<registry>/bench/*` with the private Sigstore's ECDSA P-256 public
key; the image `<registry>/bench/signed` carries a cosign legacy (`.sig` tag) signature made with
that key. Calls use the digest form (`repo@sha256:...`), as CRI's verifier and pinned pulls do.

Uncached = the cache disabled: a second daemon on the same containerd with
`verification.cache.maxEntries: 0`, so every call does the full work (referrers API probe,
`sha256-<hex>` referrers tag, `sha256-<hex>.sig` tag, signature blob, ECDSA check).

Server-side latency, two ways: the daemon's own histogram `imaged_request_seconds{method="Verify"}`
(scraped from its metrics endpoint before and after; it times the handler inside the server
interceptor), and the client's p50 minus the p50 of an empty RPC (grpc health Check, which the
interceptor does not see) on the same channel, i.e. the transport cost taken out.
"""

from __future__ import annotations

import asyncio
import math
import pathlib
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import Sizes
from bench.env import Bench, daemon_config, histogram, log
from bench.measure import Case, Series, percentile, proc_cpu
from bench.profiling import profile_once
from imaged.pb.machine import image_pb2, image_pb2_grpc
from tests.support import archives
from tests.support.daemon import DaemonProcess
from tests.support.registry import free_port
from tests.support.sigstore import OciPusher, PrivateSigstore

CACHED_P50_MS = 1.0
THROUGHPUT = 2000.0
UNCACHED_P50_MS = 30.0


def setup_images(bench: Bench, count: int) -> tuple[str, list[str]]:
    """Push a signed runnable image and `count` small signed ones; return their digest references."""
    ps = PrivateSigstore(seed=b"imaged-bench")
    key = ps.static_key()
    assert key.public_pem.decode() == bench.public_pem
    host = bench.registry.host
    pusher = OciPusher(bench.registry)
    digest = archives.push(bench.registry, "bench/signed", "v1", archives.simple_image("bench-verify"))
    pusher.push_legacy_signatures(
        "bench/signed", digest, [ps.sign_legacy(digest, f"{host}/bench/signed", key, tlog=False)]
    )
    many = []
    for i in range(count):
        d = pusher.push_minimal_image("bench/many", f"v{i}", label=f"bench-{i}").digest
        pusher.push_legacy_signatures(
            "bench/many", d, [ps.sign_legacy(d, f"{host}/bench/many", key, tlog=False)]
        )
        many.append(f"{host}/bench/many@{d}")
    return f"{host}/bench/signed@{digest}", many


def sequential(stub: Any, request: Any, n: int) -> list[float]:
    """Latencies in ms of `n` calls one after the other."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        stub(request, timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def check_verified(d: DaemonProcess, ref: str) -> None:
    resp = d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=ref), timeout=60)
    if not resp.verified:
        raise RuntimeError(f"Verify {ref}: not verified: {resp.message}")


def hist_delta(before: dict[float, float], after: dict[float, float]) -> dict[float, float]:
    return {le: after.get(le, 0.0) - before.get(le, 0.0) for le in sorted(after)}


def hist_quantile(delta: dict[float, float], q: float) -> float:
    """Quantile in ms, interpolated linearly inside the bucket where the cumulative count crosses q."""
    total = delta.get(float("inf"), 0.0)
    if total <= 0:
        return float("nan")
    lower, below = 0.0, 0.0
    for le, cum in delta.items():
        if cum >= q * total:
            if math.isinf(le):
                return lower * 1000
            inside = cum - below
            frac = (q * total - below) / inside if inside else 1.0
            return (lower + (le - lower) * frac) * 1000
        lower, below = le, cum
    return float("nan")


def share_under(delta: dict[float, float], bound: float) -> float:
    total = delta.get(float("inf"), 0.0)
    return delta.get(bound, 0.0) / total if total else float("nan")


async def _load(socket: str, refs: list[str], clients: int, seconds: float) -> tuple[int, list[float], int]:
    """`clients` channels each calling Verify back to back for `seconds`: (calls, latencies ms, errors).

    Client i verifies refs[i % len(refs)]: with one image per client, concurrent calls never wait on
    one another's verification (the verifier runs one check per image at a time and shares it).
    """
    requests = [image_pb2.ImageServiceVerifyRequest(image_ref=r) for r in refs]
    channels = [grpc.aio.insecure_channel(f"unix:{socket}") for _ in range(clients)]
    lat: list[float] = []
    errors = 0
    try:
        stubs = [image_pb2_grpc.ImageServiceStub(ch) for ch in channels]
        for i, s in enumerate(stubs):  # connect every channel before the clock starts
            await s.Verify(requests[i % len(requests)], timeout=30)
        stop = time.perf_counter() + seconds

        async def client(stub: Any, request: Any) -> int:
            nonlocal errors
            n = 0
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    await stub.Verify(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                lat.append((time.perf_counter() - t0) * 1000)
                n += 1
            return n

        counts = await asyncio.gather(*(client(s, requests[i % len(requests)]) for i, s in enumerate(stubs)))
        return sum(counts), lat, errors
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))


def load(bench: Bench, d: DaemonProcess, refs: list[str], clients: int, seconds: float) -> dict[str, float]:
    assert d.proc is not None
    pid = d.proc.pid
    assert bench.registry.proc is not None
    reg_pid = bench.registry.proc.pid
    cpu0, reg0, b0, t0 = proc_cpu(pid), proc_cpu(reg_pid), time.process_time(), time.perf_counter()
    calls, lat, errors = asyncio.run(_load(d.socket, refs, clients, seconds))
    wall = time.perf_counter() - t0
    daemon_cpu = proc_cpu(pid) - cpu0
    return {
        "calls": calls,
        "errors": errors,
        "wall": wall,
        "rate": calls / seconds,
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
        "daemon_cpu": daemon_cpu,
        "client_cpu": time.process_time() - b0,
        "registry_cpu": proc_cpu(reg_pid) - reg0,
        "per_cpu_second": calls / daemon_cpu if daemon_cpu > 0 else float("nan"),
    }


def run(bench: Bench, sizes: Sizes, out_dir: pathlib.Path, profile: bool) -> list[Case]:
    ref, many = setup_images(bench, sizes.verify_clients)
    port = free_port()
    nocache = DaemonProcess(
        bench.containerd.socket,
        daemon_config(bench.registry.host, bench.public_pem, port)
        | {
            "verification": {
                "rules": [
                    {
                        "image": f"{bench.registry.host}/bench/*",
                        "publicKey": {"certificate": bench.public_pem},
                    }
                ],
                "cache": {"maxEntries": 0},
            }
        },
    )
    nocache.start()
    bench.extra_daemons.append(nocache)
    check_verified(bench.daemon, ref)
    check_verified(nocache, ref)
    request = image_pb2.ImageServiceVerifyRequest(image_ref=ref)
    health = health_pb2.HealthCheckRequest()

    # -- latency, one call at a time ---------------------------------------------------------------
    n, nu = sizes.verify_cached_calls, sizes.verify_uncached_calls
    hstub = health_pb2_grpc.HealthStub(bench.daemon.channel).Check
    sequential(hstub, health, 50)  # warm-up
    base = sequential(hstub, health, n)
    before = histogram(bench.metrics(), "Verify")
    cached = sequential(bench.daemon.images.Verify, request, n)
    cached_hist = hist_delta(before, histogram(bench.metrics(), "Verify"))
    log(f"verify cached: p50 {percentile(cached, 50):.3f} ms, empty RPC p50 {percentile(base, 50):.3f} ms")

    nocache_metrics = f"http://127.0.0.1:{port}/metrics"
    import urllib.request

    def scrape() -> str:
        with urllib.request.urlopen(nocache_metrics, timeout=10) as r:
            return str(r.read().decode())

    ubase = sequential(health_pb2_grpc.HealthStub(nocache.channel).Check, health, min(n, 200))
    before = histogram(scrape(), "Verify")
    uncached = sequential(nocache.images.Verify, request, nu)
    uncached_hist = hist_delta(before, histogram(scrape(), "Verify"))
    log(f"verify uncached: p50 {percentile(uncached, 50):.3f} ms")

    # -- throughput, concurrent clients -------------------------------------------------------------
    clients, secs = sizes.verify_clients, sizes.verify_seconds
    tput = load(bench, bench.daemon, many, clients, secs)
    log(f"verify cached throughput: {tput['rate']:.0f}/s, daemon CPU {tput['daemon_cpu']:.2f}s")
    utput = load(bench, nocache, many, clients, secs)
    log(f"verify uncached throughput: {utput['rate']:.0f}/s")

    def ms(v: float) -> str:
        return f"{v:.3f} ms" if v < 1 else f"{v:.2f} ms"

    # -- cached ----------------------------------------------------------------------------------------
    c = Case("verify", "cached (static key, legacy signature)", reference="", subject="imaged")
    c.add(Series("Verify, client latency", cached, unit="ms"))
    c.add(Series("health Check (empty RPC)", base, unit="ms"))
    server_hist = hist_quantile(cached_hist, 0.5)
    server_diff = percentile(cached, 50) - percentile(base, 50)
    c.checks.append(
        (
            "p50 at the server (daemon histogram)",
            ms(server_hist),
            f"< {CACHED_P50_MS:g} ms",
            server_hist < CACHED_P50_MS,
        )
    )
    c.checks.append(
        (
            "p50 client minus empty RPC",
            # Two medians of a noisy machine: a Verify can come out cheaper than the empty call.
            ms(server_diff) if server_diff >= 0 else f"{ms(0)} (measured {ms(server_diff)}: noise)",
            f"< {CACHED_P50_MS:g} ms",
            server_diff < CACHED_P50_MS,
        )
    )
    c.checks.append(
        (
            f"throughput, {clients} clients",
            f"{tput['rate']:,.0f}/s",
            f">= {THROUGHPUT:,.0f}/s",
            tput["rate"] >= THROUGHPUT,
        )
    )
    c.extra += [
        ("client p50 / p99", f"{ms(percentile(cached, 50))} / {ms(percentile(cached, 99))}"),
        ("empty RPC p50 / p99", f"{ms(percentile(base, 50))} / {ms(percentile(base, 99))}"),
        (
            "server p50 / p99 (histogram, interpolated)",
            f"{ms(server_hist)} / {ms(hist_quantile(cached_hist, 0.99))}",
        ),
        (
            "share of calls <= 0.5 ms / <= 1 ms at the server",
            f"{share_under(cached_hist, 0.0005):.0%} / {share_under(cached_hist, 0.001):.0%}",
        ),
        *_load_rows(tput, clients, secs),
    ]
    # -- uncached -------------------------------------------------------------------------------------
    u = Case("verify", "uncached (cache disabled: maxEntries 0)", reference="", subject="imaged")
    u.add(Series("Verify, client latency", uncached, unit="ms"))
    u.add(Series("health Check (empty RPC)", ubase, unit="ms"))
    up50 = percentile(uncached, 50)
    u.checks.append(("p50, client", ms(up50), f"< {UNCACHED_P50_MS:g} ms", up50 < UNCACHED_P50_MS))
    u.extra += [
        ("client p50 / p99", f"{ms(up50)} / {ms(percentile(uncached, 99))}"),
        (
            "server p50 / p99 (histogram, interpolated)",
            f"{ms(hist_quantile(uncached_hist, 0.5))} / {ms(hist_quantile(uncached_hist, 0.99))}",
        ),
        *_load_rows(utput, clients, secs),
    ]
    u.notes.append(
        "each uncached call: OCI referrers API probe (docker-registry 2.8 answers 404), the "
        "`sha256-<hex>` referrers tag, the `sha256-<hex>.sig` manifest and its signature layer, then the "
        "ECDSA check; the registry is on loopback"
    )
    for case in (c, u):
        case.notes.append(
            "latency: one call at a time from a sync grpc client in the bench process; throughput: "
            f"{clients} grpc.aio channels in the bench process, each calling back to back for {secs:g} s "
            "(the bench client shares the machine's cores with the daemon, see client CPU); each client "
            "verifies its own signed image, so no call waits on another's verification"
        )
    if profile and not all(ok for *_, ok in c.checks):
        log("verify: a target was missed, profiling the daemon under the cached load")
        c.profile = profile_once(
            "verify-cached",
            bench.daemon_pid,
            out_dir / "profiles",
            lambda: load(bench, bench.daemon, many, clients, secs),
        )
    if profile and not all(ok for *_, ok in u.checks):
        assert nocache.proc is not None
        u.profile = profile_once(
            "verify-uncached",
            nocache.proc.pid,
            out_dir / "profiles",
            lambda: sequential(nocache.images.Verify, request, nu),
        )
    nocache.stop()
    bench.extra_daemons.remove(nocache)
    return [c, u]


def _load_rows(t: dict[str, float], clients: int, secs: float) -> list[tuple[str, str]]:
    return [
        (
            f"throughput, {clients} clients, {secs:g} s",
            f"{t['rate']:,.0f}/s ({int(t['calls'])} calls, {int(t['errors'])} errors)",
        ),
        ("latency under that load p50 / p99", f"{t['p50']:.2f} ms / {t['p99']:.2f} ms"),
        (
            "CPU during the load: daemon / bench client / docker-registry",
            f"{t['daemon_cpu']:.2f} s / {t['client_cpu']:.2f} s / {t['registry_cpu']:.2f} s",
        ),
        (
            "verifications per daemon CPU-second (the daemon's ceiling on one core)",
            f"{t['per_cpu_second']:,.0f}",
        ),
    ]
