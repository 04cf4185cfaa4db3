"""bench/results: latest.md (tables), latest.json (raw samples), ratios.png (chart)."""

from __future__ import annotations

import datetime as dt
import json
import math
import pathlib
import statistics
from typing import Any

from bench.env import Versions
from bench.measure import Case, Series, fmt_seconds


def _fmt(s: Series, v: float) -> str:
    if s.unit == "s":
        return fmt_seconds(v)
    if s.unit == "ms":
        return f"{v:.2f} ms"
    if s.unit == "/s":
        return f"{v:,.0f}/s"
    return f"{v:.3g} {s.unit}"


def _ratio(r: float | None) -> str:
    return "n/a" if r is None or math.isnan(r) else f"{r:.2f}x"


def case_table(case: Case) -> list[str]:
    out = [f"### {case.scenario}: {case.name}", ""]
    ratio, met = case.ratio(), case.met()
    head = f"**{case.subject} / {case.reference} (medians): {_ratio(ratio)}**"
    pairs = case.paired_ratios()
    if len(pairs) > 1:
        head += (
            f" (run by run: {_ratio(min(pairs))} to {_ratio(max(pairs))}, "
            f"median {_ratio(statistics.median(pairs))})"
        )
    drift = case.drift()
    if drift is not None and abs(drift - 1) >= 0.1:
        head += f" [the machine drifted: {case.reference}'s last third of runs {drift - 1:+.0%} on its first]"
    if case.target is not None:
        verdict = "n/a" if met is None else ("met" if met else "**MISSED**")
        head += f"; target at most {case.target:.2f}x: {verdict}"
    fr = case.floor_ratio()
    if fr is not None:
        head += f"; {case.subject} / floor: {_ratio(fr)}"
    if ratio is not None or not case.checks:
        out += [head, ""]
    if case.checks:
        out += ["| target | measured | wanted | met |", "|---|---:|---:|---|"]
        out += [f"| {w} | {v} | {t} | {'yes' if m else '**NO**'} |" for w, v, t, m in case.checks]
        out.append("")
    if not case.show_series:
        out += ["The same runs as the case above (its table).", ""]
        return out
    out.append("| tool | median | min | max | runs | CPU s per run (imaged / containerd / client) | note |")
    out.append("|---|---:|---:|---:|---:|---|---|")
    for s in case.series.values():
        if not s.available:
            out.append(f"| {s.tool} | not available | | | | | {s.note} |")
            continue
        cpu = ""
        if s.cpu:
            client = s.cpu.get("ctr", s.cpu.get("client", s.cpu.get("bench", 0.0)))
            cpu = f"{s.cpu.get('imaged', 0.0):.2f} / {s.cpu.get('containerd', 0.0):.2f} / {client:.2f}"
        out.append(
            f"| {s.tool} | {_fmt(s, s.median)} | {_fmt(s, s.min)} | {_fmt(s, s.max)} | {len(s.samples)} "
            f"| {cpu} | {s.note} |"
        )
    if case.extra:
        out.append("")
        out.append("| measure | value |")
        out.append("|---|---|")
        out += [f"| {k} | {v} |" for k, v in case.extra]
    if case.notes:
        out.append("")
        out += [f"- {note}" for note in case.notes]
    if case.profile is not None:
        out += ["", "Where the daemon's time goes (target missed):", ""]
        out += case.profile.lines()
    out.append("")
    return out


def write(
    out_dir: pathlib.Path,
    versions: Versions,
    cases: list[Case],
    *,
    runs: int,
    quick: bool,
    elapsed: float,
    preface: list[str],
    findings: list[str],
) -> pathlib.Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    md: list[str] = ["# imaged benchmark", ""]
    md.append(
        f"Run {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} with `python -m bench"
        f"{' --quick' if quick else ''} --runs {runs}`, {elapsed / 60:.1f} min in all."
    )
    md.append("")
    md.append("| machine | |")
    md.append("|---|---|")
    md += [f"| {k} | {v} |" for k, v in versions.rows()]
    md.append("")
    md += preface
    md += [
        "",
        "## Summary",
        "",
        "| scenario | case | ratio (or value) | target | met |",
        "|---|---|---:|---:|---|",
    ]
    for c in cases:
        ratio = c.ratio()
        target = "" if c.target is None else f"{c.target:.2f}x"
        # The ratio's own verdict: a case's absolute checks have their rows below.
        verdict = "" if c.target is None or ratio is None else ("yes" if ratio <= c.target else "NO")
        if ratio is not None or not c.checks:
            md.append(f"| {c.scenario} | {c.name} | {_ratio(c.ratio())} | {target} | {verdict} |")
        for what, value, wanted, ok in c.checks:
            md.append(f"| {c.scenario} | {c.name}: {what} | {value} | {wanted} | {'yes' if ok else 'NO'} |")
    md += ["", "![ratios](ratios.png)", ""]
    scenarios: list[str] = []
    for c in cases:
        if c.scenario not in scenarios:
            scenarios.append(c.scenario)
    for sc in scenarios:
        md += [f"## {sc}", ""]
        for c in cases:
            if c.scenario == sc:
                md += case_table(c)
    if findings:
        md += ["## Findings", ""]
        md += findings
        md.append("")
    path = out_dir / "latest.md"
    path.write_text("\n".join(md) + "\n")
    doc: dict[str, Any] = {
        "versions": versions.__dict__,
        "runs": runs,
        "quick": quick,
        "elapsed_s": elapsed,
        "cases": [c.to_json() for c in cases],
    }
    (out_dir / "latest.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    chart(out_dir / "ratios.png", cases, versions)
    return path


def chart(path: pathlib.Path, cases: list[Case], versions: Versions) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[Case, float]] = []
    for c in cases:
        r = c.ratio()
        if r is not None:
            rows.append((c, r))
    fig, ax = plt.subplots(figsize=(10, 0.55 * max(len(rows), 1) + 1.6))
    if not rows:
        ax.text(0.5, 0.5, "no ratios (tools not available)", ha="center", va="center")
        ax.set_axis_off()
    else:
        labels = [f"{c.scenario}: {c.name}" for c, _ in rows]
        values = [r for _, r in rows]
        colors = [
            "#999999" if c.target is None else ("#2e8b57" if r <= c.target else "#c0392b") for c, r in rows
        ]
        y = list(range(len(rows)))[::-1]
        ax.barh(y, values, color=colors)
        for yi, (c, r) in zip(y, rows, strict=True):
            ax.text(r, yi, f" {r:.2f}x", va="center", fontsize=8)
            if c.target is not None:
                ax.plot([c.target, c.target], [yi - 0.4, yi + 0.4], color="black", linewidth=1.5)
            fr = c.floor_ratio()
            if fr is not None and c.ratio():
                # The floor, on the same scale: floor median / reference median.
                f = c.series["floor"].median / c.series[c.reference].median
                ax.plot([f], [yi], marker="|", markersize=14, color="#1f4e9c")
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=8)
        ax.axvline(1.0, color="#666666", linestyle=":", linewidth=1)
        ax.set_xlabel("imaged median / ctr median (lower is better); black tick: target; blue tick: floor")
    ax.set_title(f"imaged vs ctr, {versions.cores} cores, containerd {versions.containerd}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
