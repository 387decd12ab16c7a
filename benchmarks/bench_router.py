"""Router inference benchmark (same as `routenlp bench router`): writes
{"p50_ms", "p99_ms", "batched_per_s", ...} to the JSON path given (default stdout)."""

from __future__ import annotations

import argparse
import json
import sys

from routenlp.router.bench import bench_router


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--router", default=None, help="router artifact (default: train a tiny one)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default=None, choices=["onnx-int8", "onnx", "torch"])
    ap.add_argument("--json", default=None, help="output path")
    args = ap.parse_args()
    res = bench_router(args.router, n=args.n, batch=args.batch, backend=args.backend, threads=args.threads)
    text = json.dumps(res, indent=2, sort_keys=True)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    print(text, file=sys.stdout)


if __name__ == "__main__":
    main()
