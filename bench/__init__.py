"""`make bench`: imaged against containerd's own tools, on real components, as ratios.

Run as `python -m bench` (see bench/__main__.py). Scenarios: pull, import, list, verify; each
compares imaged with `ctr` in the same run and reports containerd's own floor for the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.data import Spec

MiB = 1 << 20
KiB = 1 << 10


@dataclass(frozen=True)
class Sizes:
    """How big everything is: `full()` is the issue's benchmark, `quick()` a smoke test."""

    big: Spec
    small: Spec
    # Pulls into k8s.io against containerd's CRI PullImage (bench/cri.py).
    cri: tuple[Spec, ...]
    # The archive whose import is watched for the daemon's peak RSS: layers x layer size.
    rss_layers: int
    rss_layer_size: int
    list_images: int
    verify_cached_calls: int
    verify_uncached_calls: int
    verify_clients: int
    verify_seconds: float
    import_chunk: int = 1 * MiB

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            big=Spec("big", 8, 32 * MiB, seed=1),
            small=Spec("small", 40, 64 * KiB, seed=2, repeat=3),
            cri=(
                Spec("one", 1, 256 * MiB, seed=3),
                Spec("big", 8, 32 * MiB, seed=1),
                Spec("small", 40, 64 * KiB, seed=2, repeat=3),
            ),
            rss_layers=32,
            rss_layer_size=32 * MiB,
            list_images=2000,
            verify_cached_calls=2000,
            verify_uncached_calls=200,
            verify_clients=50,
            verify_seconds=8.0,
        )

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            big=Spec("big", 2, 1 * MiB, seed=1),
            small=Spec("small", 4, 16 * KiB, seed=2),
            cri=(
                Spec("one", 1, 2 * MiB, seed=3),
                Spec("big", 2, 1 * MiB, seed=1),
                Spec("small", 4, 16 * KiB, seed=2),
            ),
            rss_layers=2,
            rss_layer_size=2 * MiB,
            list_images=50,
            verify_cached_calls=30,
            verify_uncached_calls=10,
            verify_clients=5,
            verify_seconds=1.0,
        )

    def describe(self) -> list[str]:
        return [
            "Sizes: pull and import of "
            f"{self.big.label} and {self.small.label} of incompressible data; import RSS watched on a "
            f"{self.rss_layers * self.rss_layer_size / (1 << 30):.2f} GiB archive; list of "
            f"{self.list_images} records; verify with {self.verify_clients} concurrent clients for "
            f"{self.verify_seconds:.0f} s. Every pull/import run is cold (all records removed with a "
            "synchronous GC; content, snapshots, ingests and leases checked empty before the next run).",
        ]
