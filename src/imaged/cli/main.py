"""imagectl entry point: argument parsing and dispatch.

Command modules (and with them grpc, the stubs and rich) are imported only once a command is
chosen, so help, completion and usage errors cost no more than the interpreter start-up.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from imaged import __version__
from imaged.cli.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
    one_line,
    redact,
)

NAMESPACES = ("cri", "system", "inmem")

DESCRIPTION = "Manage container images through imaged (machine.ImageService)."
EPILOG = """\
exit status:
  0    success (verify: the image is verified)
  1    the operation failed (rm: at least one image was not removed; verify: not verified)
  2    usage error, unreadable input, or imaged unreachable (verify: any error, including a
       denied verification)
  130  interrupted

environment:
  IMAGED_SOCKET  socket used when --socket is not given (default /run/imaged/imaged.sock)
"""


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error format every imagectl failure uses."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"imagectl: {message} (see '{self.prog} --help')\n")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"timeout must be positive, not {text}")
    return value


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes; after the command they override nothing unless given."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=default(None),
        help="imaged's unix socket (default: $IMAGED_SOCKET, else /run/imaged/imaged.sock)",
    )
    parser.add_argument(
        "--namespace",
        "-n",
        choices=NAMESPACES,
        default=default("cri"),
        help="as talosctl: cri (the CRI containerd's k8s.io, the default), system (the CRI "
        "containerd's system namespace) or inmem (the node's system containerd, namespace system)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=default(None),
        help="give up on the daemon after this long (default: wait)",
    )


def _output_option(parser: argparse.ArgumentParser, choices: tuple[str, ...]) -> None:
    parser.add_argument(
        "-o", "--output", choices=choices, default=choices[0], help=f"output format (default {choices[0]})"
    )


def _configure_list(p: argparse.ArgumentParser) -> None:
    _output_option(p, ("table", "json"))
    p.add_argument("-q", "--quiet", action="store_true", help="print image names only")
    p.add_argument(
        "--filter",
        metavar="GLOB",
        action="append",
        default=[],
        help="only names matching this glob (fnmatch; repeat to match any of several)",
    )
    p.add_argument(
        "--no-trunc", action="store_true", help="print whole digests and label values on a terminal too"
    )


def _configure_pull(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="reference to pull, e.g. nginx:1.27 or reg/app@sha256:...")


def _configure_import(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        metavar="FILE",
        help="image archive (docker save or OCI layout tar, maybe compressed); - for stdin",
    )


def _configure_remove(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image name, id (sha256:...) or name@digest")


def _configure_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="reference to verify against the daemon's policy")
    p.add_argument("--username", "-u", metavar="USER", help="registry user name for this request")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument(
        "--password",
        "-p",
        metavar="PASSWORD",
        help="registry password (visible to other users: prefer stdin)",
    )
    secret.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument(
        "--registry-host",
        metavar="HOST",
        help="registry the credentials are for (default: the image's registry, docker.io for Docker Hub)",
    )
    _output_option(p, ("text", "json"))


def _configure_policy(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(title="policy commands", metavar="COMMAND", dest="policy_command", required=True)
    ex = sub.add_parser(
        "explain",
        help="which rule decides for an image and what it demands (offline: reads the file)",
        description="Which rule decides for each image and what it demands, read from a configuration "
        "file (offline: nothing is asked of the daemon or a registry).",
    )
    ex.add_argument(
        "--config",
        metavar="FILE",
        help="imaged configuration (default: $IMAGED_CONFIG, else /etc/imaged/config.yaml)",
    )
    ex.add_argument("images", metavar="IMAGE", nargs="+", help="image reference")
    te = sub.add_parser(
        "test",
        help="a candidate configuration's verdicts on real images, through the running daemon or offline",
        description="Evaluate FILE's verification policy against real images with the daemon's registry "
        "access, without changing the daemon's policy; or, with --offline, against OCI layouts written "
        "by `cosign save` (no daemon, no network). Exit 1 when a verdict differs from --expect "
        "(without it: when an image is denied or errors).",
    )
    te.add_argument("--config", metavar="FILE", required=True, help="candidate imaged configuration")
    te.add_argument(
        "--offline",
        metavar="DIR",
        help="no daemon, no network: each IMAGE is read from the OCI layout DIR/IMAGE (`cosign save "
        "--dir DIR/IMAGE IMAGE`), or DIR itself when it is a layout and one image is tested",
    )
    te.add_argument(
        "--expect",
        metavar="FILE",
        help="YAML mapping of image to expected verdict: verified, warned, unverified, denied or error "
        "(its images are tested when none is named)",
    )
    te.add_argument("images", metavar="IMAGE", nargs="*", help="image reference")
    for q in (ex, te):
        _global_options(q, suppress=True)


def _configure_completion(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", metavar="SHELL", choices=("bash", "zsh"), help="bash or zsh")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    module: str  # imported when the command runs; it defines run(args) -> int
    configure: Callable[[argparse.ArgumentParser], None]
    aliases: tuple[str, ...] = field(default=())
    daemon: bool = True  # talks to imaged, so takes --socket and --timeout


COMMANDS = (
    Command("list", "list images", "imaged.cli.cmd_list", _configure_list, ("ls",)),
    Command("pull", "pull an image from its registry", "imaged.cli.cmd_pull", _configure_pull),
    Command("import", "import an image archive", "imaged.cli.cmd_import", _configure_import),
    Command("rm", "remove images", "imaged.cli.cmd_remove", _configure_remove, ("remove",)),
    Command(
        "verify",
        "check an image against the daemon's verification policy",
        "imaged.cli.cmd_verify",
        _configure_verify,
    ),
    Command(
        "policy",
        "explain a policy offline, or test a candidate policy on real images",
        "imaged.cli.cmd_policy",
        _configure_policy,
    ),
    Command(
        "completion",
        "print a shell completion script",
        "imaged.cli.completion",
        _configure_completion,
        daemon=False,
    ),
)


def build_parser() -> Parser:
    parser = Parser(
        prog="imagectl",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imagectl {__version__}")
    _global_options(parser, suppress=False)
    common = Parser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command_name", required=True)
    for cmd in COMMANDS:
        p = sub.add_parser(
            cmd.name,
            aliases=list(cmd.aliases),
            help=cmd.help,
            description=cmd.help[0].upper() + cmd.help[1:] + ".",
            parents=[common] if cmd.daemon else [],
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.configure(p)
        p.set_defaults(command=cmd)
    return parser


def _run(args: argparse.Namespace) -> int:
    cmd: Command = args.command
    module = importlib.import_module(cmd.module)
    code: int = module.run(args)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.secrets = set()  # commands add passwords here; no message may show them
    try:
        return _run(args)
    except CliError as e:
        _fail(redact(one_line(e.message), args.secrets))
        return e.code
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`imagectl list | head`): stop quietly, like a C tool killed by SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as e:  # a bug: still one line, with a way to get the traceback
        if os.environ.get("IMAGECTL_DEBUG"):
            raise
        _fail(
            redact(
                one_line(f"unexpected error: {type(e).__name__}: {e} (IMAGECTL_DEBUG=1 for details)"),
                args.secrets,
            )
        )
        return EXIT_FAILED


def _fail(message: str) -> None:
    print(f"imagectl: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
