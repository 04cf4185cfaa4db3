"""imagectl pull: stream the daemon's per-layer progress, end with the digest-pinned reference."""

from __future__ import annotations

import argparse
import sys

from imaged.cli.client import Client, cancel_on_interrupt, instance, resolve_socket
from imaged.cli.errors import CliError
from imaged.cli.pull_view import LayerUpdate, PlainPullView, PullView
from imaged.pb.machine import image_pb2


def _plain_line(line: str) -> None:
    # Flushed per line: a log or a pipe should see progress as it happens, not at exit.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def make_view() -> PullView:
    if sys.stdout.isatty():
        from imaged.cli.pull_rich import RichPullView

        return RichPullView()
    return PlainPullView(_plain_line)


def run(args: argparse.Namespace) -> int:
    req = image_pb2.ImageServicePullRequest(containerd=instance(args.namespace), image_ref=args.image)
    name = ""
    with Client(resolve_socket(args.socket), args.timeout) as client:
        view = make_view()
        call = client.images.Pull(req, timeout=args.timeout)
        try:
            with client.rpc(), cancel_on_interrupt(call):
                for msg in call:
                    if msg.WhichOneof("response") == "name":
                        name = msg.name
                        continue
                    p = msg.pull_progress
                    view.update(
                        LayerUpdate(
                            p.layer_id,
                            int(p.progress.status),
                            p.progress.offset,
                            p.progress.total,
                            p.progress.elapsed.ToTimedelta().total_seconds(),
                        )
                    )
        except BaseException:
            call.cancel()  # Ctrl-C or a display error: the daemon stops downloading for us
            raise
        finally:
            view.close()
    if not name:
        raise CliError(f"imaged ended the pull of {args.image} without naming the pulled image")
    print(f"pulled image {name}", flush=True)
    return 0
