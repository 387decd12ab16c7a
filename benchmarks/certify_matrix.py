"""Certify the served policy on a routing-matrix directory and check it on the test split.

Splits the train rows into fit / calibration (seeded, by task), trains the router (and,
with --estimator, the quality estimator) on the fit rows, runs `calibrate_policy` (the real
Cascade replayed over replay tiers), then replays the test split through the real Cascade
at the certified theta and at the router alone (lambda = 1, the router's default b).
Writes JSON: target, certificate, test quality ratio and cost ratio vs always-the-top."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--matrix-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--quality-target", type=float, default=0.97)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--guarantee", default="high-probability")
    ap.add_argument("--cal-fraction", type=float, default=0.3)
    ap.add_argument("--estimator", action="store_true", help="train the quality estimator (slow)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--resplits", type=int, default=0,
        help="also re-split calibration + test rows N times (seeded; router fixed) and report how "
        "often the served policy misses its target on test",
    )
    args = ap.parse_args()

    from routenlp.bench.commands import load_eval_config, split_calibration
    from routenlp.bench.harness import prepare_rows
    from routenlp.bench.routenlp_eval import _FixedBiasRouter, _request_builder
    from routenlp.cascade import Cascade
    from routenlp.conformal.certify import calibrate_policy, planning_latency, quality_of
    from routenlp.conformal.estimator import train_estimator
    from routenlp.matrix import read_matrix
    from routenlp.router.inference import Router
    from routenlp.router.train import train_router
    from routenlp.tiers.replay import build_replay_tiers

    t0 = time.perf_counter()
    d, out = Path(args.matrix_dir), Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = read_matrix(d / "train.jsonl"), read_matrix(d / "test.jsonl")
    fit, cal = split_calibration(train, args.cal_fraction, args.seed)
    cfg = load_eval_config(None, d / "models.json", [*train, *test])
    cfg.cascade.online = False
    fit, _ = prepare_rows(cfg, fit)
    cal, _ = prepare_rows(cfg, cal)
    test, _ = prepare_rows(cfg, test)
    train_router(cfg, fit, out / "router")
    router = Router.load(out / "router", cfg)
    est = train_estimator(cfg, fit, seed=args.seed) if args.estimator else None
    art = calibrate_policy(cfg, cal, router=router, estimator=est, train_rows=fit,
                           quality_target=args.quality_target, delta=args.delta,
                           guarantee=args.guarantee)  # type: ignore[arg-type]
    art.save(out / "policy.json")
    lat = planning_latency(cfg, fit)
    tiers = build_replay_tiers(cfg, test)

    def replay(theta_b: float | None, lam: float, test=test, art=art, tiers=tiers) -> dict[str, float]:  # noqa: ANN001
        rt = _FixedBiasRouter(router, [r.task for r in test], [r.prompt for r in test], theta_b)
        casc = Cascade(cfg, tiers, router=rt, policy=art.with_theta(art.theta.model_copy(update={"b": theta_b, "lam": lam})),
                       latency=lat, estimator=est, request_builder=_request_builder, online=False)
        q, c, qt, ct = [], [], [], []
        for r in test:
            res = casc.run(r.task, r.prompt, id=r.id)
            gq = res.generation.quality
            q.append(0.0 if gq is None or math.isnan(gq) else float(gq))
            c.append(res.total_cost)
            top = art.ladders[r.task][-1]
            qt.append(quality_of(r, top))
            ct.append(float(r.outcomes[top].cost or 0.0) if top in r.outcomes else 0.0)
        regret = np.clip(np.array(qt) - np.array(q), 0, 1).mean()
        return {"quality_ratio": float(np.mean(q) / np.mean(qt)), "cost_ratio": float(np.sum(c) / np.sum(ct)),
                "mean_regret": float(regret)}

    res = {
        "matrix": d.name,
        "n_fit": len(fit), "n_cal": len(cal), "n_test": len(test),
        "quality_target": args.quality_target,
        "certificate": art.certificate.model_dump(mode="json"),
        "plain": art.certificate.plain(),
        "served": replay(art.theta.b, art.theta.lam),
        "router_only_default_b": replay(None, 1.0),
        "always_top": replay(None, 0.0),
        "estimator": bool(est),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.resplits:
        # the router (and estimator) stay fixed: they never saw calibration or test rows, so
        # re-drawing which of those rows calibrate and which test is what the guarantee is about
        pool = [*cal, *test]
        splits = []
        for k in range(args.resplits):
            rng = np.random.default_rng(1000 + k)
            by_task: dict[str, list] = {}
            for r in pool:
                by_task.setdefault(r.task, []).append(r)
            cal_k, test_k = [], []
            for rows in by_task.values():
                idx = rng.permutation(len(rows))
                n_cal = int(round(len(rows) * len(cal) / len(pool)))
                cal_k += [rows[i] for i in idx[:n_cal]]
                test_k += [rows[i] for i in idx[n_cal:]]
            art_k = calibrate_policy(cfg, cal_k, router=router, estimator=est, train_rows=fit,
                                     quality_target=args.quality_target, delta=args.delta,
                                     guarantee=args.guarantee, seed=k)  # type: ignore[arg-type]
            got = replay(art_k.theta.b, art_k.theta.lam, test=test_k, art=art_k, tiers=build_replay_tiers(cfg, test_k))
            alpha = art_k.certificate.alpha
            splits.append({
                "split": k, "theta": art_k.theta.model_dump(), "certified": art_k.certificate.certified,
                "alpha": alpha, **got, "regret_above_alpha": got["mean_regret"] > alpha,
                "quality_below_target": got["quality_ratio"] < args.quality_target,
            })
            print(f"split {k}: theta {art_k.theta.label()} regret {got['mean_regret']:.4f} (alpha {alpha:.4f}) "
                  f"quality {got['quality_ratio']:.3f} cost {got['cost_ratio']:.3f}", flush=True)
        res["resplits"] = {
            "n": len(splits),
            "share_regret_above_alpha": float(np.mean([x["regret_above_alpha"] for x in splits])),
            "share_quality_below_target": float(np.mean([x["quality_below_target"] for x in splits])),
            "mean_quality_ratio": float(np.mean([x["quality_ratio"] for x in splits])),
            "mean_cost_ratio": float(np.mean([x["cost_ratio"] for x in splits])),
            "splits": splits,
        }
        res["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(res, indent=2, sort_keys=True)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
