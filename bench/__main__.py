"""`python -m bench`: imaged against containerd's own `ctr` and CRI, as ratios measured in one run.

    .venv/bin/python -m bench                 # everything, 5 runs each (~15 min on 2 cores)
    .venv/bin/python -m bench --quick         # smoke: 1 run, tiny sizes, no profiling (~1 min)
    .venv/bin/python -m bench --runs 7 --scenarios pull,verify --out /tmp/b

Results go to bench/results/ (latest.md, latest.json, ratios.png, profiles/); `--quick`
writes to a temporary directory unless `--out` is given, so a smoke run never replaces the
committed results.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(REPO / "src") not in sys.path:
    sys.path.insert(1, str(REPO / "src"))

from bench import Sizes  # noqa: E402
from bench.env import Bench, log, versions  # noqa: E402
from bench.measure import Case  # noqa: E402

SCENARIOS = ("pull", "cri", "import", "list", "verify")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=None, help="runs per tool and case (default 5; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="smoke mode: 1 run, tiny sizes, no profiling")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    p.add_argument("--out", type=pathlib.Path, default=None, help="results directory (default bench/results)")
    p.add_argument("--no-profile", action="store_true", help="do not run py-spy when a target is missed")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    if args.runs is None:
        args.runs = 1 if args.quick else 5
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.out is None:
        args.out = (
            pathlib.Path(tempfile.mkdtemp(prefix="imaged-bench-quick-"))
            if args.quick
            else REPO / "bench" / "results"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    profile = not (args.quick or args.no_profile)
    started = time.monotonic()
    info = versions()
    log(f"{info.cores} cores, containerd {info.containerd}, imaged {info.imaged}; results in {args.out}")
    cases: list[Case] = []
    preface: list[str] = []
    failures: list[str] = []
    for stale in (args.out / "profiles").glob("*.pyspy.txt"):
        stale.unlink()  # profiles belong to the run that wrote them
    bench = Bench.start()
    try:
        for name in args.scenarios:
            try:
                cases += run_scenario(name, bench, sizes, args.runs, args.out, profile, preface)
            except Exception as e:
                traceback.print_exc()
                failures.append(f"- scenario `{name}` failed: {type(e).__name__}: {e}")
                log(f"{name} failed: {e}")
    finally:
        bench.close()
    elapsed = time.monotonic() - started
    from bench import report

    path = report.write(
        args.out,
        info,
        cases,
        runs=args.runs,
        quick=args.quick,
        elapsed=elapsed,
        preface=[*sizes.describe(), *preface],
        findings=failures,
    )
    log(f"report: {path} ({elapsed / 60:.1f} min)")
    return 1 if failures else 0


def run_scenario(
    name: str,
    bench: Bench,
    sizes: Sizes,
    runs: int,
    out: pathlib.Path,
    profile: bool,
    preface: list[str],
) -> list[Case]:
    if name == "pull":
        from bench import pull

        return pull.run(bench, [sizes.big, sizes.small], runs, out, profile)
    if name == "cri":
        from bench import cri

        return cri.run(bench, list(sizes.cri), runs, commits=profile)
    if name == "import":
        from bench import imports

        return imports.run(bench, sizes, runs, out, profile)
    if name == "list":
        from bench import listing

        return listing.run(bench, sizes.list_images, runs, out, profile)
    if name == "verify":
        from bench import verify

        return verify.run(bench, sizes, out, profile)
    raise ValueError(name)


if __name__ == "__main__":
    sys.exit(main())
