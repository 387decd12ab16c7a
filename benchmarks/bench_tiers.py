"""Local tier throughput benchmark (same as `routenlp bench tiers`): writes
{tier: {"single_tok_s", "batched_tok_s", ...}} to the JSON path given (default stdout).

Example: python benchmarks/bench_tiers.py --config examples/local-cpu.yaml --baseline
"""

from __future__ import annotations

import argparse
import json
import sys

from routenlp.bench.tiers import bench_tiers
from routenlp.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="examples/local-cpu.yaml", help="ensemble YAML")
    ap.add_argument("--tiers", default=None, help="comma-separated tier names (default: all local)")
    ap.add_argument("--n", type=int, default=8, help="requests per measurement")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--baseline", action="store_true", help="also measure transformers fp32")
    ap.add_argument("--json", default=None, help="output path")
    args = ap.parse_args()
    names = [t.strip() for t in args.tiers.split(",") if t.strip()] if args.tiers else None
    res = bench_tiers(
        load_config(args.config), names, n=args.n, max_tokens=args.max_tokens, baseline=args.baseline
    )
    text = json.dumps(res, indent=2, sort_keys=True)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    print(text, file=sys.stdout)


if __name__ == "__main__":
    main()
