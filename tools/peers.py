#!/usr/bin/env python3
"""Real peers for the test suite, built from their Go modules: containerd 2.x, cri-tools, cosign, and
two registries: olareg (the OCI referrers API) and distribution v3 (its pull-through cache).

    python3 tools/peers.py build [NAME...]   build what is missing (all peers by default)
    python3 tools/peers.py bin NAME          print the bin directory of a built peer
    python3 tools/peers.py list              name, module, version, state of each peer

The versions are pinned here, and only here (`PEERS`). Each peer is built once into
`$IMAGED_PEERS_CACHE/<name>-<version>/bin/` (default `~/.cache/imaged-peers`), outside the work
tree, and reused while that directory is there: a build goes to a temporary directory that is renamed
into place when every program of the peer is in, so a killed build leaves nothing that looks built.
A failed build raises `PeerBuildError` naming the module, the version and Go's own error.

`IMAGED_PEERS=none` opts out: nothing is built and the interop tests are skipped, visibly
(without it a missing peer fails them). The Go toolchain is `go` on PATH, else /usr/local/go/bin/go;
`GOTOOLCHAIN=local`, so a module that wants a newer Go fails with Go's message instead of
downloading a toolchain.

The test suite imports this file (tests/support/peers.py) and `make test` runs `build` first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

CACHE_ENV = "IMAGED_PEERS_CACHE"
OPT_OUT_ENV = "IMAGED_PEERS"


@dataclasses.dataclass(frozen=True)
class Program:
    """One program of a peer: `go install PACKAGE@VERSION`, or `go test -c` for a test binary."""

    name: str
    package: str  # relative to the module: "cmd/ctr"
    test_binary: bool = False  # critest is a Ginkgo suite compiled with `go test -c`
    cgo: bool = False


@dataclasses.dataclass(frozen=True)
class Peer:
    name: str
    module: str
    version: str
    programs: tuple[Program, ...]
    tags: tuple[str, ...] = ()
    ldflags: str = ""  # `{version}` is replaced by the pinned version
    # Build in the module's source directory instead of `go install MODULE/cmd/x@VERSION`, which also
    # asks the proxy for the module's version list (for deprecation notices) and fails when the proxy
    # serves the pinned version but no list.
    in_source: bool = False

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


# The pins. containerd 2.x: the newest 2.x the Go module proxy serves that builds with the Go here;
# cri-tools v1.37.0 (v1.35.0 is not served); cosign v3, the newest v3. Registries: olareg serves the
# OCI referrers API (enabled by default; neither Debian's docker-registry 2.8, distribution v3.1.2 nor
# `crane registry serve` v0.22.1 serve it); the proxy lists no olareg versions, v0.2.2 is the one
# regclient v0.11.7 (the newest served) requires. distribution v3.1.2, the newest v3: its proxy
# fetches a missing blob from the origin once (2.8's fetches it twice).
PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            name="containerd",
            module="github.com/containerd/containerd/v2",
            version="v2.4.2",
            programs=(
                Program("containerd", "cmd/containerd"),
                Program("ctr", "cmd/ctr"),
                Program("containerd-shim-runc-v2", "cmd/containerd-shim-runc-v2"),
            ),
            # btrfs needs C headers Debian does not install by default; the test suite uses overlayfs.
            tags=("no_btrfs", "urfave_cli_no_docs"),
            ldflags="-X github.com/containerd/containerd/v2/version.Version={version}",
        ),
        Peer(
            name="cri-tools",
            module="sigs.k8s.io/cri-tools",
            version="v1.37.0",
            programs=(
                Program("crictl", "cmd/crictl"),
                Program("critest", "cmd/critest", test_binary=True),
            ),
            ldflags="-X sigs.k8s.io/cri-tools/pkg/version.Version={version}",
        ),
        Peer(
            name="cosign",
            module="github.com/sigstore/cosign/v3",
            version="v3.1.3",
            programs=(Program("cosign", "cmd/cosign"),),
            ldflags="-X sigs.k8s.io/release-utils/version.gitVersion={version}",
        ),
        Peer(
            name="olareg",
            module="github.com/olareg/olareg",
            version="v0.2.2",
            programs=(Program("olareg", "cmd/olareg"),),
            in_source=True,  # the proxy serves v0.2.2 but lists no versions: `go install @v0.2.2` fails
            ldflags="-X github.com/olareg/olareg/internal/version.vcsTag={version}",
        ),
        Peer(
            name="distribution",
            module="github.com/distribution/distribution/v3",
            version="v3.1.2",
            programs=(Program("registry", "cmd/registry"),),
            ldflags="-X github.com/distribution/distribution/v3/version.version={version}",
        ),
    )
}


class PeerBuildError(RuntimeError):
    pass


def opted_out() -> bool:
    return os.environ.get(OPT_OUT_ENV, "").strip().lower() == "none"


def cache_dir() -> pathlib.Path:
    env = os.environ.get(CACHE_ENV)
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "imaged-peers"


def peer_dir(peer: Peer) -> pathlib.Path:
    return cache_dir() / peer.key


def bin_dir(peer: Peer) -> pathlib.Path:
    return peer_dir(peer) / "bin"


def is_built(peer: Peer) -> bool:
    return all((bin_dir(peer) / p.name).is_file() for p in peer.programs)


def go_binary() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if found is None:
        raise PeerBuildError("no Go toolchain: `go` is not on PATH and /usr/local/go/bin/go does not exist")
    return found


def _go_env(cgo: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOTOOLCHAIN="local", CGO_ENABLED="1" if cgo else "0", GOFLAGS="-trimpath")
    env.pop("GOBIN", None)
    return env


def _run_go(peer: Peer, args: list[str], *, cwd: pathlib.Path | None, env: dict[str, str]) -> str:
    r = subprocess.run([go_binary(), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        err = (r.stderr or r.stdout).strip()
        try:  # `go mod download -json` reports its error in the JSON on stdout
            err = json.loads(r.stdout)["Error"].strip() or err
        except (ValueError, KeyError, TypeError):
            pass
        raise PeerBuildError(
            f"building peer {peer.name}: module {peer.module}@{peer.version}: `go {' '.join(args)}` "
            f"failed (exit {r.returncode}):\n{err[-4000:]}"
        )
    return r.stdout


def _module_source(peer: Peer) -> tuple[pathlib.Path, bool]:
    """The module's source directory (from the module cache) and whether its go.mod has `replace`."""
    out = _run_go(
        peer, ["mod", "download", "-json", f"{peer.module}@{peer.version}"], cwd=None, env=_go_env(False)
    )
    info = json.loads(out)
    if info.get("Error"):
        raise PeerBuildError(f"module {peer.module}@{peer.version}: {info['Error']}")
    gomod = pathlib.Path(info["GoMod"]).read_text()
    has_replace = any(line.strip().startswith("replace") for line in gomod.splitlines())
    return pathlib.Path(info["Dir"]), has_replace


def _build(peer: Peer, dest: pathlib.Path, log: list[str]) -> None:
    ldflags = peer.ldflags.format(version=peer.version)
    flags = [
        *(["-tags", ",".join(peer.tags)] if peer.tags else []),
        *(["-ldflags", ldflags] if ldflags else []),
    ]
    # `go install MODULE/cmd/x@VERSION` refuses a module whose go.mod has `replace` directives; such a
    # module (and a test binary, which `go install` cannot make) is built in its own source directory.
    source, has_replace = _module_source(peer)
    if has_replace:
        log.append(f"{peer.module}@{peer.version} has replace directives: built in its source directory")
    in_source = has_replace or peer.in_source
    for cgo in (False, True):
        env = _go_env(cgo)
        progs = [p for p in peer.programs if p.cgo == cgo]
        installs = [p for p in progs if not p.test_binary and not in_source]
        if installs:
            targets = [f"{peer.module}/{p.package}@{peer.version}" for p in installs]
            _run_go(peer, ["install", *flags, *targets], cwd=None, env={**env, "GOBIN": str(dest)})
        for p in progs:
            if p in installs:
                continue
            verb = ["test", "-c"] if p.test_binary else ["build"]
            _run_go(peer, [*verb, *flags, "-o", str(dest / p.name), f"./{p.package}"], cwd=source, env=env)


def build(peer: Peer, *, quiet: bool = False) -> float:
    """Build `peer` unless it is in the cache; returns the seconds spent (0 when reused)."""
    if is_built(peer):
        return 0.0
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = cache_dir() / f".{peer.key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "bin").mkdir(parents=True)
    if not quiet:
        print(
            f"peers: building {peer.key} from {peer.module}@{peer.version} (Go, may take minutes)", flush=True
        )
    started = time.monotonic()
    log: list[str] = []
    try:
        _build(peer, tmp / "bin", log)
        missing = [p.name for p in peer.programs if not (tmp / "bin" / p.name).is_file()]
        if missing:
            raise PeerBuildError(
                f"building peer {peer.name}: {peer.module}@{peer.version}: {missing} missing after the build"
            )
        seconds = time.monotonic() - started
        (tmp / "build.json").write_text(
            json.dumps(
                {"module": peer.module, "version": peer.version, "seconds": round(seconds, 1), "log": log},
                indent=1,
            )
        )
        final = peer_dir(peer)
        if final.exists() and not is_built(peer):  # an incomplete directory of an older scheme
            shutil.rmtree(final)
        try:
            tmp.rename(final)
        except OSError:
            if not is_built(peer):  # not another process that finished the same build first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return 0.0
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not quiet:
        print(f"peers: built {peer.key} in {seconds:.0f} s -> {bin_dir(peer)}", flush=True)
    return seconds


def build_all(names: list[str] | None = None) -> dict[str, str]:
    """Build every missing peer named (all by default); returns {name: error} for those that failed."""
    errors: dict[str, str] = {}
    for name in names or list(PEERS):
        try:
            build(PEERS[name])
        except PeerBuildError as e:
            errors[name] = str(e)
        except OSError as e:  # the cache directory cannot be written, Go cannot be run, ...
            errors[name] = f"building peer {name}: {e}"
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the missing peers")
    b.add_argument("names", nargs="*", metavar="NAME", help=", ".join(PEERS))
    p = sub.add_parser("bin", help="print a peer's bin directory")
    p.add_argument("name", choices=list(PEERS))
    sub.add_parser("list", help="the pinned peers")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for peer in PEERS.values():
            state = "built" if is_built(peer) else "missing"
            print(f"{peer.name:12} {peer.module}@{peer.version}  {state}  {bin_dir(peer)}")
        return 0
    if args.cmd == "bin":
        print(bin_dir(PEERS[args.name]))
        return 0 if is_built(PEERS[args.name]) else 1
    if opted_out():
        print(f"peers: {OPT_OUT_ENV}=none: not building; the interop tests will be skipped", flush=True)
        return 0
    unknown = [n for n in args.names if n not in PEERS]
    if unknown:
        ap.error(f"unknown peers {unknown}: known are {', '.join(PEERS)}")
    errors = build_all(args.names or None)
    for err in errors.values():
        print(f"peers: {err}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
