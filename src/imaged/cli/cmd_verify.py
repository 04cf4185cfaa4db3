"""imagectl verify: ask the daemon's policy about an image (the call CRI makes before a pull).

Exit 0 verified, 1 not verified (no rule matched, or a skip rule), 2 any error — a denied
verification (PERMISSION_DENIED) included, since a script must not mistake it for "unsigned".
With `-o json` an error is also a JSON document: `{"image", "verified": false, "error": {"code",
"message"}}`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

import grpc

from imaged.cli.client import Client, resolve_socket
from imaged.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError, redact
from imaged.pb.machine import image_pb2
from imaged.verdicts import warned


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    if args.password_stdin:
        if sys.stdin.isatty():
            return getpass.getpass("Password: ")
        # Like docker login: the whole input, minus the line end `echo` adds.
        return sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {args.username}: ")
    raise CliError("--username needs --password or --password-stdin", EXIT_USAGE)


def registry_host(image: str) -> str:
    """The host the credentials are for: the image's registry after normalization (docker.io for Hub)."""
    from imaged.errors import InvalidArgument
    from imaged.registry.reference import parse

    try:
        return parse(image).domain
    except InvalidArgument as e:
        raise CliError(
            f"cannot tell the registry of {image!r} ({e.message}); pass --registry-host", EXIT_USAGE
        ) from None


def credentials(args: argparse.Namespace) -> image_pb2.ImageServiceCredentials | None:
    if args.username is None:
        if args.password is not None or args.password_stdin:
            raise CliError("a password needs --username", EXIT_USAGE)
        if args.registry_host is not None:
            raise CliError("--registry-host names where credentials go: it needs --username", EXIT_USAGE)
        return None
    password = _password(args)
    args.secrets.add(password)
    host = args.registry_host or registry_host(args.image)
    return image_pb2.ImageServiceCredentials(host=host, username=args.username, password=password)


def run(args: argparse.Namespace) -> int:
    creds = credentials(args)
    req = image_pb2.ImageServiceVerifyRequest(image_ref=args.image)
    if creds is not None:
        req.credentials.CopyFrom(creds)
    with Client(resolve_socket(args.socket), args.timeout) as client:
        try:
            resp = client.unary("Verify", req)
        except grpc.RpcError as e:
            err = client.error(e)
            err.code = EXIT_USAGE
            if args.output == "json":
                # A script asked for JSON: it gets the refusal as JSON too (the line on stderr stays).
                code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
                error = {"code": code.name, "message": redact(err.message, args.secrets)}
                doc = {"image": args.image, "verified": False, "error": error}
                print(json.dumps(doc, separators=(",", ":")), flush=True)
            raise err from None
    if args.output == "json":
        doc = {
            "image": args.image,
            "verified": resp.verified,
            "warned": resp.verified and warned(resp.message),
            "message": resp.message,
            "digested_image_ref": resp.digested_image_ref,
        }
        print(json.dumps(doc, separators=(",", ":")), flush=True)
    else:
        shown = "no"
        if resp.verified:
            shown = "yes, in warn mode: the checks failed" if warned(resp.message) else "yes"
        print(f"verified:  {shown}")
        print(f"message:   {resp.message or '-'}")
        print(f"reference: {resp.digested_image_ref or '-'}", flush=True)
    return 0 if resp.verified else EXIT_FAILED
