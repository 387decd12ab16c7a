"""The `classifier` tier: sentence embeddings + a trained linear head per task.

The cheapest tier for classification tasks: one MiniLM forward pass and a matrix product
instead of text generation. The head is a multinomial logistic regression (scikit-learn,
class-balanced) stored as plain arrays (`head.npz`: coef, intercept) plus `meta.json`
(labels, encoder, metrics), so loading it never unpickles code. Heads live in
`<config.head or runs/heads/<tier>>/<task>/` and are loaded lazily: a tier without a head
for a task still builds, and answers that task with a clear error saying how to fit one.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from routenlp.config import EnsembleConfig, TierConfig
from routenlp.errors import ConfigError, DataError, RouteNLPError, TierError
from routenlp.router.encoder import DEFAULT_ENCODER, Encoder, get_encoder
from routenlp.tiers.base import BaseTier, Generation, Request, Usage, register_tier

HEAD_FORMAT = 1
HEAD_ARRAYS = "head.npz"
HEAD_META = "meta.json"
ProgressFn = Callable[[int, int], None]


def head_root(tier: TierConfig) -> Path:
    """Directory holding one sub-directory per task for a classifier tier's heads."""
    return Path(tier.head or f"runs/heads/{tier.name}")


def missing_head_error(tier: str, task: str) -> TierError:
    """The error for a task whose head was never fitted, with the command that fits it."""
    return TierError(
        f"tier {tier} has no trained head for task {task}: "
        f"run `routenlp tier fit {tier} --config C --data train.jsonl`"
    )


@dataclass
class ClassifierHead:
    """A linear softmax head over sentence embeddings: p = softmax(x @ coef.T + intercept)."""

    labels: list[str]
    coef: np.ndarray  # (n_labels, dim)
    intercept: np.ndarray  # (n_labels,)
    encoder: str
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.coef.shape[1])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(n, dim) embeddings -> (n, n_labels) probabilities (rows sum to 1)."""
        logits = x.astype(np.float64) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        expd = np.exp(logits)
        return expd / expd.sum(axis=1, keepdims=True)

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (HEAD_ARRAYS + ".tmp.npz")
        np.savez(tmp, coef=self.coef.astype(np.float32),
                 intercept=self.intercept.astype(np.float32))
        tmp.replace(d / HEAD_ARRAYS)
        meta = {**self.meta, "format": HEAD_FORMAT, "labels": self.labels, "encoder": self.encoder,
                "dim": self.dim}
        (d / HEAD_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | Path) -> ClassifierHead:
        d = Path(directory)
        try:
            meta = json.loads((d / HEAD_META).read_text())
            with np.load(d / HEAD_ARRAYS, allow_pickle=False) as arrays:
                coef = np.asarray(arrays["coef"], dtype=np.float64)
                intercept = np.asarray(arrays["intercept"], dtype=np.float64)
        except (OSError, ValueError, KeyError) as err:
            raise TierError(f"classifier head at {d} is unreadable ({err}); refit it") from None
        labels = [str(x) for x in meta.get("labels", [])]
        if coef.ndim != 2 or coef.shape[0] != len(labels) or intercept.shape != (len(labels),):
            raise TierError(
                f"classifier head at {d} is inconsistent: {len(labels)} labels but coef "
                f"{coef.shape}, intercept {intercept.shape}; refit it"
            )
        return cls(labels, coef, intercept, str(meta.get("encoder", DEFAULT_ENCODER)), meta)


def _head_exists(directory: Path) -> bool:
    return (directory / HEAD_META).exists() and (directory / HEAD_ARRAYS).exists()


# -- training ---------------------------------------------------------------------------


def read_task_rows(path: str | Path) -> list[dict[str, Any]]:
    """Labelled task rows for fitting; a directory means its train.jsonl."""
    from routenlp.workloads.io import load_task_rows

    p = Path(path)
    rows = load_task_rows(p / "train.jsonl" if p.is_dir() else p)
    if not rows:
        raise DataError(f"training data {p} has no rows")
    return rows


def _split(labels: Sequence[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified split: each label keeps >= 1 training row; labels seen once stay in train."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    train, val = [], []
    for idx in by_label.values():
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        n_val = min(n_val, len(idx) - 1)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return sorted(train), sorted(val)


def _fit_logreg(x: np.ndarray, y: np.ndarray, n_labels: int, c: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial, class-balanced logistic regression -> (coef, intercept) with one row per
    label (the binary case is expanded to two rows so inference is always a softmax)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
    clf.fit(x, y)
    coef = np.zeros((n_labels, x.shape[1]))
    intercept = np.zeros(n_labels)
    classes = [int(k) for k in clf.classes_]
    if len(classes) == 2 and clf.coef_.shape[0] == 1:
        # sigmoid(z) == softmax([-z/2, z/2])[1]
        coef[classes[0]], coef[classes[1]] = -clf.coef_[0] / 2, clf.coef_[0] / 2
        intercept[classes[0]], intercept[classes[1]] = -clf.intercept_[0] / 2, clf.intercept_[0] / 2
    else:
        for row, k in enumerate(classes):
            coef[k], intercept[k] = clf.coef_[row], clf.intercept_[row]
    # labels absent from the fitted split (possible only for tiny data) get a very low logit
    for k in set(range(n_labels)) - set(classes):
        intercept[k] = -30.0
    return coef, intercept


def encode_texts(encoder: Encoder, texts: Sequence[str], *, chunk: int = 128,
                 on_progress: ProgressFn | None = None) -> np.ndarray:
    """Embed in chunks so long fits can report progress."""
    parts = []
    for start in range(0, len(texts), chunk):
        parts.append(encoder.encode(list(texts[start : start + chunk])))
        if on_progress:
            on_progress(min(start + chunk, len(texts)), len(texts))
    if not parts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return np.concatenate(parts)


def fit_head_from_rows(
    tier: TierConfig,
    rows: Iterable[Mapping[str, Any]],
    *,
    task: str | None = None,
    out_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 13,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train and save a task's head from labelled rows; returns the fit metrics.

    The labels are the distinct `reference` values. A held-out stratified split measures
    validation accuracy; the saved head is then refitted on all rows.
    """
    if tier.kind != "classifier":
        raise ConfigError(
            f"tier {tier.name!r} is a {tier.kind!r} tier; only classifier tiers have a head to fit"
        )
    all_rows = list(rows)
    tasks = sorted({str(r.get("task")) for r in all_rows})
    if task is None:
        if len(tasks) != 1:
            raise DataError(f"training data holds several tasks {tasks}; choose one with --task")
        task = tasks[0]
    picked = [r for r in all_rows if str(r.get("task")) == task]
    if not picked:
        raise DataError(f"training data has no rows for task {task!r}; it holds {tasks}")
    if not tier.serves(task):
        raise ConfigError(
            f"tier {tier.name!r} does not serve task {task!r}; it serves {tier.tasks}",
            hint=f"add {task} to the tier's `tasks:` list in the config",
        )
    texts, refs = [], []
    for r in picked:
        ref = r.get("reference")
        if isinstance(ref, bool) or not isinstance(ref, (str, int)):
            raise DataError(
                f"task {task!r}: row {r.get('id')!r} has a {type(ref).__name__} reference; "
                "a classifier tier needs one label string per row (a classification task)"
            )
        texts.append(str(r.get("input") or ""))
        refs.append(str(ref))
    labels = sorted(set(refs))
    if len(labels) < 2:
        raise DataError(f"task {task!r}: need at least 2 distinct labels to fit, got {labels}")
    started = time.perf_counter()
    encoder_name = tier.model or DEFAULT_ENCODER
    encoder = get_encoder(encoder_name)
    x = encode_texts(encoder, texts, on_progress=on_progress)
    index = {lab: k for k, lab in enumerate(labels)}
    y = np.array([index[r] for r in refs])
    c = float(tier.options.get("C", 10.0))
    train_idx, val_idx = _split(refs, val_fraction, seed)
    metrics: dict[str, Any] = {"train_accuracy": None, "val_accuracy": None}
    if val_idx:
        coef, intercept = _fit_logreg(x[train_idx], y[train_idx], len(labels), c, seed)
        probe = ClassifierHead(labels, coef, intercept, encoder_name, {})
        metrics["train_accuracy"] = float(
            (probe.predict_proba(x[train_idx]).argmax(1) == y[train_idx]).mean()
        )
        metrics["val_accuracy"] = float(
            (probe.predict_proba(x[val_idx]).argmax(1) == y[val_idx]).mean()
        )
    coef, intercept = _fit_logreg(x, y, len(labels), c, seed)
    head = ClassifierHead(labels, coef, intercept, encoder_name, {})
    if metrics["train_accuracy"] is None:
        metrics["train_accuracy"] = float((head.predict_proba(x).argmax(1) == y).mean())
    out = Path(out_dir) if out_dir is not None else head_root(tier) / task
    result = {
        "tier": tier.name,
        "task": task,
        "n": len(picked),
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "labels": labels,
        "encoder": encoder_name,
        "C": c,
        **metrics,
        "seconds": round(time.perf_counter() - started, 3),
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "head_dir": str(out),
    }
    head.meta = {k: v for k, v in result.items() if k not in ("labels", "head_dir")}
    head.save(out)
    return result


def fit_classifier_head(
    tier: TierConfig,
    data_path: str | Path,
    *,
    out_dir: str | Path | None = None,
    task: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 13,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Fit a classifier tier's head on a task's labelled train split (task JSONL).

    Returns `{"tier","task","n","n_train","n_val","labels","train_accuracy","val_accuracy",
    "head_dir",...}`; the head is written to `out_dir` (default `<head root>/<task>`).
    """
    return fit_head_from_rows(
        tier, read_task_rows(data_path), task=task, out_dir=out_dir,
        val_fraction=val_fraction, seed=seed, on_progress=on_progress,
    )


# -- the tier ---------------------------------------------------------------------------


class ClassifierTier(BaseTier):
    """Embedding + linear head; answers with the argmax label and all class probabilities."""

    def __init__(self, config: TierConfig) -> None:
        super().__init__(config)
        self.encoder_name = config.model or DEFAULT_ENCODER
        self.root = head_root(config)
        self._heads: dict[str, ClassifierHead] = {}
        self._lock = threading.Lock()

    def head_dir(self, task: str) -> Path:
        return self.root / task

    def reload(self) -> None:
        """Forget loaded heads (after a refit) so the next request reads them again."""
        with self._lock:
            self._heads.clear()

    def warmup(self) -> None:
        """Load the encoder and every fitted head now, so a server's first request is fast.
        Missing heads are skipped (they are reported per request)."""
        get_encoder(self.encoder_name)
        tasks = self.config.tasks if self.config.tasks != "all" else (
            [d.name for d in self.root.iterdir() if d.is_dir()] if self.root.is_dir() else []
        )
        for task in tasks:
            if _head_exists(self.head_dir(task)):
                self.require_head(task)

    def require_head(self, task: str) -> ClassifierHead:
        """The task's head, loaded once; TierError when it was never fitted or is unusable."""
        with self._lock:
            head = self._heads.get(task)
        if head is not None:
            return head
        if not self.config.serves(task):
            raise TierError(f"tier {self.name} does not serve task {task}")
        d = self.head_dir(task)
        if not _head_exists(d):
            raise missing_head_error(self.name, task)
        head = ClassifierHead.load(d)
        with self._lock:
            self._heads[task] = head
        return head

    def generate(self, request: Request) -> Generation:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        """All requests share one encoder call; each task's head is applied to its rows."""
        started = time.perf_counter()
        out: list[Generation | None] = [None] * len(requests)
        heads: dict[int, ClassifierHead] = {}
        for i, req in enumerate(requests):
            try:
                heads[i] = self.require_head(req.task)
            except RouteNLPError as err:
                out[i] = Generation(text="", error=err.message)
        todo = sorted(heads)
        if todo:
            texts = [requests[i].query or requests[i].prompt for i in todo]
            try:
                encoder = get_encoder(self.encoder_name)
                x = encoder.encode(texts)
                lengths = self._token_counts(encoder, texts)
            except RouteNLPError as err:
                x, lengths = None, []
                reason = err.message
            except Exception as err:  # noqa: BLE001 - a tier answers, it does not raise
                x, lengths = None, []
                reason = f"encoder failed: {type(err).__name__}: {err}"
            elapsed = time.perf_counter() - started
            for pos, i in enumerate(todo):
                if x is None:
                    out[i] = Generation(text="", error=f"{self.name}: {reason}", latency_s=elapsed)
                    continue
                head = heads[i]
                if x.shape[1] != head.dim:
                    out[i] = Generation(
                        text="",
                        error=f"tier {self.name}: head for task {requests[i].task} expects "
                        f"{head.dim}-d embeddings but encoder {self.encoder_name} gives "
                        f"{x.shape[1]}-d; refit the head",
                        latency_s=elapsed,
                    )
                    continue
                probs = head.predict_proba(x[pos : pos + 1])[0]
                out[i] = self._answer(head, probs, lengths[pos], elapsed, len(todo))
        return [g if g is not None else Generation(text="", error="internal") for g in out]

    @staticmethod
    def _token_counts(encoder: Encoder, texts: Sequence[str]) -> list[int]:
        enc = encoder.tokenizer(list(texts), truncation=True, max_length=encoder.max_length)
        return [len(ids) for ids in enc["input_ids"]]

    def _answer(self, head: ClassifierHead, probs: np.ndarray, tokens_in: int,
                elapsed: float, batch: int) -> Generation:
        k = int(probs.argmax())
        label = head.labels[k]
        p_max = float(probs[k])
        gen = Generation(
            text=label,
            tokens=[label],
            logprobs=None,
            class_probs={lab: float(p) for lab, p in zip(head.labels, probs)},
            usage=Usage(tokens_in=tokens_in, tokens_out=1),
            latency_s=elapsed / max(1, batch),  # this answer's share of the batch's time
            confidence=p_max,
            uncertainty=1.0 - p_max,
            meta={"label_logprob": math.log(max(p_max, 1e-300)), "batch_size": batch,
                  "batch_seconds": elapsed},
        )
        return self.price(gen)


@register_tier("classifier")
def _build(config: TierConfig, ensemble: EnsembleConfig) -> ClassifierTier:
    return ClassifierTier(config)
