"""Memory stays bounded whatever the archive's size (measured in a child process's peak RSS)."""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys

import pytest

from imaged.containerd.content import ContentStore
from imaged.containerd.images import ImageStore
from tests.archive.conftest import Importer

PROBE = pathlib.Path(__file__).with_name("memory_probe.py")


@pytest.mark.slow
async def test_1gib_archive_raises_peak_rss_by_less_than_100mib(importer: Importer) -> None:
    namespace, name = "arx-memory", "registry.test/archive/one-gib:v1"
    args = ["--socket", importer.containerd.socket, "--namespace", namespace, "--mib", "1024", "--name", name]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(PROBE), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["names"] == [name]
    growth_mib = (result["rss_after_kib"] - result["rss_before_kib"]) / 1024
    assert growth_mib < 100, result
    # The whole gibibyte reached containerd, as the layer of the recorded image.
    ns = importer.cd.ns(namespace)
    records = await importer.records(namespace)
    manifest = json.loads(await ContentStore(ns).read_all(records[name], 1 << 20))
    layer = await ContentStore(ns).info(manifest["layers"][0]["digest"])
    assert layer is not None and layer.size == 1 << 30
    store = ImageStore(ns)
    for record in records:
        await store.delete(record, sync=True)
    importer.gc(namespace)
