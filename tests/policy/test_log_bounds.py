"""Issue 19.7: what a client sends cannot forge log lines or flood the log.

The attack: from the read-only socket, a Verify whose image_ref holds a newline and a fake log
line wrote that line into the log as if the daemon had; four 15 MiB references made 45 MiB of
log. Now a reference longer than a sane bound is INVALID_ARGUMENT before anything reads it, and
every request-supplied string in a log line is escaped and cut."""

from __future__ import annotations

import grpc

from imaged.pb.machine import image_pb2, image_pb2_grpc
from tests.policy.conftest import refused
from tests.support.daemon import SYSTEM

FORGED = "2026-01-01 00:00:00,000 INFO imaged: configuration reloaded from /etc/imaged/evil.yaml"


def test_forged_lines_and_huge_references_stay_out_of_the_log(start, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ro_path = str(tmp_path / "ro.sock")
    d = start({}, listen={"readonly": {"path": ro_path, "mode": "0666"}}, log={"level": "debug"})
    ro = image_pb2_grpc.ImageServiceStub(grpc.insecure_channel(f"unix:{ro_path}"))
    e = refused(
        lambda: ro.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=f"x\n{FORGED}\n"), timeout=30)
    )
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
    e = refused(
        lambda: ro.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=f"x\r{FORGED}\x1b[2K"), timeout=30)
    )
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()

    before = d.log_path.stat().st_size
    huge = "a" * (15 << 20)
    calls = [
        lambda: d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=huge), timeout=60),
        lambda: list(
            d.images.Pull(image_pb2.ImageServicePullRequest(containerd=SYSTEM, image_ref=huge), timeout=60)
        ),
        lambda: d.images.Remove(
            image_pb2.ImageServiceRemoveRequest(containerd=SYSTEM, image_ref=huge), timeout=60
        ),
        lambda: ro.Verify(image_pb2.ImageServiceVerifyRequest(image_ref="b" * (3 << 20)), timeout=60),
        lambda: d.images.Verify(
            image_pb2.ImageServiceVerifyRequest(image_ref="ghcr.io/" + "a" * 1100), timeout=60
        ),
    ]
    for call in calls:
        e = refused(call)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), (e.details() or "")[:200])
        assert "longer than" in (e.details() or "") and len(e.details() or "") < 500
    grown = d.log_path.stat().st_size - before
    assert grown < 16 * 1024, f"{grown} bytes of log for {len(calls)} refused calls"

    assert d.health() == "SERVING"
    lines = d.logs().splitlines()
    assert not [line for line in lines if line.startswith(FORGED[:30])], "a client wrote a log line"
    assert not [line for line in lines if "\r" in line or "\x1b" in line], (
        "control characters reached the log"
    )
    assert any("\\n2026-01-01" in line for line in lines), "the refused reference is logged, escaped"


def test_text_formatter_keeps_one_record_per_line() -> None:
    import logging

    from imaged.daemon.observe import TextFormatter, shown

    assert shown("a\nb\x1b", 10) == "a\\nb\\x1b"
    assert shown("x" * 50, 10) == "x" * 10 + "...(40 more characters)"
    fmt = TextFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError(f"bad\n{FORGED}")
    except ValueError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "m %s", (f"1\n{FORGED}",), sys.exc_info())
    lines = fmt.format(record).split("\n")
    assert lines[0] == f"ERROR m 1\\n{FORGED}"
    assert all(line.startswith("    ") for line in lines[1:]), lines
