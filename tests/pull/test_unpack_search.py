"""The search for the deepest existing snapshot of a layer stack (pure logic: existence along a
chain is monotonic, so `exists` is replaced by a boundary)."""

from __future__ import annotations

import asyncio

import pytest

from imaged.containerd.unpack import Unpacker


class _Boundary(Unpacker):
    def __init__(self, present: int) -> None:  # chains[0..present] exist
        self.present = present
        self.asked: list[int] = []

    async def exists(self, chain_id: str) -> bool:
        i = int(chain_id)
        self.asked.append(i)
        return i <= self.present


@pytest.mark.parametrize("n", range(0, 12))
def test_finds_the_boundary_for_every_stack(n: int) -> None:
    for present in range(-1, n):
        u = _Boundary(present)
        assert asyncio.run(u._deepest_present([str(i) for i in range(n)])) == present
        assert len(u.asked) <= 2 + max(n, 1).bit_length()


def test_cold_and_warm_stacks_cost_two_stats_and_one() -> None:
    chains = [str(i) for i in range(40)]
    cold, warm = _Boundary(-1), _Boundary(39)
    assert asyncio.run(cold._deepest_present(chains)) == -1
    assert asyncio.run(warm._deepest_present(chains)) == 39
    assert (cold.asked, warm.asked) == ([39, 0], [39])
