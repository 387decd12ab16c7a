"""The loop's only contact points with the rest of RouteNLP.

Router training, calibration, evaluation, labelling and the local tier are owned by other
packages and change under us; every call the loop makes into them goes through one
function here, so re-pointing the loop at a new API is a one-file change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from routenlp.config import EnsembleConfig, TierConfig
from routenlp.matrix import MatrixRow

EmbedFn = Callable[[Sequence[str]], np.ndarray]


# -- router representation ------------------------------------------------------------
def router_embedder(config: EnsembleConfig) -> EmbedFn:
    """Text embeddings through the router's encoder path (cached on disk like training)."""
    from routenlp.router.onnx_export import default_backend
    from routenlp.router.train import embed_texts

    enc, backend = config.router.encoder, default_backend()

    def embed(texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return embed_texts(list(texts), enc, backend)

    return embed


def router_task_vectors(router_dir: str | Path | None) -> dict[str, np.ndarray]:
    """The learned task embedding per task of a trained router ({} without one)."""
    if router_dir is None or not Path(router_dir).exists():
        return {}
    from routenlp.router.artifact import load_artifact

    weights, meta = load_artifact(router_dir)
    emb = np.asarray(weights["task_emb"], dtype=np.float32)
    return {task: emb[int(i)] for task, i in dict(meta.task_index).items()}


# -- router / policy / evaluation -----------------------------------------------------
def train_router(config: EnsembleConfig, rows: list[MatrixRow], out_dir: Path) -> Any:
    from routenlp.router.train import train_router as _train

    return _train(config, rows, out_dir)


def load_router(config: EnsembleConfig, router_dir: Path) -> Any:
    from routenlp.router.inference import Router

    return Router.load(router_dir, config)


@dataclass
class ServedPolicy:
    """What a round serves: the certified policy (router + cascade under one guarantee)
    and the per-tier thresholds it replaced, kept as the `routenlp-per-tier` ablation."""

    thresholds: Any
    artifact: Any = None  # conformal.certify.PolicyArtifact; None: per-tier rule only

    @property
    def certificate(self) -> Any:
        return None if self.artifact is None else self.artifact.certificate


def calibrate(config: EnsembleConfig, rows: list[MatrixRow], out_dir: Path, *, router: Any = None
              ) -> ServedPolicy:
    """Per-tier thresholds (thresholds.json, the config's cascade alpha/method/delta_conf)
    and, with a router, the certified policy (policy.json) at the config's
    router.quality_target, cascade guarantee and loss, delta 0.1."""
    from routenlp.conformal import calibrate as _calibrate
    from routenlp.conformal.certify import calibrate_policy

    c = config.cascade
    th = _calibrate(config, rows, alpha=c.alpha, method=c.method, delta_conf=c.delta_conf)
    th.save(out_dir / "thresholds.json")
    art = None
    if router is not None:
        art = calibrate_policy(config, rows, router=router, quality_target=config.router.quality_target,
                               delta=0.1, seed=13, guarantee=config.cascade.guarantee,
                               loss=config.cascade.certify_loss)
        art.save(out_dir / "policy.json")
    return ServedPolicy(th, art)


def load_thresholds(path: Path) -> Any:
    from routenlp.conformal import Thresholds

    return Thresholds.load(path)


def evaluate(config: EnsembleConfig, rows: list[MatrixRow], router: Any, policy: ServedPolicy) -> dict[str, Any]:
    """RouteNLP through the Cascade on one split: quality/cost ratios and tier shares."""
    from routenlp.bench.harness import evaluate as _evaluate

    res = _evaluate(config, rows, router=router, thresholds=policy.thresholds, policy=policy.artifact,
                    baselines="none", seed=13)
    m = res.systems["routenlp"]
    top = res.tiers[-1]
    shares = dict(m.tier_shares)
    cert = policy.certificate
    return {
        "quality_ratio": float(m.quality_ratio),
        "cost_ratio": float(m.cost_ratio),
        "mean_quality": float(m.mean_quality),
        "top_share": float(shares.get(top, 0.0)),
        "cheap_share": float(sum(v for k, v in shares.items() if k != top)),
        "tier_shares": shares,
        "certified": None if cert is None else bool(cert.certified),
    }


# -- tasks and tiers ------------------------------------------------------------------
def task_spec(config: EnsembleConfig, task: str) -> Any:
    from routenlp.tasks import get_task_spec

    return get_task_spec(config.task(task))


def response_text(response: Any) -> str:
    from routenlp.tiers.replay import response_text as _rt

    return _rt(response)


def render_prompt(config: EnsembleConfig, tier: TierConfig, task: str, query: str, chat_format: str) -> str:
    """Exactly the text the local tier feeds its model for this query."""
    from routenlp.tiers.hf_local import render_prompt as _render

    return _render(task_spec(config, task).build_request(query), chat_format)


def chat_messages(config: EnsembleConfig, task: str, query: str) -> list[dict[str, str]]:
    from routenlp.tiers.hf_local import request_messages

    return request_messages(task_spec(config, task).build_request(query))


def local_hf_dir(tier: TierConfig) -> Path:
    """The HF weights a local tier's model was converted from (registry cache or a dir)."""
    from routenlp.models.registry import MODELS, model_dir

    name = tier.model or ""
    if name in MODELS:
        return model_dir(name) / "hf"
    return Path(name).expanduser().resolve()


def local_chat_format(tier: TierConfig) -> str:
    from routenlp.models.registry import MODELS

    fmt = tier.chat_format
    if fmt == "auto" and (tier.model or "") in MODELS:
        fmt = MODELS[tier.model or ""].chat_format
    return "chatml" if fmt == "auto" else fmt


def fit_classifier_head(tier: TierConfig, rows: list[dict[str, Any]], task: str, out_dir: Path) -> dict[str, Any]:
    from routenlp.tiers.classifier import fit_head_from_rows

    return fit_head_from_rows(tier, rows, task=task, out_dir=out_dir)


def relabel(config: EnsembleConfig, rows: list[MatrixRow], tier_name: str, out_path: Path,
            on_progress: Callable[[int], None] | None = None) -> list[MatrixRow]:
    """Run one tier (as configured, e.g. with a new adapter) over the rows' queries and
    return the rows with that tier's outcomes replaced; other tiers are left as recorded.

    Goes through the label cache like `routenlp label`: the key holds the adapter's
    content hash, so re-running a round whose adapter came out byte-identical (e.g. from
    the distillation cache) reads its answers back instead of decoding again."""
    from routenlp.labeling import label_rows
    from routenlp.matrix import read_matrix
    from routenlp.tiers.base import build_tier

    tier = build_tier(config.tier(tier_name), config)
    serve = [r for r in rows if config.tier(tier_name).serves(r.task)]
    data = [{"id": r.id, "task": r.task, "input": r.prompt, "reference": r.reference} for r in serve]
    if out_path.exists():
        out_path.unlink()
    try:
        label_rows(config, data, out_path, tiers={tier_name: tier}, tier_names=[tier_name],
                   on_progress=on_progress)
    finally:
        close = getattr(tier, "close", None)
        if close is not None:
            close()
    fresh = {r.id: r.outcomes.get(tier_name) for r in read_matrix(out_path)} if serve else {}
    out: list[MatrixRow] = []
    for r in rows:
        new = r.model_copy(deep=True)
        if r.id in fresh and fresh[r.id] is not None:
            new.outcomes[tier_name] = fresh[r.id]  # type: ignore[assignment]
        out.append(new)
    return out
