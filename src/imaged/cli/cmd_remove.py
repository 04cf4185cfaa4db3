"""imagectl rm: remove each image; report every failure, go on with the rest."""

from __future__ import annotations

import argparse
import re
import sys

import grpc

from imaged.cli.client import Client, instance, resolve_socket
from imaged.cli.errors import EXIT_FAILED, EXIT_USAGE, redact
from imaged.pb.machine import image_pb2


def mentions(message: str, ref: str) -> bool:
    """Whether the daemon's message already names `ref` (so it is not named twice)."""
    return re.search(rf"(^|[\s'\"]){re.escape(ref)}($|[\s'\":,])", message) is not None


def run(args: argparse.Namespace) -> int:
    failed = 0
    inst = instance(args.namespace)
    with Client(resolve_socket(args.socket), args.timeout) as client:
        for ref in args.images:
            req = image_pb2.ImageServiceRemoveRequest(containerd=inst, image_ref=ref)
            try:
                client.unary("Remove", req)
            except grpc.RpcError as e:
                err = client.error(e)
                if not mentions(err.message, ref):
                    err.message = f"cannot remove {ref}: {err.message}"
                if err.code == EXIT_USAGE:
                    raise err from None  # the daemon is gone: the other images would fail the same way
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    err.message = f"image {ref} not found"
                print(f"imagectl: {redact(err.message, args.secrets)}", file=sys.stderr, flush=True)
                failed += 1
                continue
            print(f"removed {ref}", flush=True)
    return EXIT_FAILED if failed else 0
