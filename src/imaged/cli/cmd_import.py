"""imagectl import: stream an image archive (file or stdin) to the daemon in 32 KiB chunks."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

import grpc

from imaged.cli.client import Client, cancel_on_interrupt, instance, resolve_socket
from imaged.cli.errors import EXIT_USAGE, CliError
from imaged.pb.common import common_pb2
from imaged.pb.machine import image_pb2

CHUNK = 32 * 1024


class ChunkReader:
    """Chunks of `stream`; remembers a read error, since grpc reports it only as a cancelled call."""

    def __init__(self, stream: IO[bytes], on_chunk: Callable[[int], None] | None = None) -> None:
        self.stream = stream
        self.on_chunk = on_chunk
        self.error: OSError | None = None
        self.sent = 0
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self.stream.read(CHUNK)
            except OSError as e:
                self.error = e
                raise
            if not chunk:
                self.done = True
                return
            self.sent += len(chunk)
            if self.on_chunk is not None:
                self.on_chunk(len(chunk))
            yield chunk


def _open(path: str) -> tuple[IO[bytes], str, int | None]:
    """(stream, name for messages, size if known) — checked before connecting to the daemon."""
    if path == "-":
        if sys.stdin.isatty():
            raise CliError(
                "refusing to read an image archive from a terminal; pipe one in or name a file", EXIT_USAGE
            )
        stream: IO[bytes] = sys.stdin.buffer
        label = "standard input"
    else:
        label = path
        try:
            stream = open(path, "rb")  # closed by run()
        except OSError as e:
            raise CliError(f"cannot open {path}: {e.strerror or e}", EXIT_USAGE) from None
    try:
        st = os.fstat(stream.fileno())
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
    except (OSError, ValueError):
        size = None
    if size is not None and size == 0:
        raise CliError(f"{label} is empty: nothing to import", EXIT_USAGE)
    return stream, label, size


def _requests(inst: common_pb2.ContainerdInstance, reader: ChunkReader) -> Iterator[Any]:
    yield image_pb2.ImageServiceImportRequest(containerd=inst)
    for chunk in reader:
        yield image_pb2.ImageServiceImportRequest(image_chunk=common_pb2.Data(bytes=chunk))


def run(args: argparse.Namespace) -> int:
    inst = instance(args.namespace)
    stream, label, size = _open(args.file)
    bar: Any = None
    try:
        with Client(resolve_socket(args.socket), args.timeout) as client:
            if sys.stdout.isatty():
                from imaged.cli.import_rich import ImportBar

                bar = ImportBar(size)
            reader = ChunkReader(stream, bar.advance if bar is not None else None)
            try:
                future = client.images.Import.future(_requests(inst, reader), timeout=args.timeout)
                try:
                    with cancel_on_interrupt(future):
                        response = _wait(future, reader, bar)
                except BaseException:
                    future.cancel()
                    raise
            except grpc.RpcError as e:
                if reader.error is not None:
                    raise CliError(
                        f"cannot read {label}: {reader.error.strerror or reader.error}", EXIT_USAGE
                    ) from None
                raise client.error(e) from None
            finally:
                if bar is not None:
                    bar.close()
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    print(f"imported image {response.name}", flush=True)
    return 0


def _wait(future: Any, reader: ChunkReader, bar: Any) -> Any:
    """The response; meanwhile tell a terminal user when sending ends and unpacking begins."""
    while True:
        try:
            return future.result(timeout=0.2)
        except grpc.FutureTimeoutError:
            if bar is not None and reader.done:
                bar.sent_all()
