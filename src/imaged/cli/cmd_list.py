"""imagectl list: the images of a namespace as a table, JSON lines or bare names."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from dataclasses import dataclass

from imaged.cli.client import Client, cancel_on_interrupt, instance, resolve_socket
from imaged.cli.formatting import format_labels, human_size, rfc3339, short_digest, table
from imaged.pb.machine import image_pb2

HEADER = ("IMAGE", "DIGEST", "SIZE", "LABELS", "CREATED")
LABEL_WIDTH = 24  # characters of a label's value shown on a terminal (--no-trunc: all)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    digest: str
    size: int
    labels: dict[str, str]
    created_at: str | None

    def json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "digest": self.digest,
                "size": self.size,
                "labels": dict(sorted(self.labels.items())),
                "created_at": self.created_at,
            },
            separators=(",", ":"),
        )


def fetch(args: argparse.Namespace) -> list[Row]:
    req = image_pb2.ImageServiceListRequest(containerd=instance(args.namespace))
    with Client(resolve_socket(args.socket), args.timeout) as client, client.rpc():
        call = client.images.List(req, timeout=args.timeout)
        with cancel_on_interrupt(call):
            responses = list(call)
    return [
        Row(r.name, r.digest, r.size, dict(r.labels), rfc3339(r.created_at.seconds, r.created_at.nanos))
        for r in responses
    ]


def matches(name: str, globs: list[str]) -> bool:
    return not globs or any(fnmatch.fnmatchcase(name, g) for g in globs)


def run(args: argparse.Namespace) -> int:
    rows = sorted((r for r in fetch(args) if matches(r.name, args.filter)), key=lambda r: r.name)
    out = sys.stdout
    if args.quiet:
        out.write("".join(f"{r.name}\n" for r in rows))
    elif args.output == "json":
        out.write("".join(f"{r.json()}\n" for r in rows))
    else:
        trunc = out.isatty() and not args.no_trunc
        out.write(
            table(
                HEADER,
                (
                    (
                        r.name,
                        short_digest(r.digest) if trunc else r.digest,
                        human_size(r.size),
                        format_labels(r.labels, LABEL_WIDTH if trunc else None),
                        r.created_at or "-",
                    )
                    for r in rows
                ),
            )
        )
    out.flush()
    return 0
