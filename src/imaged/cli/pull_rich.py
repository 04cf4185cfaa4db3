"""Pull progress on a terminal: a rich bar per layer and an overall line.

Imported only when stdout is a terminal, so piped pulls and other commands never load rich.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from imaged.cli.formatting import human_size, percent
from imaged.cli.pull_view import FINAL, LayerUpdate, Status

OVERALL = "total"


def _speed(task: Task) -> str:
    speed = task.finished_speed or task.speed
    return f"  {human_size(int(speed))}/s" if speed else ""


class StateColumn(ProgressColumn):
    """Bytes, percentage and speed while downloading; elapsed while extracting; else the final state."""

    def render(self, task: Task) -> Text:
        f: dict[str, Any] = task.fields
        state = f.get("state", "")
        if state == "downloading":
            total = int(task.total or 0)
            done = int(task.completed)
            if total:
                text = f"{human_size(done)}/{human_size(total)}  {percent(done, total):5.1f}%"
            else:
                text = human_size(done)
            return Text(f"downloading {text}{_speed(task)}")
        if state == "extracting":
            elapsed = f.get("elapsed", 0.0) + (time.monotonic() - f.get("since", time.monotonic()))
            return Text(f"extracting ({elapsed:.1f}s)", style="cyan")
        if state == "overall":
            total = int(task.total or 0)
            done = int(task.completed)
            text = f"{human_size(done)}/{human_size(total)}  {percent(done, total):5.1f}%" if total else ""
            return Text(f"{text}{_speed(task)}  {f.get('layers', '')}".strip(), style="bold")
        style = "green" if state in ("complete", "already exists") else ""
        size = int(f.get("size", 0))
        # A finished layer keeps its size on screen: a fast pull may never draw "downloading".
        return Text(f"{human_size(size)}  {state}" if size else state, style=style)


class RichPullView:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            StateColumn(),
            console=self.console,
            refresh_per_second=8,
        )
        self._tasks: dict[str, Any] = {}
        self._layers: dict[str, LayerUpdate] = {}
        self._overall: Any = None

    def _ensure_started(self) -> None:
        if self._overall is None:
            self._overall = self.progress.add_task(OVERALL, total=None, state="overall")
            self.progress.start()

    def update(self, u: LayerUpdate) -> None:
        self._ensure_started()
        task = self._tasks.get(u.layer_id)
        if task is None:
            task = self._tasks[u.layer_id] = self.progress.add_task(u.layer_id, total=None, state="")
        total = u.total or None
        if u.total:
            self.progress.update(task, size=u.total)
        match u.status:
            case Status.DOWNLOADING:
                self.progress.update(task, total=total, completed=u.offset, state="downloading")
            case Status.DOWNLOAD_COMPLETE:
                self.progress.update(
                    task, total=total, completed=u.offset or u.total, state="download complete"
                )
            case Status.EXTRACTING:
                self.progress.update(
                    task,
                    total=total or 1,
                    completed=total or 1,
                    state="extracting",
                    elapsed=u.elapsed,
                    since=time.monotonic(),
                )
            case Status.EXTRACT_COMPLETE:
                self.progress.update(task, total=total or 1, completed=total or 1, state="complete")
            case Status.ALREADY_EXISTS:
                self.progress.update(task, total=total or 1, completed=total or 1, state="already exists")
            case _:
                self.progress.update(task, state=f"status {u.status}")
        previous = self._layers.get(u.layer_id)
        if u.status in (Status.EXTRACTING, Status.EXTRACT_COMPLETE) and previous is not None:
            # Extraction messages may carry no sizes: keep the downloaded ones for the overall line.
            u = LayerUpdate(
                u.layer_id, u.status, u.offset or previous.offset, u.total or previous.total, u.elapsed
            )
        self._layers[u.layer_id] = u
        self._update_overall()

    def _update_overall(self) -> None:
        done = total = 0
        finished = 0
        for u in self._layers.values():
            if u.status == Status.ALREADY_EXISTS:
                finished += 1
                continue
            total += u.total
            done += u.total if u.status != Status.DOWNLOADING else min(u.offset, u.total or u.offset)
            finished += u.status in FINAL
        self.progress.update(
            self._overall,
            total=total or None,
            completed=done,
            layers=f"{finished}/{len(self._layers)} layers complete",
        )

    def close(self) -> None:
        if self._overall is not None:
            self.progress.stop()
