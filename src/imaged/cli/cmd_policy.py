"""imagectl policy: `explain` how a configuration treats an image (offline), `test` a candidate
configuration against real images through the running daemon (imaged.v1.PolicyService) or, with
`--offline DIR`, against OCI layouts on disk (verify/policytest.py: the same evaluation, the same
verdicts and output)."""

from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from imaged.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError
from imaged.verdicts import VERDICTS

if TYPE_CHECKING:  # (imported when a command runs: pydantic costs imagectl's start-up)
    from imaged.config import Config

DEFAULT_CONFIG = "/etc/imaged/config.yaml"


class Verdict(Protocol):
    """One image's verdict as printed: the daemon's answer, or verify.policytest.ImageVerdict."""

    @property
    def image_ref(self) -> str: ...
    @property
    def verdict(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def digested_ref(self) -> str: ...
    @property
    def rule(self) -> str: ...


class _Answer(NamedTuple):
    image_ref: str
    verdict: str
    message: str
    digested_ref: str
    rule: str


def _config_path(flag: str | None) -> str:
    path = flag or os.environ.get("IMAGED_CONFIG") or DEFAULT_CONFIG
    if not pathlib.Path(path).exists():
        raise CliError(f"configuration {path} does not exist (pass --config)", EXIT_USAGE)
    return path


def _load(path: str) -> Config:
    """The configuration at `path`, or a usage error saying what is wrong."""
    from imaged.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as e:
        raise CliError(str(e).replace("\n", " "), EXIT_USAGE) from None


def explain(args: argparse.Namespace) -> int:
    from imaged.errors import InvalidArgument
    from imaged.verify.explain import explain as lines_for

    path = _config_path(args.config)
    config = _load(path)
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


def _online(args: argparse.Namespace, text: str, images: list[str]) -> list[_Answer]:
    """The verdicts of the running daemon (imaged.v1.PolicyService/Test)."""
    import grpc

    from imaged.cli.client import Client, resolve_socket
    from imaged.pb.policy.v1 import policy_pb2

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
    return [
        _Answer(
            r.image_ref,
            policy_pb2.PolicyVerdict.Name(r.verdict).removeprefix("POLICY_VERDICT_").lower(),
            r.message,
            r.digested_image_ref,
            r.rule,
        )
        for r in resp.results
    ]


def _offline(args: argparse.Namespace, images: list[str]) -> Sequence[Verdict]:
    """The verdicts reached here, against the OCI layouts under --offline."""
    import asyncio

    from imaged.errors import ImagedError
    from imaged.verify.cel import close_evaluator
    from imaged.verify.layout import is_layout
    from imaged.verify.policytest import evaluate_offline

    root = pathlib.Path(args.offline)
    if not root.is_dir():
        raise CliError(f"--offline {root}: not a directory", EXIT_USAGE)
    if is_layout(root) and len(images) > 1:
        raise CliError(
            f"--offline {root} is one OCI layout, so it stands for one image; for several, give a "
            "directory holding one layout per image at DIR/IMAGE",
            EXIT_USAGE,
        )
    config = _load(args.config)
    try:
        return asyncio.run(evaluate_offline(config.verification, root, images))
    except ImagedError as e:
        raise CliError(f"testing {args.config}: {e.message}", EXIT_USAGE) from None
    finally:
        close_evaluator()


def test(args: argparse.Namespace) -> int:
    try:
        text = pathlib.Path(args.config).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read {args.config}: {e}", EXIT_USAGE) from None
    expected = _expectations(args.expect) if args.expect else {}
    images = list(args.images) or list(expected)
    if not images:
        raise CliError("name images to test, or an --expect file listing them", EXIT_USAGE)
    results = _offline(args, images) if args.offline else _online(args, text, images)
    return report(results, expected, images)


def report(results: Sequence[Verdict], expected: dict[str, str], images: list[str]) -> int:
    """Print each verdict (against its expectation) and return the exit status: with
    expectations, 1 on any difference; without, 1 when an image is denied or errors."""
    differences = refusals = 0
    for r in results:
        line = f"{r.image_ref}: {r.verdict}"
        want = expected.get(r.image_ref)
        if want is not None and want != r.verdict:
            differences += 1
            line += f" (EXPECTED {want})"
        elif want is not None:
            line += " (as expected)"
        if r.verdict in ("denied", "error"):
            refusals += 1
        print(line)
        if r.rule:
            print(f"  rule:    {r.rule}")
        print(f"  message: {r.message or '-'}")
        if r.digested_ref:
            print(f"  digest:  {r.digested_ref}")
    missing = [k for k in expected if k not in images]
    if expected:
        print(f"{len(results) - differences} as expected, {differences} different", flush=True)
        if missing:
            print(f"(not tested: {', '.join(missing)})", flush=True)
        return EXIT_FAILED if differences else 0
    return EXIT_FAILED if refusals else 0


def run(args: argparse.Namespace) -> int:
    if args.policy_command == "explain":
        return explain(args)
    return test(args)
