"""imagectl policy: `explain` how a configuration treats an image (offline), `test` a candidate
configuration against real images through the running daemon (imaged.v1.PolicyService)."""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Any

from imaged.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError

DEFAULT_CONFIG = "/etc/imaged/config.yaml"
VERDICTS = ("verified", "warned", "unverified", "denied", "error")


def _config_path(flag: str | None) -> str:
    path = flag or os.environ.get("IMAGED_CONFIG") or DEFAULT_CONFIG
    if not pathlib.Path(path).exists():
        raise CliError(f"configuration {path} does not exist (pass --config)", EXIT_USAGE)
    return path


def explain(args: argparse.Namespace) -> int:
    from imaged.config import ConfigError, load
    from imaged.errors import InvalidArgument
    from imaged.verify.explain import explain as lines_for

    path = _config_path(args.config)
    try:
        config = load(path)
    except ConfigError as e:
        raise CliError(str(e).replace("\n", " "), EXIT_USAGE) from None
    print(f"config:     {path}")
    for image in args.images:
        try:
            lines = lines_for(config.verification, image)
        except InvalidArgument as e:
            raise CliError(e.message, EXIT_USAGE) from None
        print("\n".join(lines), flush=True)
    return 0


def _expectations(path: str) -> dict[str, str]:
    import yaml

    try:
        doc: Any = yaml.safe_load(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CliError(f"cannot read expectations {path}: {e}", EXIT_USAGE) from None
    if not isinstance(doc, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
    ):
        raise CliError(
            f"{path}: expectations are a mapping of image to verdict ({', '.join(VERDICTS)})", EXIT_USAGE
        )
    bad = [f"{k}: {v}" for k, v in doc.items() if v not in VERDICTS]
    if bad:
        raise CliError(f"{path}: unknown verdicts ({'; '.join(bad)}); use {', '.join(VERDICTS)}", EXIT_USAGE)
    return doc


def test(args: argparse.Namespace) -> int:
    import grpc

    from imaged.cli.client import Client, resolve_socket
    from imaged.pb.policy.v1 import policy_pb2

    try:
        text = pathlib.Path(args.config).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read {args.config}: {e}", EXIT_USAGE) from None
    expected = _expectations(args.expect) if args.expect else {}
    images = list(args.images) or list(expected)
    if not images:
        raise CliError("name images to test, or an --expect file listing them", EXIT_USAGE)
    req = policy_pb2.PolicyTestRequest(config_yaml=text, image_refs=images)
    with Client(resolve_socket(args.socket), args.timeout) as client:
        try:
            resp = client.unary("Test", req, service="policy")
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise CliError(
                    f"imaged at {client.socket} does not serve imaged.v1.PolicyService: it is the "
                    "read-only socket (use the admin socket) or an older imaged",
                    EXIT_USAGE,
                ) from None
            err = client.error(e, f"testing {args.config}")
            err.code = EXIT_USAGE
            raise err from None
    differences = refusals = 0
    for r in resp.results:
        verdict = policy_pb2.PolicyVerdict.Name(r.verdict).removeprefix("POLICY_VERDICT_").lower()
        line = f"{r.image_ref}: {verdict}"
        want = expected.get(r.image_ref)
        if want is not None and want != verdict:
            differences += 1
            line += f" (EXPECTED {want})"
        elif want is not None:
            line += " (as expected)"
        if verdict in ("denied", "error"):
            refusals += 1
        print(line)
        if r.rule:
            print(f"  rule:    {r.rule}")
        print(f"  message: {r.message or '-'}")
        if r.digested_image_ref:
            print(f"  digest:  {r.digested_image_ref}")
    missing = [k for k in expected if k not in images]
    if expected:
        print(f"{len(resp.results) - differences} as expected, {differences} different", flush=True)
        if missing:
            print(f"(not tested: {', '.join(missing)})", flush=True)
        return EXIT_FAILED if differences else 0
    return EXIT_FAILED if refusals else 0


def run(args: argparse.Namespace) -> int:
    if args.policy_command == "explain":
        return explain(args)
    return test(args)
