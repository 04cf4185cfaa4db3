"""`imaged`: the daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import sys

from imaged import __version__
from imaged.config import ConfigError, load
from imaged.daemon.observe import TextFormatter
from imaged.daemon.server import Daemon
from imaged.daemon.sockets import StartupError

DEFAULT_CONFIG = "/etc/imaged/config.yaml"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, sort_keys=False)


def setup_logging(fmt: str, level: str) -> None:
    # No record field we print needs the caller's frame, thread or process: skipping their lookup
    # makes the per-RPC line markedly cheaper on hot paths such as cached Verify.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="imaged", description="machine.ImageService daemon for containerd")
    parser.add_argument(
        "--config",
        help=f"YAML configuration file (default: $IMAGED_CONFIG, else {DEFAULT_CONFIG} if it exists)",
    )
    parser.add_argument("--log-format", choices=["text", "json"], help="overrides log.format")
    parser.add_argument(
        "--check-config",
        nargs="?",
        const="",
        metavar="FILE",
        help="validate the configuration (FILE, else as --config says), print its warnings and exit",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="with --check-config: exit 1 when there is any warning (shadowed rules, unanchored "
        "regexes, open policies)",
    )
    parser.add_argument("--version", action="version", version=f"imaged {__version__}")
    args = parser.parse_args(argv)
    if (
        args.check_config
        and args.config
        and pathlib.Path(args.check_config).resolve() != pathlib.Path(args.config).resolve()
    ):
        parser.error(f"--check-config {args.check_config} and --config {args.config} name two files")

    path = (
        args.check_config
        or args.config
        or os.environ.get("IMAGED_CONFIG")
        or (DEFAULT_CONFIG if pathlib.Path(DEFAULT_CONFIG).exists() else None)
    )
    try:
        config = load(path)
    except ConfigError as e:
        print(f"imaged: {e}", file=sys.stderr)
        sys.exit(2)
    if args.strict and args.check_config is None:
        parser.error("--strict goes with --check-config")
    if args.check_config is not None:
        from imaged.verify.config import config_advice, config_warnings, open_policy_warnings

        warnings = config_warnings(config.verification) + open_policy_warnings(config.verification)
        for w in warnings:
            print(f"warning: verification: {w}")
        # On stderr, and not warnings (--strict ignores them): weaker than it looks, perhaps deliberate.
        for a in config_advice(config.verification):
            print(f"imaged: suggestion: verification: {a}", file=sys.stderr)
        count = f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})" if warnings else ""
        if path is None:
            none = f"no configuration file (none given, no {DEFAULT_CONFIG})"
            print(f"imaged: {none}; the defaults are valid{count}")
        else:
            print(f"imaged: configuration {path} is valid{count}")
        if warnings and args.strict:
            print("imaged: --strict: refusing a configuration with warnings", file=sys.stderr)
            sys.exit(1)
        return
    setup_logging(args.log_format or config.log.format, config.log.level)
    try:
        asyncio.run(Daemon(config, config_path=path).run())
    except StartupError as e:
        print(f"imaged: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
