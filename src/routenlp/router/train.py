"""Train the router head from a quality matrix.

Steps: labels (cheapest acceptable tier per query) -> sentence embeddings (computed once,
cached in memory and on disk) -> seeded per-task validation split -> AdamW on the router
loss with early stopping on the validation loss -> artifact + report.json (per task: tier
accuracy, under-/over-routing, expected cost, mean quality of the chosen tier).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from routenlp.config import EnsembleConfig
from routenlp.errors import ConfigError, DataError
from routenlp.matrix import MatrixRow
from routenlp.paths import cache_dir
from routenlp.router.artifact import REPORT_FILE, RouterMeta, save_artifact
from routenlp.router.labels import (
    BEST_FALLBACK_DEFINITION,
    LABEL_DEFINITION,
    LabelFallback,
    LabelSet,
    build_labels,
    normalised_costs,
    tier_costs,
)


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
    texts: Sequence[str], encoder: str, backend: str, *, progress: Any = None, chunk: int = 256
) -> np.ndarray:
    """Embeddings for training, computed once per (encoder, backend, texts) and kept on disk."""
    from routenlp.router.onnx_export import ROUTER_MAX_LENGTH, get_embedder

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{encoder}|{backend}|{ROUTER_MAX_LENGTH}|".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    path = cache_dir() / "router_embeddings" / f"{h.hexdigest()}.npy"
    if path.exists():
        arr = np.load(path)
        if arr.shape[0] == len(texts):
            return arr
    emb_model = get_embedder(encoder, backend, max_length=ROUTER_MAX_LENGTH)
    out = np.zeros((len(texts), emb_model.dim), dtype=np.float32)
    task = progress.add_task("embedding queries", total=len(texts)) if progress is not None else None
    for s in range(0, len(texts), chunk):
        out[s : s + chunk] = emb_model.encode(list(texts[s : s + chunk]), batch_size=32)
        if progress is not None:
            progress.update(task, advance=min(chunk, len(texts) - s))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


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
) -> TrainReport:
    """Train, evaluate on the validation split, save the artifact and report.json.

    `progress`: an optional rich Progress (the CLI passes `cli_utils.progress()`).
    `embeddings`: precomputed (n, d) embeddings of the row prompts (skips the encoder).
    `register`: also register the artifact in the store at `config.store.url`.
    `label_fallback`: label of queries no tier answers acceptably (see labels.acceptable_tier).
    """
    import torch

    from routenlp.router.inference import choose_tiers
    from routenlp.router.loss import router_loss
    from routenlp.router.model import RouterHead, masked_softmax
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
    labels = build_labels(config, rows, fallback=label_fallback)
    costs, cost_source = tier_costs(config, rows)
    cost_norm = normalised_costs(costs)
    backend = backend or default_backend()
    if embeddings is None:
        emb = embed_texts(labels.texts, rc.encoder, backend, progress=progress)
    else:
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.shape[0] != len(labels):
            raise DataError(f"{emb.shape[0]} embeddings for {len(labels)} rows")

    # the head is tiny: one thread avoids oversubscription on shared CPUs (and is faster)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(rc.seed)
    gen = torch.Generator().manual_seed(rc.seed)
    tr_idx, va_idx = split_indices(labels.task_index, rc.val_fraction, rc.seed)
    if len(tr_idx) == 0:
        raise DataError("too few rows to train the router")

    def tensors(idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "emb": torch.from_numpy(emb[idx]),
            "task": torch.from_numpy(labels.task_index[idx]),
            "mask": torch.from_numpy(labels.row_mask[idx]),
            "y": torch.from_numpy(labels.labels[idx]),
            "q": torch.from_numpy(labels.quality[idx]),
            "tau": torch.from_numpy(labels.tau[idx]),
        }

    tr, va = tensors(tr_idx), (tensors(va_idx) if len(va_idx) else None)
    cn = torch.from_numpy(cost_norm.astype(np.float32))
    model = RouterHead(emb.shape[1], len(labels.tasks), len(labels.tiers), task_dim=rc.task_dim, hidden=rc.hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=rc.lr, weight_decay=1e-4)

    def loss_of(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["emb"], batch["task"], batch["mask"])
        return router_loss(
            logits, batch["y"], cn, batch["q"], batch["tau"], lambda_c=rc.lambda_c, lambda_q=rc.lambda_q
        )

    best_state, best_val, best_epoch, bad, epochs_run = None, None, 0, 0, 0
    terms: dict[str, float] = {}
    bar = progress.add_task("training router", total=rc.epochs) if progress is not None else None
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
        val = terms["total"]
        if best_val is None or val < best_val - 1e-5:
            best_val, best_epoch, bad = val, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if progress is not None:
            progress.update(bar, advance=1, description=f"training router (val loss {val:.4f})")
        if va is not None and bad >= rc.patience:
            break
    torch.set_num_threads(prev_threads)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if progress is not None:
        progress.update(bar, completed=rc.epochs)

    weights = model.numpy_weights()
    from routenlp.router.model import head_logits

    eval_idx = va_idx if len(va_idx) else tr_idx
    ev = labels.subset(eval_idx)
    probs = masked_softmax(head_logits(weights, emb[eval_idx], ev.task_index), ev.row_mask)
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
        metrics={"overall": overall.model_dump(), "best_val_loss": best_val, "epochs_run": epochs_run},
    )
    save_artifact(out, weights, meta)
    (out / REPORT_FILE).write_text(report.model_dump_json(indent=2) + "\n")
    if register:
        from routenlp.router.artifact import register_artifact

        register_artifact(
            out,
            store_url=config.store.url,
            config_hash=config.hash(),
            metadata={"tiers": labels.tiers, "tasks": labels.tasks, "overall": overall.model_dump()},
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
