"""What every learned system embeds of a query: its distinctive part.

Prompts of one task often share a long block (few-shot examples, an instruction, an answer
format). Cut to the encoder's 128-256 tokens, such prompts all reach the encoder as the
same head and every system that learns from the embedding routes on task identity alone
(on RouterBench's arc_challenge / winogrande slices 819 of 947 test rows collapsed that
way). The featuriser learns per task, on train prompts only, the prefix and suffix that
(almost) all of them share, strips them before embedding, and the router's encoder keeps a
text's tail when it must still cut (`truncation="tail"`): the question usually comes last.

One featuriser serves the router, the quality estimator and every baseline of the
evaluation harness (`query_embedder`), so no system sees more of the query than another.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, Field

EmbedFn = Callable[[Sequence[str]], np.ndarray]

MIN_ROWS = 8  # fewer prompts than this: a shared block may be a coincidence
MIN_CHARS = 16  # a shorter shared head/tail ("Question: ") carries no collapse risk


def _shared_length(texts: Sequence[str], share: float, reverse: bool) -> tuple[int, str]:
    """Longest L (and its string) such that at least `share` of `texts` begin (end, with
    `reverse`) with the same L characters. Monotone in L, so binary search works."""
    seqs = [t[::-1] for t in texts] if reverse else list(texts)
    need = max(2, math.ceil(share * len(seqs)))
    lo, hi = 0, max((len(s) for s in seqs), default=0)
    best = ""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        counts = Counter(s[:mid] for s in seqs if len(s) >= mid)
        top, n = counts.most_common(1)[0] if counts else ("", 0)
        if n >= need:
            lo, best = mid, top
        else:
            hi = mid - 1
    return lo, (best[::-1] if reverse else best)


class PromptFeaturizer(BaseModel):
    """Per-task shared prefix and suffix, learnt on train prompts and stripped before
    embedding. An empty featuriser (no task learnt) returns texts unchanged."""

    prefixes: dict[str, str] = Field(default_factory=dict)
    suffixes: dict[str, str] = Field(default_factory=dict)
    share: float = Field(0.9, description="share of a task's prompts that must carry the block")

    @classmethod
    def fit(
        cls, tasks: Sequence[str], texts: Sequence[str], *, share: float = 0.9
    ) -> PromptFeaturizer:
        """Learn each task's shared prefix/suffix from its train prompts."""
        by_task: dict[str, list[str]] = {}
        for t, x in zip(tasks, texts, strict=True):
            by_task.setdefault(t, []).append(x)
        pre: dict[str, str] = {}
        suf: dict[str, str] = {}
        for task, group in by_task.items():
            if len(group) < MIN_ROWS:
                continue
            n, p = _shared_length(group, share, reverse=False)
            if n >= MIN_CHARS:
                pre[task] = p
            n, s = _shared_length(group, share, reverse=True)
            if n >= MIN_CHARS:
                suf[task] = s
        return cls(prefixes=pre, suffixes=suf, share=share)

    def transform(self, task: str | None, text: str) -> str:
        """The distinctive part of `text` (the whole text when nothing would be left).

        With `task` None every learnt block is tried (longest first), for callers that only
        have texts (baselines' embedding functions)."""
        prefixes = [self.prefixes[task]] if task in self.prefixes else []
        suffixes = [self.suffixes[task]] if task in self.suffixes else []
        if task is None:
            prefixes = sorted(self.prefixes.values(), key=len, reverse=True)
            suffixes = sorted(self.suffixes.values(), key=len, reverse=True)
        out = text
        for p in prefixes:
            if out.startswith(p):
                out = out[len(p) :]
                break
        for s in suffixes:
            if len(out) > len(s) and out.endswith(s):
                out = out[: -len(s)]
                break
        return out if out.strip() else text

    def transform_all(self, tasks: Sequence[str | None] | None, texts: Sequence[str]) -> list[str]:
        if tasks is None:
            return [self.transform(None, x) for x in texts]
        return [self.transform(t, x) for t, x in zip(tasks, texts, strict=True)]

    def describe(self) -> dict[str, dict[str, int]]:
        """Per task, the characters stripped at each end (for reports)."""
        tasks = sorted(set(self.prefixes) | set(self.suffixes))
        return {
            t: {"prefix_chars": len(self.prefixes.get(t, "")), "suffix_chars": len(self.suffixes.get(t, ""))}
            for t in tasks
        }


def distinct_share(vectors: np.ndarray, task_index: np.ndarray, tasks: Sequence[str]) -> dict[str, float]:
    """Per task, the share of rows whose embedding differs from every other row's (rounded
    to 1e-5, so int8 noise does not count as a difference)."""
    out: dict[str, float] = {}
    rounded = np.round(np.asarray(vectors, dtype=np.float64), 5)
    for ti, task in enumerate(tasks):
        sel = rounded[np.asarray(task_index) == ti]
        if len(sel) == 0:
            continue
        out[task] = float(len(np.unique(sel, axis=0)) / len(sel))
    return out


def distinct_inputs_share(
    token_ids: Sequence[Sequence[int]], task_index: np.ndarray, tasks: Sequence[str]
) -> dict[str, float]:
    """Per task, the share of distinct encoder inputs (identical token ids give identical
    embeddings): what an encoder can tell apart at most, without running it."""
    out: dict[str, float] = {}
    ti = np.asarray(task_index)
    for i, task in enumerate(tasks):
        sel = [tuple(token_ids[j]) for j in np.flatnonzero(ti == i)]
        if sel:
            out[task] = len(set(sel)) / len(sel)
    return out


def query_embedder(
    featurizer: PromptFeaturizer | None,
    *,
    encoder: str,
    backend: str | None = None,
    threads: int = 2,
) -> EmbedFn:
    """The one embedding path of every learned system: strip the shared blocks, then embed
    with the router's encoder (tail-first truncation, cached by text)."""
    from routenlp.router.onnx_export import ROUTER_MAX_LENGTH, default_backend, get_embedder

    emb = get_embedder(
        encoder, backend or default_backend(), threads=threads, max_length=ROUTER_MAX_LENGTH,
        truncation="tail",
    )
    feat = featurizer or PromptFeaturizer()

    def embed(texts: Sequence[str]) -> np.ndarray:
        return emb.encode(feat.transform_all(None, list(texts)))

    return embed
