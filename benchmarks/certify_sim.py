"""Certified-policy simulations (docs/benchmarks.md, "Certified policy: simulations").

Seeded trials on synthetic cascades with a shared latent difficulty
(`routenlp.conformal.simulate`): per setting, how often the served policy's test regret
exceeds alpha (certified LTT, CRC, and today's per-tier CRC), its cost, and the share of the
best-on-test savings it keeps. Writes JSON (default stdout)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

from routenlp.conformal.simulate import World, run_trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=20000)
    ap.add_argument("--json", default=None, help="output path")
    args = ap.parse_args()
    rows = []
    settings = [
        (alpha, n_cal, g, name, world)
        for name, world in (("default", World()), ("easy cheap tier", World(skills=(0.8, 1.2, 2.5))))
        for alpha in (0.05, 0.1)
        for n_cal in (1000, 4000)
        for g in ("high-probability", "expected")
    ]
    for alpha, n_cal, g, name, world in settings:
        t0 = time.perf_counter()
        s = asdict(run_trials(args.trials, world=world, n_cal=n_cal, n_test=args.n_test, alpha=alpha,
                              delta=0.1, guarantee=g, seed=11))
        s.pop("risks")
        rows.append({"world": name, "n_cal": n_cal, **s, "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    text = json.dumps(rows, indent=2, sort_keys=True)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
