"""The plain pull view: state changes at once, repeats of an ongoing state at most once a second."""

from __future__ import annotations

from imaged.cli.pull_view import LayerUpdate, PlainPullView, Status, describe


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_describe_forms() -> None:
    lid = "1a2b3c4d5e6f"
    assert describe(LayerUpdate(lid, Status.DOWNLOADING, 1_200_000, 3_400_000)) == (
        "layer 1a2b3c4d5e6f downloading 1.2 MB/3.4 MB (35.3%)"
    )
    assert (
        describe(LayerUpdate(lid, Status.DOWNLOADING, 1_200_000, 0))
        == "layer 1a2b3c4d5e6f downloading 1.2 MB"
    )
    assert (
        describe(LayerUpdate(lid, Status.DOWNLOAD_COMPLETE, 5, 5)) == "layer 1a2b3c4d5e6f download complete"
    )
    assert (
        describe(LayerUpdate(lid, Status.EXTRACTING, elapsed=1.5)) == "layer 1a2b3c4d5e6f extracting (1.5s)"
    )
    assert describe(LayerUpdate(lid, Status.EXTRACT_COMPLETE)) == "layer 1a2b3c4d5e6f pull complete"
    assert describe(LayerUpdate(lid, Status.ALREADY_EXISTS)) == "layer 1a2b3c4d5e6f already exists"
    assert describe(LayerUpdate(lid, 9)) == "layer 1a2b3c4d5e6f status 9"


def test_rate_bounded_per_layer() -> None:
    clock, lines = Clock(), list[str]()
    view = PlainPullView(lines.append, clock=clock)
    for i in range(50):  # 5 s of updates every 100 ms for layer a, interleaved with layer b
        clock.now = 100 + i / 10
        view.update(LayerUpdate("a", Status.DOWNLOADING, i * 1000, 50_000))
        view.update(LayerUpdate("b", Status.DOWNLOADING, i * 10, 500))
    a = [line for line in lines if line.startswith("layer a ")]
    b = [line for line in lines if line.startswith("layer b ")]
    assert len(a) == len(b) == 5, lines  # at 0, 1, 2, 3 and 4 s
    assert a[0] == "layer a downloading 0 B/50 kB (0.0%)"
    # A state change is printed at once even within the second; a repeated final state is not.
    view.update(LayerUpdate("a", Status.DOWNLOAD_COMPLETE, 50_000, 50_000))
    view.update(LayerUpdate("a", Status.EXTRACTING, elapsed=0.0))
    view.update(LayerUpdate("a", Status.EXTRACTING, elapsed=0.05))
    view.update(LayerUpdate("a", Status.EXTRACT_COMPLETE))
    view.update(LayerUpdate("a", Status.EXTRACT_COMPLETE))
    assert lines[-3:] == ["layer a download complete", "layer a extracting (0.0s)", "layer a pull complete"]
    clock.now += 5
    view.update(LayerUpdate("a", Status.EXTRACT_COMPLETE))
    assert lines[-1] == "layer a pull complete" and lines.count("layer a pull complete") == 1


def test_long_extraction_reports_elapsed_each_second() -> None:
    clock, lines = Clock(), list[str]()
    view = PlainPullView(lines.append, clock=clock)
    for i in range(31):
        clock.now = 100 + i / 10
        view.update(LayerUpdate("c", Status.EXTRACTING, elapsed=i / 10))
    assert lines == [f"layer c extracting ({s:.1f}s)" for s in (0.0, 1.0, 2.0, 3.0)]
