"""Regenerate the results table of benchmarks/README.md from benchmarks/perf_paths.py.

Run: PYTHONPATH=src .venv/bin/python benchmarks/readme_table.py [--reps 3]   (runs the benchmark)
     PYTHONPATH=src .venv/bin/python benchmarks/readme_table.py --from-json benchmarks/results/perf_paths.json

The table sits between the ``<!-- perf-table:start -->`` and ``<!-- perf-table:end -->`` lines.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"


def _ratio(res: dict, key: str, ref: str) -> str:
    if key not in res:
        return "n/a"
    return f"{res[key] / res[ref]:.2f}x ({res[key]:.0f} ms)"


def table(data: dict) -> str:
    rows = ["| case | reference (hand-written hooks) | vene | vene, other variant |", "|---|---|---|---|"]
    loop = data.get("loop")
    if loop:
        ref = "hand hooks (31 passes)"
        rows.append(
            f"| per-layer activation patching loop, pyvene style (SmolLM2-135M, {data.get('loop_pairs', 8)} pairs x 30 layers x 12 tokens) "
            f"| {loop[ref]:.0f} ms (1 clean pass + 30 patched passes) "
            f"| {_ratio(loop, 'vene, pyvene-style loop', ref)} (source reuse) "
            f"| `reuse_sources=False`: {_ratio(loop, 'vene, pyvene-style loop, reuse_sources=False', ref)} |")
        rows.append(
            f"| the same 30 calls as one: `vene.run_calls` | {loop[ref]:.0f} ms "
            f"| {_ratio(loop, 'vene.run_calls (30 calls as one)', ref)} | |")
    for key, title in (("das_r1_b8", "rank 1, batch 8"), ("das_r16_b32", "rank 16, batch 32")):
        das = data.get(key)
        if das:
            ref = "hand hooks (2 passes, source no_grad)"
            rows.append(
                f"| DAS training step, pyvene style, {title} (SmolLM2-135M layer 15, 12 tokens) "
                f"| {das[ref]:.0f} ms (source pass under no_grad + base pass + backward + Adam) "
                f"| {_ratio(das, 'vene (pyvene-style step)', ref)} | |")
    ov = data.get("overhead")
    if ov:
        plain = ov["plain forward"]
        cases = (("vene Collect (1 site)", "hand hook Collect (1 site)", "one Collect"),
                 ("vene interchange (1 site, source pass)", "hand hook interchange (kept source, 1 site)",
                  "one interchange (source reused)"),
                 ("vene 12 interventions (source pass)", "hand hooks 12 interchanges (kept sources)",
                  "12 interchanges (sources reused)"))
        for k, hk, name in cases:
            hand = f"+{ov[hk] - plain:.3f} ms" if hk in ov else "n/a"
            rows.append(
                f"| per-call cost over a plain forward ({plain:.3f} ms), tiny GPT-2 (2 x 64), b=1, repeated call: {name} "
                f"| {hand} | +{ov[k] - plain:.3f} ms | |")
    pyv = "pyvene installed: yes" if data.get("pyvene") else "pyvene not installed (no pyvene column)"
    foot = (f"\n{data.get('reps', '?')} timed rounds after 1 warm-up, medians; torch threads {data.get('threads', '?')} "
            f"(the per-call case: 1 thread); {pyv}; {platform.machine()}, {os.cpu_count()} CPUs. "
            "Every vene result is checked equal to the hand-written one before timing.")
    return "\n".join(rows) + "\n" + foot


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from-json", default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=8)
    args = ap.parse_args()
    path = args.from_json
    if path is None:
        path = str(HERE / "results" / "perf_paths.json")
        (HERE / "results").mkdir(exist_ok=True)
        subprocess.run([sys.executable, str(HERE / "perf_paths.py"), "--reps", str(args.reps), "--pairs", str(args.pairs), "--json", path], check=True)
    data = json.loads(Path(path).read_text())
    text = README.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{README} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + START + "\n" + table(data) + "\n" + END + tail)
    print(f"updated {README}")


if __name__ == "__main__":
    main()
