"""Distillers per tier kind: the weight updates of the closed loop.

- local generative tiers: sequence-level KD with a LoRA adapter (peft, CPU, fp32) on the
  tier's HF weights; the loss is on the target tokens only, with the prompt rendered
  exactly as the tier renders it when serving. The adapter goes into a new versioned
  directory; the local tier merges it and converts to CTranslate2 once (cached by content).
- classifier tiers: the head is refitted with the added labels.
- remote tiers: the set is exported as chat JSONL for an external job and skipped.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routenlp.config import EnsembleConfig, TierConfig
from routenlp.errors import ConfigError, DataError
from routenlp.loop import adapters
from routenlp.loop.sets import Example, export_chat_jsonl
from routenlp.matrix import MatrixRow

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    lr: float = 1e-3
    epochs: int = 2
    batch_size: int = 8
    max_length: int = 384
    seed: int = 13
    threads: int | None = None
    target_modules: tuple[str, ...] = LORA_TARGETS


@dataclass
class DistillResult:
    tier: str
    kind: str
    status: str  # "trained" | "exported" | "skipped"
    n_examples: int
    artifact: str | None = None  # adapter dir / head dir / exported JSONL
    loss_before: float | None = None
    loss_after: float | None = None
    steps: int = 0
    seconds: float = 0.0
    reason: str | None = None
    losses: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def _end_text(chat_format: str, tokenizer: Any) -> str:
    if chat_format == "chatml":
        return "<|im_end|>"
    return tokenizer.eos_token or ""


def encode_examples(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per (prompt, target): labels are -100 on the prompt; a too-long
    prompt is cut from the left so the target (and the question at the end) survive."""
    out = []
    for prompt, target in pairs:
        p = tokenizer.encode(prompt, add_special_tokens=True)
        t = tokenizer.encode(target, add_special_tokens=False)[: max_length // 2]
        room = max_length - len(t)
        if len(p) > room:
            p = p[len(p) - room:]
        out.append((p + t, [-100] * len(p) + t))
    return out


def _batches(items: list[Any], size: int, rng: random.Random | None) -> list[list[Any]]:
    order = list(range(len(items)))
    if rng is not None:
        rng.shuffle(order)
    return [[items[i] for i in order[s : s + size]] for s in range(0, len(order), size)]


def _collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    n = max(len(x) for x, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _mean_loss(model: Any, data: list[Any], size: int, pad_id: int) -> float:
    """Token-weighted mean loss on the set (eval mode, no grad)."""
    import torch

    model.eval()
    tot, cnt = 0.0, 0
    with torch.inference_mode():
        for b in _batches(data, size, None):
            batch = _collate(b, pad_id)
            n_tok = int((batch["labels"][:, 1:] != -100).sum())
            if n_tok == 0:
                continue
            tot += float(model(**batch).loss) * n_tok
            cnt += n_tok
    return tot / max(cnt, 1)


def lora_distill(
    base_hf_dir: str | Path,
    pairs: Sequence[tuple[str, str]],
    out_dir: str | Path,
    *,
    settings: LoraSettings | None = None,
    chat_format: str = "chatml",
    progress: Any = None,
    label: str = "LoRA",
) -> DistillResult:
    """Train a LoRA adapter on (prompt, target) pairs and save it (PEFT format) to out_dir."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = settings or LoraSettings()
    if not pairs:
        raise DataError("the distillation set is empty")
    base = Path(base_hf_dir)
    if not (base / "config.json").is_file():
        raise ConfigError(f"{base} holds no HF weights (config.json)",
                          hint="run `routenlp models pull <model>` first")
    t0 = time.perf_counter()
    prev_threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    try:
        tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        end = _end_text(chat_format, tok)
        data = encode_examples(tok, [(p, t + end) for p, t in pairs], s.max_length)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, local_files_only=True)
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = [m for m in s.target_modules if m in names]
        if not targets:
            raise ConfigError(f"{base}: none of the LoRA target modules {list(s.target_modules)} exist")
        model = get_peft_model(model, LoraConfig(
            r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=targets, task_type="CAUSAL_LM",
        ))
        before = _mean_loss(model, data, s.batch_size, pad_id)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr)
        rng = random.Random(s.seed)
        n_steps = s.epochs * math.ceil(len(data) / s.batch_size)
        task = progress.add_task(f"{label}: training", total=n_steps) if progress is not None else None
        losses: list[float] = []
        for _ in range(s.epochs):
            for b in _batches(data, s.batch_size, rng):
                model.train()
                loss = model(**_collate(b, pad_id)).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(round(float(loss.detach()), 6))
                if task is not None:
                    progress.update(task, advance=1)
        after = _mean_loss(model, data, s.batch_size, pad_id)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out))
        (out / "distill.json").write_text(json.dumps({
            "base": str(base), "n_examples": len(data), "loss_before": before, "loss_after": after,
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.__dict__.items()},
        }, indent=2, sort_keys=True) + "\n")
        del model
    finally:
        torch.set_num_threads(prev_threads)
    return DistillResult(
        tier=label, kind="local", status="trained", n_examples=len(data), artifact=str(out),
        loss_before=before, loss_after=after, steps=len(losses), seconds=time.perf_counter() - t0,
        losses=losses,
    )


def distill_classifier(config: EnsembleConfig, tier: TierConfig, examples: Sequence[Example],
                       base_rows: Sequence[MatrixRow], out_dir: Path) -> DistillResult:
    """Refit each task's head on the base rows' gold labels plus the added labels
    (an added label overrides a row's own for the same id)."""
    t0 = time.perf_counter()
    by_task: dict[str, dict[str, dict[str, Any]]] = {}
    for r in base_rows:
        if tier.serves(r.task) and isinstance(r.reference, str):
            by_task.setdefault(r.task, {})[r.id] = {"id": r.id, "task": r.task, "input": r.prompt,
                                                     "reference": r.reference}
    for e in examples:
        by_task.setdefault(e.task, {})[e.id] = {"id": e.id, "task": e.task, "input": e.query,
                                                "reference": e.target.strip()}
    tasks = sorted({e.task for e in examples})
    old_root = Path(tier.head or f"runs/heads/{tier.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in [t for t in config.task_names if tier.serves(t)]:
        dst = out_dir / task
        if task in tasks:
            adapters.fit_classifier_head(tier, list(by_task[task].values()), task, dst)
        elif (old_root / task).is_dir():  # untouched tasks keep their head, byte for byte
            import shutil

            shutil.copytree(old_root / task, dst)
    return DistillResult(tier=tier.name, kind="classifier", status="trained", n_examples=len(examples),
                         artifact=str(out_dir), seconds=time.perf_counter() - t0)


def distill_tier(
    config: EnsembleConfig,
    tier_name: str,
    examples: Sequence[Example],
    out_dir: Path,
    *,
    base_rows: Sequence[MatrixRow] = (),
    settings: LoraSettings | None = None,
    progress: Any = None,
) -> DistillResult:
    """Distil one tier by its kind; returns what was produced (or why nothing was).

    A local tier is always trained from its base weights (any adapter in the config is
    ignored): rounds pass the cumulative set, so adapters never stack."""
    tier = config.tier(tier_name)
    if not examples:
        return DistillResult(tier_name, tier.kind, "skipped", 0, reason="no examples")
    if tier.kind == "local":
        pairs = [
            (adapters.render_prompt(config, tier, e.task, e.query, adapters.local_chat_format(tier)), e.target)
            for e in examples
        ]
        res = lora_distill(adapters.local_hf_dir(tier), pairs, out_dir / "adapter", settings=settings,
                           chat_format=adapters.local_chat_format(tier), progress=progress, label=tier_name)
        res.tier = tier_name
        return res
    if tier.kind == "classifier":
        return distill_classifier(config, tier, examples, base_rows, out_dir / "head")
    if tier.kind == "openai_compat":
        path = export_chat_jsonl(config, examples, out_dir / f"{tier_name}.chat.jsonl")
        return DistillResult(tier_name, tier.kind, "exported", len(examples), artifact=str(path),
                             reason="remote tier: fine-tune externally with the exported JSONL")
    return DistillResult(tier_name, tier.kind, "skipped", len(examples), reason=f"{tier.kind} tiers are not trainable")


def with_artifact(config: EnsembleConfig, tier_name: str, result: DistillResult) -> EnsembleConfig:
    """The config with the tier pointed at its new adapter / head (a copy)."""
    if result.status != "trained" or result.artifact is None:
        return config
    tiers = []
    for t in config.tiers:
        if t.name == tier_name:
            field_name = "adapter" if t.kind == "local" else "head"
            t = t.model_copy(update={field_name: result.artifact})
        tiers.append(t)
    return config.model_copy(update={"tiers": tiers})
