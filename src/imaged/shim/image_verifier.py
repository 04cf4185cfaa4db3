"""containerd 2.x image-verifier plugin (`bindir`): ask imaged's Verify before every pull.

containerd runs each executable in its verifier directory as
`<exe> -name <ref> -digest <digest> -stdin-media-type application/vnd.oci.descriptor.v1+json`
with the descriptor JSON on stdin; exit 0 allows the pull, anything else blocks it; stdout is
the reason (containerd keeps 32 KiB); containerd waits 10 s by default. No registry credentials
are passed, so the daemon's configured ones apply.

Decisions: verified, skipped and unmatched images are allowed (the policy's `noMatch: deny` and
`deny` rules are how to block); any error, including the daemon being unreachable, blocks: a
verifier that cannot decide must not say yes. The socket is $IMAGED_SOCKET or the default.
"""

from __future__ import annotations

import math
import os
import sys

from imaged.oci import jsondoc
from imaged.verdicts import WARN_NOTE, warned

MAX_REASON = 32 * 1024 - 1
DEFAULT_SOCKET = "/run/imaged/imaged.sock"
DESCRIPTOR_MEDIA_TYPE = "application/vnd.oci.descriptor.v1+json"
# Leave containerd's 10 s budget room for our own start-up.
RPC_TIMEOUT = 8.0


def _rpc_timeout() -> float | None:
    """$IMAGED_VERIFIER_TIMEOUT in seconds (a finite positive number), or None if it is unusable."""
    raw = os.environ.get("IMAGED_VERIFIER_TIMEOUT")
    if raw is None:
        return RPC_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _args(argv: list[str]) -> dict[str, str]:
    """Go `flag` style: -name value, --name value, -name=value."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            raise ValueError(f"unexpected argument {arg!r}")
        key = arg.lstrip("-")
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            i += 1
            if i >= len(argv):
                raise ValueError(f"flag -{key} needs a value")
            value = argv[i]
        out[key] = value
        i += 1
    return out


def decide(argv: list[str], stdin: bytes, socket: str) -> tuple[int, str]:
    """(exit code, reason) for one verification request."""
    try:
        args = _args(argv)
    except ValueError as e:
        return 2, f"imaged verifier: {e}"
    name, digest = args.get("name", ""), args.get("digest", "")
    media_type = args.get("stdin-media-type", "")
    if not name or not digest:
        return 2, "imaged verifier: -name and -digest are required"
    if stdin and media_type == DESCRIPTOR_MEDIA_TYPE:
        try:
            desc = jsondoc.loads(stdin)
        except ValueError:
            return 1, "imaged verifier: the descriptor on stdin is not JSON"
        if isinstance(desc, dict) and desc.get("digest") not in (None, digest):
            return 1, f"imaged verifier: descriptor digest {desc.get('digest')} differs from -digest {digest}"

    import grpc

    from imaged.errors import InvalidArgument
    from imaged.pb.machine import image_pb2, image_pb2_grpc
    from imaged.registry.reference import parse

    try:
        pinned = parse(name).with_digest(digest).pinned()
    except InvalidArgument as e:
        return 1, f"imaged verifier: {e.message}"
    timeout = _rpc_timeout()
    if timeout is None:
        return 1, "imaged verifier: IMAGED_VERIFIER_TIMEOUT must be a positive number of seconds"
    try:
        with grpc.insecure_channel(f"unix:{socket}") as channel:
            resp = image_pb2_grpc.ImageServiceStub(channel).Verify(
                image_pb2.ImageServiceVerifyRequest(image_ref=pinned), timeout=timeout
            )
    except grpc.RpcError as e:
        code = e.code()  # type: ignore[attr-defined]
        details = e.details()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE:
            return 1, f"imaged verifier: cannot reach imaged at {socket}: {details}"
        return 1, f"imaged verifier: {pinned}: {code.name}: {details}"
    if resp.verified and warned(resp.message):
        return 0, f"{WARN_NOTE}, not verified: {resp.digested_image_ref or pinned}: {resp.message}"
    if resp.verified:
        return 0, f"verified {resp.digested_image_ref}: {resp.message}"
    return 0, f"allowed without verification: {resp.message}"


def main() -> None:
    socket = os.environ.get("IMAGED_SOCKET", DEFAULT_SOCKET)
    try:
        stdin = sys.stdin.buffer.read(1 << 20) if not sys.stdin.isatty() else b""
    except OSError:
        stdin = b""
    code, reason = decide(sys.argv[1:], stdin, socket)
    sys.stdout.write(reason.encode("utf-8", "replace")[:MAX_REASON].decode("utf-8", "ignore") + "\n")
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
