"""Markdown table of an evaluation-results JSON (what docs/benchmarks.md shows): every
non-trivial system's default point, cost @ quality ratio 0.97 and quality @ cost 0.16 with
their 95% paired-bootstrap intervals, and whether the difference to routenlp excludes 0.

    python benchmarks/results_table.py runs/bench/routerbench_slices.json
"""

from __future__ import annotations

import json
import sys


def _f(x: float | None) -> str:
    return "never" if x is None else f"{x:.3f}"


def _iv(iv: list[float | None] | None) -> str:
    if not iv:
        return ""
    lo, hi = iv
    return f" [{_f(lo)}, {_f(hi)}]"


def main(path: str) -> None:
    r = json.load(open(path))
    iv, diff = r.get("intervals", {}), r.get("differences", {})
    keys = ("cost_ratio_at_quality_0.97", "quality_at_cost_0.16")
    rows = []
    for name, m in r["matched"].items():
        if name.startswith("always-") and m[keys[0]] is None and name != f"always-{r['reference']}":
            continue
        s = r["systems"][name]
        c = m[keys[0]]
        marks = []
        for k in keys:
            d = diff.get(name, {}).get(k, {})
            marks.append("*" if d.get("excludes_zero") else "")
        rows.append((9.0 if c is None else c, name, s, m, marks))
    print("| system | points | default quality ratio | default cost ratio | cost @ q0.97 [95% CI] | quality @ c0.16 [95% CI] |")
    print("|---|---|---|---|---|---|")
    for _, name, s, m, marks in sorted(rows, key=lambda x: (x[0], x[1])):
        print(
            f"| {name} | {r.get('n_points', {}).get(name, '')} | {s['quality_ratio']:.3f} | {s['cost_ratio']:.3f} | "
            f"{_f(m[keys[0]])}{_iv(iv.get(name, {}).get(keys[0]))}{marks[0]} | "
            f"{_f(m[keys[1]])}{_iv(iv.get(name, {}).get(keys[1]))}{marks[1]} |"
        )
    if r.get("certificate"):
        print(f"\nCertificate: {r['certificate']['plain']}")


if __name__ == "__main__":
    main(sys.argv[1])
