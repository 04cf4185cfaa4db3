"""The bytes-sent bar of imagectl import on a terminal (rich is loaded only here)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn


class ImportBar:
    def __init__(self, size: int | None) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(highlight=False),
        )
        self.task = self.progress.add_task("sending", total=size)
        self._announced = False
        self.progress.start()

    def advance(self, n: int) -> None:
        """Called from grpc's request thread; rich's Progress is thread-safe."""
        self.progress.advance(self.task, n)

    def sent_all(self) -> None:
        if not self._announced:
            self._announced = True
            done = self.progress.tasks[0].completed
            self.progress.update(self.task, total=done, description="sent, imaged is unpacking")

    def close(self) -> None:
        self.progress.stop()
