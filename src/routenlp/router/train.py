"""Train the router head from a quality matrix.

Steps: labels (cheapest acceptable tier per query) -> sentence embeddings (computed once,
cached in memory and on disk) -> seeded per-task validation split -> AdamW on the router
loss with early stopping on the validation loss -> artifact + report.json (per task: tier
accuracy, under-/over-routing, expected cost, mean quality of the chosen tier).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from routenlp.config import EnsembleConfig
from routenlp.errors import ConfigError, DataError
from routenlp.matrix import MatrixRow
from routenlp.paths import cache_dir
from routenlp.router.artifact import REPORT_FILE, RouterMeta, save_artifact
from routenlp.router.features import PromptFeaturizer, distinct_inputs_share, distinct_share
from routenlp.router.labels import (
    BEST_FALLBACK_DEFINITION,
    LABEL_DEFINITION,
    LabelFallback,
    LabelSet,
    build_labels,
    normalised_costs,
    success_targets,
    tier_costs,
)
from routenlp.router.success import KnnBank, SuccessCalibration, fit_success_calibration


class TaskMetrics(BaseModel):
    """Routing quality of the router's decisions on one task (or all tasks)."""

    n: int
    tier_accuracy: float = Field(description="chosen tier == cheapest acceptable tier")
    under_routing_rate: float = Field(description="chosen tier below the acceptable one")
    over_routing_rate: float = Field(description="chosen tier above the acceptable one")
    acceptable_rate: float = Field(description="chosen tier's recorded quality >= tau")
    expected_cost: float = Field(description="mean c_k / c_K of the chosen tier")
    mean_quality: float = Field(description="mean recorded quality of the chosen tier")
    top_tier_quality: float = Field(description="mean quality of always using the top serving tier")
    tier_shares: dict[str, float]


class TrainReport(BaseModel):
    """What `train_router` did and how well the router routes its validation split."""

    out_dir: str
    n_rows: int
    n_train: int
    n_val: int
    tiers: list[str]
    tasks: list[str]
    epochs_run: int
    best_epoch: int
    best_val_loss: float | None
    final_loss_terms: dict[str, float]
    cost_source: str
    embedding_backend: str
    seconds: float
    eval_split: str
    per_task: dict[str, TaskMetrics]
    overall: TaskMetrics
    decision: DecisionPolicy
    task_only_baseline: TaskMetrics = Field(
        description="per task, the cheapest tier with the best mean train quality, on the eval split"
    )
    objective: str = "success"
    featurizer: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="per task, characters of the shared prefix/suffix stripped"
    )
    distinct_share_before: dict[str, float] = Field(
        default_factory=dict,
        description="per task, share of distinct encoder inputs of the raw prompts cut head-first",
    )
    distinct_share_after: dict[str, float] = Field(
        default_factory=dict, description="per task, share of distinct embeddings the router learns from"
    )
    calibration: dict[str, Any] = Field(
        default_factory=dict,
        description="success estimators: blend per task, out-of-fold log-loss, ECE per tier",
    )


def evaluate_choices(
    labels: LabelSet, choice: np.ndarray, cost_norm: np.ndarray
) -> tuple[dict[str, TaskMetrics], TaskMetrics]:
    """Per-task and overall routing metrics of tier choices against the labels."""
    choice = np.asarray(choice, dtype=np.int64)
    n = len(labels)
    rows = np.arange(n)
    top = labels.task_mask.shape[1] - 1 - np.argmax(labels.task_mask[:, ::-1], axis=1)

    def metrics(sel: np.ndarray) -> TaskMetrics:
        c, y = choice[sel], labels.labels[sel]
        r = rows[sel]
        shares = np.bincount(c, minlength=len(labels.tiers)) / max(1, len(c))
        return TaskMetrics(
            n=int(sel.sum()),
            tier_accuracy=float(np.mean(c == y)),
            under_routing_rate=float(np.mean(c < y)),
            over_routing_rate=float(np.mean(c > y)),
            acceptable_rate=float(np.mean(labels.acceptable[r, c])),
            expected_cost=float(np.mean(cost_norm[c])),
            mean_quality=float(np.mean(labels.quality[r, c])),
            top_tier_quality=float(np.mean(labels.quality[r, top[labels.task_index[sel]]])),
            tier_shares={t: float(s) for t, s in zip(labels.tiers, shares) if s > 0},
        )

    per_task = {}
    for ti, task in enumerate(labels.tasks):
        sel = labels.task_index == ti
        if sel.any():
            per_task[task] = metrics(sel)
    return per_task, metrics(np.ones(n, dtype=bool))


def split_indices(task_index: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-task split, so every task with >= 3 rows has validation rows."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for t in np.unique(task_index):
        idx = np.flatnonzero(task_index == t)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 3:
            n_val = max(1, n_val)
        n_val = min(n_val, len(idx) - 1)
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def embed_texts(
    texts: Sequence[str],
    encoder: str,
    backend: str,
    *,
    progress: Any = None,
    chunk: int = 256,
    truncation: str = "tail",
) -> np.ndarray:
    """Embeddings for training, computed once per (encoder, backend, cut, texts) and kept on
    disk. `texts` are the featurised prompts (see `router.features`)."""
    from routenlp.router.onnx_export import INT8_VARIANT, ROUTER_MAX_LENGTH, get_embedder

    h = hashlib.blake2b(digest_size=16)
    # the int8 embeddings depend slightly on how rows are batched (dynamic activation
    # quantisation), so the batching scheme is part of the key too
    variant = f"{INT8_VARIANT}|len-chunks|" if backend == "onnx-int8" else ""
    h.update(f"{encoder}|{backend}|{ROUTER_MAX_LENGTH}|{variant}|{truncation}".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    path = cache_dir() / "router_embeddings" / f"{h.hexdigest()}.npy"
    if path.exists():
        arr = np.load(path)
        if arr.shape[0] == len(texts):
            return arr
    emb_model = get_embedder(encoder, backend, max_length=ROUTER_MAX_LENGTH, truncation=truncation)  # type: ignore[arg-type]
    out = np.zeros((len(texts), emb_model.dim), dtype=np.float32)
    task = progress.add_task("embedding queries", total=len(texts)) if progress is not None else None
    for s in range(0, len(texts), chunk):
        out[s : s + chunk] = emb_model.encode(list(texts[s : s + chunk]), batch_size=32)
        if progress is not None:
            progress.update(task, advance=min(chunk, len(texts) - s))
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own: two loop chains may embed the same texts at the same time
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


class DecisionPolicy(BaseModel):
    """The default decision rule of a trained router and how its knob was chosen."""

    rule: Literal["success", "label"] = Field(
        description="success: argmax_k P(success_k) - b c_k/c_K; label: argmax_k log p_k - b c_k/c_K"
    )
    cost_bias: float = Field(description="the default knob b")
    source: str = Field(description="where b came from")
    target_quality: float | None = Field(
        None, description="quality the knob must keep on the selection rows (quality_target x reference)"
    )
    quality_target: float | None = Field(None, description="target quality ratio vs the reference")
    reference: str | None = Field(None, description="the reference the ratio is taken against")
    baseline_cost: float | None = None
    quality: float | None = Field(None, description="router mean quality at b on the selection split")
    cost: float | None = Field(None, description="router mean c_k / c_K at b on the selection split")
    meets_target: bool | None = None
    candidates: dict[str, list[bool]] | None = Field(
        None, description="per task, the tiers the success rule may pick (train cost-quality frontier)"
    )
    curve: list[list[float]] = Field(default_factory=list, description="[b, quality, cost] on the selection split")


COST_BIAS_GRID = tuple(float(b) for b in np.round(np.arange(0.0, 1.5001, 0.01), 4))


def task_only_baseline(labels: LabelSet, idx: np.ndarray) -> np.ndarray:
    """(T,) the task-only baseline's tier per task: the cheapest serving tier with the highest
    mean recorded quality on rows `idx` (missing outcomes count as 0); the top serving tier
    for a task without rows there."""
    out = np.zeros(len(labels.tasks), dtype=np.int64)
    for ti in range(len(labels.tasks)):
        serving = labels.task_mask[ti]
        rows = idx[labels.task_index[idx] == ti]
        if len(rows) == 0:
            out[ti] = int(np.flatnonzero(serving)[-1])
            continue
        q = np.where(serving, labels.quality[rows].mean(0), -np.inf)
        out[ti] = int(np.flatnonzero(q >= q.max() - 1e-12)[0])
    return out


def pareto_candidates(labels: LabelSet, idx: np.ndarray, cost_norm: np.ndarray) -> np.ndarray:
    """(T, K) bool: per task, the serving tiers on the train rows' cost-quality frontier.

    A tier is dropped for a task when another serving tier is no more expensive and at least
    as good on mean train quality (strictly better in one of the two, or an exact tie listed
    earlier). Choosing per query among dominated tiers mostly picks up estimation noise (an
    argmax over many near-equal noisy estimates favours lucky ones), so the success rule
    routes among the frontier only. A task without train rows keeps all serving tiers.
    """
    cand = labels.task_mask.copy()
    c = np.asarray(cost_norm, dtype=np.float64)
    for ti in range(len(labels.tasks)):
        rows = idx[labels.task_index[idx] == ti]
        if len(rows) == 0:
            continue
        q = labels.quality[rows].mean(0)
        serving = np.flatnonzero(labels.task_mask[ti])
        for k in serving:
            for j in serving:
                if j == k:
                    continue
                better = (c[j] <= c[k] and q[j] >= q[k]) and (c[j] < c[k] or q[j] > q[k] or j < k)
                if better:
                    cand[ti, k] = False
                    break
    return cand


def select_cost_bias(
    success: np.ndarray,
    labels: LabelSet,
    cost_norm: np.ndarray,
    *,
    target_quality: float,
    baseline_cost: float | None = None,
    selected_on: str = "validation",
    grid: Sequence[float] = COST_BIAS_GRID,
    candidates: np.ndarray | None = None,
) -> DecisionPolicy:
    """Choose the default knob b of the success rule on held-out rows (never the test split).

    Starting at b = 0 (most likely to succeed), b grows along the grid while the mean
    quality on `labels` stays >= `target_quality` (quality_target x the reference's quality
    on the same rows, the rule the baselines' default points use); the last such b is the
    cheapest setting that keeps it (cost never rises with b). When b = 0 already falls
    short, b = 0 is kept and `meets_target` is False. `candidates`: optional (n, K) bool
    per-row tiers the rule may pick (see pareto_candidates).
    """
    from routenlp.router.inference import choose_by_success

    rows = np.arange(len(labels))
    allowed = labels.row_mask if candidates is None else labels.row_mask & candidates
    curve = []
    for b in grid:
        c = choose_by_success(success, allowed, cost_norm, cost_bias=b)
        curve.append([float(b), float(labels.quality[rows, c].mean()), float(cost_norm[c].mean())])
    # walk from b = 0 (the quality-first setting) towards cheaper settings and stop at the first
    # b whose quality drops below the target: a lone cheap b that matches the target by luck
    # on a small validation split is not taken
    best = curve[0]
    ok = curve[0][1] >= target_quality - 1e-9
    if ok:
        for pt in curve[1:]:
            if pt[1] < target_quality - 1e-9:
                break
            best = pt
    return DecisionPolicy(
        rule="success",
        cost_bias=best[0],
        source=f"selected on the {selected_on} split: cheapest b keeping quality >= the target",
        target_quality=float(target_quality),
        baseline_cost=baseline_cost,
        quality=best[1],
        cost=best[2],
        meets_target=bool(ok),
        curve=curve,
    )


def _fit_head(
    emb: np.ndarray,
    labels: LabelSet,
    tr_idx: np.ndarray,
    va_idx: np.ndarray,
    cost_norm: np.ndarray,
    rc: Any,
    *,
    progress: Any = None,
    what: str = "training router",
) -> tuple[dict[str, np.ndarray], float | None, int, int, dict[str, float]]:
    """Fit one head on rows `tr_idx` with early stopping on rows `va_idx` (seeded).

    Returns (numpy weights, best validation loss, best epoch, epochs run, last loss terms).
    """
    import torch

    from routenlp.router.loss import router_loss
    from routenlp.router.model import RouterHead, prior_logits

    torch.manual_seed(rc.seed)
    gen = torch.Generator().manual_seed(rc.seed)
    attempted = labels.attempted
    s_target = success_targets(labels, rc.success_target)
    use_success = rc.lambda_s > 0

    def tensors(idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "emb": torch.from_numpy(emb[idx]),
            "task": torch.from_numpy(labels.task_index[idx]),
            "mask": torch.from_numpy(labels.row_mask[idx]),
            "y": torch.from_numpy(labels.labels[idx]),
            "q": torch.from_numpy(labels.quality[idx]),
            "tau": torch.from_numpy(labels.tau[idx]),
            "s_y": torch.from_numpy(s_target[idx]),
            "s_w": torch.from_numpy(attempted[idx]),
        }

    tr, va = tensors(tr_idx), (tensors(va_idx) if len(va_idx) else None)
    cn = torch.from_numpy(cost_norm.astype(np.float32))
    prior = (
        prior_logits(s_target[tr_idx], attempted[tr_idx], labels.task_index[tr_idx], len(labels.tasks))
        if use_success
        else None
    )
    model = RouterHead(
        emb.shape[1], len(labels.tasks), len(labels.tiers), task_dim=rc.task_dim, hidden=rc.hidden,
        success_head=use_success, success_prior=prior,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=rc.lr, weight_decay=1e-4)

    def loss_of(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits, s_logits = model.forward_all(batch["emb"], batch["task"], batch["mask"])
        return router_loss(
            logits, batch["y"], cn, batch["q"], batch["tau"], lambda_c=rc.lambda_c, lambda_q=rc.lambda_q,
            success_logits=s_logits, success_targets=batch["s_y"], success_weight=batch["s_w"],
            lambda_s=rc.lambda_s,
        )

    best_state, best_val, best_epoch, bad, epochs_run = None, None, 0, 0, 0
    terms: dict[str, float] = {}
    bar = progress.add_task(what, total=rc.epochs) if progress is not None else None
    n_tr = len(tr_idx)
    for epoch in range(1, rc.epochs + 1):
        model.train()
        perm = torch.randperm(n_tr, generator=gen)
        for s in range(0, n_tr, rc.batch_size):
            b = perm[s : s + rc.batch_size]
            loss, _ = loss_of({k: v[b] for k, v in tr.items()})
            opt.zero_grad()
            loss.backward()
            opt.step()
        epochs_run = epoch
        model.eval()
        with torch.no_grad():
            _, terms = loss_of(va if va is not None else tr)
        # the decision uses the success head: stop where its loss is best (the noisy
        # cheapest-acceptable-tier CE would otherwise dominate the choice of epoch)
        val = terms["success"] if rc.objective == "success" and "success" in terms else terms["total"]
        if best_val is None or val < best_val - 1e-5:
            best_val, best_epoch, bad = val, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if progress is not None:
            progress.update(bar, advance=1, description=f"{what} (val loss {val:.4f})")
        if va is not None and bad >= rc.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if progress is not None:
        progress.update(bar, completed=rc.epochs)
    return model.numpy_weights(), best_val, best_epoch, epochs_run, terms


def fold_indices(task_index: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Seeded per-task K-fold partition of the rows (each task spread over all folds)."""
    rng = np.random.default_rng(seed + 7919)
    folds: list[list[int]] = [[] for _ in range(k)]
    for t in np.unique(task_index):
        idx = np.flatnonzero(task_index == t)
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[j % k].append(int(i))
    return [np.sort(np.asarray(f, dtype=np.int64)) for f in folds if f]


def _cross_fit_success(
    emb: np.ndarray, labels: LabelSet, cost_norm: np.ndarray, rc: Any, *, progress: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str, list[np.ndarray]]:
    """Out-of-fold success probabilities for choosing the decision knob.

    For each of `rc.knob_folds` folds: fit a head on the other folds (early stopping on a
    seeded split of them), predict the fold, and fix the fold's task-only baseline tiers and
    frontier candidates from the other folds only. Returns (success (n, K), row order,
    baseline tier per row, candidate mask (n, K), description, each fold's positions in the
    returned row order).
    """
    from routenlp.router.model import head_outputs

    folds = fold_indices(labels.task_index, rc.knob_folds, rc.seed)
    all_idx = np.arange(len(labels))
    succ, rows, base, cand, positions = [], [], [], [], []
    start = 0
    for f, held in enumerate(folds):
        positions.append(np.arange(start, start + len(held)))
        start += len(held)
        rest = np.setdiff1d(all_idx, held)
        rest_labels = labels.task_index[rest]
        itr, iva = split_indices(rest_labels, rc.val_fraction, rc.seed + f + 1)
        w, *_ = _fit_head(
            emb, labels, rest[itr], rest[iva], cost_norm, rc, progress=progress,
            what=f"choosing the decision knob (fold {f + 1}/{len(folds)})",
        )
        ti = labels.task_index[held]
        _, s = head_outputs(w, emb[held], ti)
        assert s is not None
        succ.append(np.where(labels.task_mask[ti], s, 0.0))
        rows.append(held)
        base.append(task_only_baseline(labels, rest)[ti])
        cand.append(pareto_candidates(labels, rest, cost_norm)[ti])
    return (
        np.concatenate(succ),
        np.concatenate(rows),
        np.concatenate(base),
        np.concatenate(cand),
        f"{len(folds)}-fold cross-fitted training",
        positions,
    )


def reference_quality(labels: LabelSet, reference: str, *, tr_idx_labels: LabelSet) -> float:
    """Mean quality on `labels` of the reference system: always the task's top serving tier
    ("top"), or the one tier with the best mean quality on the training rows ("best")."""
    rows = np.arange(len(labels))
    if reference == "best":
        q = np.where(tr_idx_labels.row_mask, tr_idx_labels.quality, 0.0).mean(0)
        k = int(np.argmax(q))
        return float(labels.quality[rows, k].mean())
    top = labels.task_mask.shape[1] - 1 - np.argmax(labels.task_mask[:, ::-1], axis=1)
    return float(labels.quality[rows, top[labels.task_index]].mean())


def _raw_input_share(labels: LabelSet, encoder: str) -> dict[str, float]:
    """Distinct encoder inputs per task of the raw prompts cut head-first at the router's
    length: what every learned system saw before featurisation."""
    from routenlp.models.loading import hf_classes

    (AutoTokenizer,) = hf_classes("AutoTokenizer")

    from routenlp.router.encoder import resolve_encoder_path
    from routenlp.router.onnx_export import ROUTER_MAX_LENGTH

    tok = AutoTokenizer.from_pretrained(str(resolve_encoder_path(encoder)))
    ids = tok(list(labels.texts), truncation=True, max_length=ROUTER_MAX_LENGTH)["input_ids"]
    return distinct_inputs_share(ids, labels.task_index, labels.tasks)


def train_router(
    config: EnsembleConfig,
    rows: list[MatrixRow],
    out_dir: str | Path,
    *,
    progress: Any = None,
    backend: str | None = None,
    embeddings: np.ndarray | None = None,
    register: bool = False,
    label_fallback: LabelFallback = "top",
    reference: Literal["top", "best"] = "top",
) -> TrainReport:
    """Train, evaluate on the validation split, save the artifact and report.json.

    `progress`: an optional rich Progress (the CLI passes `cli_utils.progress()`).
    `embeddings`: precomputed (n, d) embeddings of the row prompts (skips the encoder).
    `register`: also register the artifact in the store at `config.store.url`.
    `label_fallback`: label of queries no tier answers acceptably (see labels.acceptable_tier).
    `reference`: what the default knob's quality target (router.quality_target) is a ratio
    of: "top" = each task's most expensive serving tier, "best" = the single tier with the
    best mean train quality (as `evaluate --reference best`).
    """
    import torch

    from routenlp.router.inference import choose_by_success, choose_tiers
    from routenlp.router.model import head_outputs, masked_softmax
    from routenlp.router.onnx_export import ROUTER_MAX_LENGTH, default_backend

    rc = config.router
    if rc.fine_tune_encoder:
        raise ConfigError(
            "router.fine_tune_encoder is not supported yet",
            hint="set router.fine_tune_encoder: false (the frozen encoder + head is the default)",
        )
    if len(config.tiers) < 2:
        raise ConfigError(f"a router needs at least 2 tiers; the config has {config.tier_names}")
    t0 = time.perf_counter()
    if rc.objective == "paper":  # the paper's loss and argmax decision, as an ablation
        rc = rc.model_copy(update={"lambda_s": 0.0})
    labels = build_labels(config, rows, fallback=label_fallback)
    costs, cost_source = tier_costs(config, rows)
    cost_norm = normalised_costs(costs)
    backend = backend or default_backend()
    row_tasks = [labels.tasks[i] for i in labels.task_index]
    featurizer = PromptFeaturizer.fit(row_tasks, labels.texts)
    feat_texts = featurizer.transform_all(row_tasks, labels.texts)
    if embeddings is None:
        emb = embed_texts(feat_texts, rc.encoder, backend, progress=progress, truncation="tail")
    else:
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.shape[0] != len(labels):
            raise DataError(f"{emb.shape[0]} embeddings for {len(labels)} rows")
    share_before = _raw_input_share(labels, rc.encoder) if embeddings is None else {}
    share_after = distinct_share(emb, labels.task_index, labels.tasks)

    tr_idx, va_idx = split_indices(labels.task_index, rc.val_fraction, rc.seed)
    if len(tr_idx) == 0:
        raise DataError("too few rows to train the router")
    # the head is tiny: one thread avoids oversubscription on shared CPUs (and is faster)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit = _fit_head(emb, labels, tr_idx, va_idx, cost_norm, rc, progress=progress, what="training router")
        oof = None
        if rc.lambda_s > 0 and rc.knob_folds >= 2 and len(labels) >= 5 * rc.knob_folds:
            oof = _cross_fit_success(emb, labels, cost_norm, rc, progress=progress)
    finally:
        torch.set_num_threads(prev_threads)
    weights, best_val, best_epoch, epochs_run, terms = fit
    va = va_idx if len(va_idx) else None

    eval_idx = va_idx if len(va_idx) else tr_idx
    ev = labels.subset(eval_idx)
    logits_ev, success_ev = head_outputs(weights, emb[eval_idx], ev.task_index)
    probs = masked_softmax(logits_ev, ev.row_mask)
    base_tier = task_only_baseline(labels, tr_idx)
    base_choice = base_tier[ev.task_index]
    _, base_overall = evaluate_choices(ev, base_choice, cost_norm)
    explicit_bias = "cost_bias" in rc.model_fields_set
    s_target = success_targets(labels, rc.success_target)
    bank = KnnBank(
        emb, labels.task_index, s_target, labels.attempted, len(labels.tasks), k=rc.knn_k, shrink=rc.knn_shrink
    )
    calibration: SuccessCalibration | None = None
    if success_ev is not None:
        cand = pareto_candidates(labels, tr_idx, cost_norm)
        if oof is not None:
            # out-of-fold success probabilities of every row: the knob is chosen on all rows,
            # each predicted by a head that never saw it (small validation splits are noisy)
            sel_success, sel_rows, sel_base, sel_cand, sel_on, sel_folds = oof
            knn_oof = bank.predict(emb[sel_rows], labels.task_index[sel_rows], exclude=sel_rows)
            calibration, sel_success = fit_success_calibration(
                sel_success, knn_oof, s_target[sel_rows], labels.attempted[sel_rows],
                labels.task_index[sel_rows], labels.tasks, labels.tiers, sel_folds,
                knn_k=rc.knn_k, knn_shrink=rc.knn_shrink,
            )
            sel_success = np.where(labels.task_mask[labels.task_index[sel_rows]], sel_success, 0.0)
            sel_labels = labels.subset(sel_rows)
            _, sel_base_m = evaluate_choices(sel_labels, sel_base, cost_norm)
            knn_ev = bank.predict(emb[eval_idx], ev.task_index, exclude=eval_idx)
            success_ev = calibration.apply(success_ev, knn_ev, ev.task_index, labels.tasks, labels.tiers)
        else:
            sel_success, sel_labels, sel_cand = success_ev, ev, cand[ev.task_index]
            sel_base_m = base_overall
            sel_on = "validation" if len(va_idx) else "train (too few rows for validation)"
        ref_q = reference_quality(sel_labels, reference, tr_idx_labels=labels.subset(tr_idx))
        decision = select_cost_bias(
            sel_success, sel_labels, cost_norm, target_quality=rc.quality_target * ref_q,
            baseline_cost=sel_base_m.expected_cost, selected_on=sel_on, candidates=sel_cand,
        )
        decision.quality_target, decision.reference = float(rc.quality_target), reference
        decision.candidates = {t: cand[i].tolist() for i, t in enumerate(labels.tasks)}
        if explicit_bias:  # the user's knob wins; the selection curve stays for reference
            decision.cost_bias, decision.source = float(rc.cost_bias), "config router.cost_bias"
            decision.quality = decision.cost = decision.meets_target = None
        choice = choose_by_success(
            success_ev, ev.row_mask & cand[ev.task_index], cost_norm, cost_bias=decision.cost_bias
        )
    else:
        decision = DecisionPolicy(rule="label", cost_bias=float(rc.cost_bias), source="config router.cost_bias")
        choice = choose_tiers(probs, ev.row_mask, cost_norm, cost_bias=rc.cost_bias)
    per_task, overall = evaluate_choices(ev, choice, cost_norm)

    out = Path(out_dir)
    report = TrainReport(
        out_dir=str(out),
        n_rows=len(labels),
        n_train=len(tr_idx),
        n_val=len(va_idx),
        tiers=labels.tiers,
        tasks=labels.tasks,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        best_val_loss=best_val if va is not None else None,
        final_loss_terms=terms,
        cost_source=cost_source,
        embedding_backend=backend,
        seconds=round(time.perf_counter() - t0, 3),
        eval_split="validation" if len(va_idx) else "train (too few rows for validation)",
        per_task=per_task,
        overall=overall,
        decision=decision,
        task_only_baseline=base_overall,
        objective=rc.objective,
        featurizer=featurizer.describe(),
        distinct_share_before=share_before,
        distinct_share_after=share_after,
        calibration=calibration.report if calibration is not None else {},
    )
    meta = RouterMeta(
        tiers=labels.tiers,
        tasks=labels.tasks,
        task_index={t: i for i, t in enumerate(labels.tasks)},
        taus={t: float(config.task(t).tau) for t in labels.tasks},
        serving={t: labels.task_mask[i].tolist() for i, t in enumerate(labels.tasks)},
        tier_costs=[float(c) for c in costs],
        cost_source=cost_source,
        cost_norm=[float(c) for c in cost_norm],
        config_hash=config.hash(),
        config_name=config.name,
        label_definition=LABEL_DEFINITION if label_fallback == "top" else BEST_FALLBACK_DEFINITION,
        encoder=rc.encoder,
        embedding_backend=backend,
        embedding_dim=int(emb.shape[1]),
        max_length=ROUTER_MAX_LENGTH,
        hyper=rc.model_dump(mode="json"),
        metrics={
            "overall": overall.model_dump(),
            "task_only_baseline": base_overall.model_dump(),
            "best_val_loss": best_val,
            "epochs_run": epochs_run,
        },
        decision=decision.model_dump(mode="json"),
        featurizer=featurizer.model_dump(mode="json"),
        truncation="tail",
        success_calibration=(
            calibration.model_dump(mode="json", exclude={"report"}) if calibration is not None else None
        ),
    )
    save_artifact(out, weights, meta, knn=bank.arrays() if calibration is not None else None)
    (out / REPORT_FILE).write_text(report.model_dump_json(indent=2) + "\n")
    if register:
        from routenlp.router.artifact import register_artifact

        register_artifact(
            out,
            store_url=config.store.url,
            config_hash=config.hash(),
            metadata={
                "tiers": labels.tiers,
                "tasks": labels.tasks,
                "overall": overall.model_dump(),
                "decision": {"rule": decision.rule, "cost_bias": decision.cost_bias},
            },
        )
    return report


def report_table(report: TrainReport):  # noqa: ANN201 - rich Table
    """Rich table of the per-task routing metrics (what `train-router` prints)."""
    from rich.table import Table

    table = Table(title=f"router on the {report.eval_split} split ({report.n_val or report.n_train} rows)")
    for col in ("task", "n", "tier acc", "under", "over", "acceptable", "cost c/cK", "quality", "top-tier q"):
        table.add_column(col, justify="left" if col == "task" else "right")
    items = list(report.per_task.items()) + [("ALL", report.overall)]
    for name, m in items:
        table.add_row(
            name,
            str(m.n),
            f"{m.tier_accuracy:.3f}",
            f"{m.under_routing_rate:.3f}",
            f"{m.over_routing_rate:.3f}",
            f"{m.acceptable_rate:.3f}",
            f"{m.expected_cost:.3f}",
            f"{m.mean_quality:.3f}",
            f"{m.top_tier_quality:.3f}",
        )
    return table


def featurisation_table(report: TrainReport):  # noqa: ANN201 - rich Table
    """Per task: characters stripped and the share of distinct embeddings before/after."""
    from rich.table import Table

    table = Table(title="featurisation: shared prompt blocks stripped, tail-first cut")
    for col in ("task", "prefix chars", "suffix chars", "distinct before", "distinct after"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task in report.tasks:
        f = report.featurizer.get(task, {})
        before = report.distinct_share_before.get(task)
        after = report.distinct_share_after.get(task)
        table.add_row(
            task, str(f.get("prefix_chars", 0)), str(f.get("suffix_chars", 0)),
            "-" if before is None else f"{before:.1%}", "-" if after is None else f"{after:.1%}",
        )
    return table


def calibration_table(report: TrainReport):  # noqa: ANN201 - rich Table
    """Per tier: ECE of each success estimator out of fold, and after isotonic calibration
    (cross-fitted)."""
    from rich.table import Table

    table = Table(title="success probabilities: ECE out of fold (calibrated: cross-fitted isotonic)")
    for col in ("tier", "n", "MLP", "kNN", "blend", "calibrated"):
        table.add_column(col, justify="left" if col == "tier" else "right")
    for tier, e in report.calibration.get("ece", {}).items():
        table.add_row(
            tier, str(e["n"]), f"{e['ece_mlp']:.3f}", f"{e['ece_knn']:.3f}", f"{e['ece_blend']:.3f}",
            f"{e['ece_calibrated']:.3f}",
        )
    return table
