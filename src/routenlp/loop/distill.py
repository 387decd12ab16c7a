"""Distillers per tier kind: the weight updates of the closed loop.

- local generative tiers: sequence-level KD with a LoRA adapter (peft, CPU, fp32) on the
  tier's HF weights; the loss is on the target tokens only, with the prompt rendered
  exactly as the tier renders it when serving. The adapter goes into a new versioned
  directory; the local tier merges it and converts to CTranslate2 once (cached by content).
- classifier tiers: the head is refitted with the added labels.
- remote tiers: the set is exported as chat JSONL for an external job and skipped.

LoRA training is cached by content under `cache_dir()/distill/` (see `lora_distill`), so a
re-run of a round on the same set copies the adapter instead of training it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import threading
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
from routenlp.models.loading import HF_LOAD_LOCK, hf_classes, load_pretrained

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DISTILL_CACHE_ENV = "ROUTENLP_DISTILL_CACHE"
# Bump when the training recipe changes in a way the key does not see.
DISTILL_CACHE_VERSION = 4  # 2: LoRA init seeded under the lock, threads kept while chains overlap;
# 3: output layer at target positions only (same loss, other float rounding); 4: batches
# grouped by length
log = logging.getLogger(__name__)


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
    # the set's mean loss before and after training: two extra forward passes over the set
    # (about a quarter of the training time at 2 epochs); off, both are recorded as None
    measure_loss: bool = True


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
    cached: bool = False  # True: copied from the distillation cache, numbers as first trained

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


# -- the distillation cache ---------------------------------------------------------------
def distill_cache_enabled() -> bool:
    """False when ROUTENLP_DISTILL_CACHE is 0/false/no/off."""
    value = os.environ.get(DISTILL_CACHE_ENV, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def base_weights_digest(base: Path) -> str:
    """Content hash of HF weights. A registry model's `hf/` uses the file hashes its
    manifest recorded (verified whenever the model loads), so a 500 MB checkpoint is not
    read again; any other directory is hashed (memoised per process)."""
    from routenlp.models.manifest import read_manifest, sha256_tree, tree_digest

    m = read_manifest(base.parent)
    prefix = base.name + "/"
    if m is not None:
        files = {k[len(prefix):]: v for k, v in m.files.items() if k.startswith(prefix)}
        present = {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}
        if files and set(files) == present:
            return tree_digest(files)
    return tree_digest(sha256_tree(base))


def distill_key(
    base_identity: str, pairs: Sequence[tuple[str, str]], settings: LoraSettings, chat_format: str
) -> str:
    """sha256 over the base model (name + weights digest), the exact (prompt, target)
    pairs in order, every LoraSettings field but `threads`, the chat format (it picks the
    end token appended to targets) and the training libraries' versions."""
    from routenlp.models.convert import tool_versions

    versions = tool_versions()
    payload = {
        "v": DISTILL_CACHE_VERSION,
        "base": base_identity,
        "pairs": [[p, t] for p, t in pairs],
        "settings": {k: (list(v) if isinstance(v, tuple) else v)
                     for k, v in dataclasses.asdict(settings).items() if k != "threads"},
        "chat_format": chat_format,
        "versions": {k: versions.get(k) for k in ("torch", "transformers", "peft")},
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def distill_cache_root() -> Path:
    from routenlp.paths import cache_dir

    return cache_dir() / "distill"


_RESULT_FIELDS = ("kind", "status", "n_examples", "loss_before", "loss_after", "steps", "seconds",
                  "losses")


def _valid_entry(entry: Path, key: str) -> dict[str, Any] | None:
    """An entry's metadata when its adapter still matches the digest it recorded."""
    from routenlp.label_cache import dir_digest

    try:
        meta = json.loads((entry / "result.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("key") != key:
        return None
    return meta if dir_digest(entry / "adapter") == meta.get("adapter_digest") else None


def _cache_hit(key: str, out: Path, label: str) -> DistillResult | None:
    """Copy a cached adapter into `out` and return its original numbers (None: a miss,
    or an entry whose adapter no longer matches its recorded digest)."""
    entry = distill_cache_root() / key[:40]
    meta = _valid_entry(entry, key)
    if meta is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(entry / "adapter", out, dirs_exist_ok=True)
    fields = {k: meta["result"][k] for k in _RESULT_FIELDS if k in meta["result"]}
    return DistillResult(tier=label, artifact=str(out), cached=True, **fields)


def _cache_store(key: str, out: Path, result: DistillResult) -> None:
    """Publish a trained adapter and its numbers atomically (temp dir + rename), replacing
    a damaged entry; a valid one published meanwhile by another run is kept. Failing to
    cache never fails training."""
    from routenlp.label_cache import dir_digest
    from routenlp.models.manifest import new_temp_dir, publish_dir

    entry = distill_cache_root() / key[:40]
    if _valid_entry(entry, key) is not None:
        return
    tmp: Path | None = None
    try:
        tmp = new_temp_dir(entry)
        shutil.copytree(out, tmp / "adapter")
        meta = {"key": key, "adapter_digest": dir_digest(tmp / "adapter"),
                "result": {k: getattr(result, k) for k in _RESULT_FIELDS}}
        (tmp / "result.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        publish_dir(tmp, entry)
        tmp = None
    except OSError as err:
        log.warning("distillation cache: could not store %s: %s", entry, err)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


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


GROUP_WINDOW = 8  # batches per window that length grouping sorts


def _batches(items: list[Any], size: int, rng: random.Random | None) -> list[list[Any]]:
    """Batches of (ids, labels) pairs; in order without `rng`. With `rng` (training): a
    seeded shuffle, then each window of GROUP_WINDOW batches is sorted by length so a batch
    holds examples of about one length, and the batches are shuffled. Random pairs padded
    the demo's targeted set (115-434 tokens an example) by 38% at batch 4 and 19% at batch
    2; grouped, by 6% and 4%."""
    order = list(range(len(items)))
    if rng is None:
        return [[items[i] for i in order[s : s + size]] for s in range(0, len(order), size)]
    rng.shuffle(order)
    window = GROUP_WINDOW * size
    order = [i for w in range(0, len(order), window)
             for i in sorted(order[w : w + window], key=lambda i: len(items[i][0]))]
    batches = [[items[i] for i in order[s : s + size]] for s in range(0, len(order), size)]
    rng.shuffle(batches)
    return batches


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


def _target_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """(mean next-token cross-entropy on the target tokens, their count), with the output
    layer applied at target positions only.

    The same loss as the model's own `labels=` path (shift by one, mean over tokens whose
    label is not -100), but the prompt positions never reach the output layer: on the
    demo's sets a target is 10-60 tokens of up to 384, and SmolLM2's 49k-word output layer
    plus its softmax at every position were about a fifth of a LoRA step on CPU."""
    import torch

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    n_tok = int(keep.sum())
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2 caps its logits inside forward(); do the same here
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits, labels[keep]), n_tok


def _mean_loss(model: Any, data: list[Any], size: int, pad_id: int) -> float:
    """Token-weighted mean loss on the set (eval mode, no grad)."""
    import torch

    model.eval()
    tot, cnt = 0.0, 0
    with torch.inference_mode():
        for b in _batches(data, size, None):
            batch = _collate(b, pad_id)
            if int((batch["labels"][:, 1:] != -100).sum()) == 0:
                continue
            loss, n_tok = _target_loss(model, batch)
            tot += float(loss) * n_tok
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
    base_identity: str | None = None,
    cache: bool = True,
) -> DistillResult:
    """Train a LoRA adapter on (prompt, target) pairs and save it (PEFT format) to out_dir.

    Cached by content (unless `cache` is False or ROUTENLP_DISTILL_CACHE=0): the key is
    `distill_key` over `base_identity` (e.g. the registry name; default the directory
    name) plus the weights' digest, the pairs, the settings and the chat format. A hit
    copies the adapter the first run saved (byte for byte) and returns that run's numbers
    with `cached=True`. Honest because training is deterministic given the seed: the LoRA
    init and the batch order are seeded, dropout defaults to 0, and on one machine with
    the same thread count two runs save identical bytes (tests/integration/
    test_loop_distill.py checks it). `threads` is not in the key: another thread count may
    change the last bits of a float sum, so a hit returns the first run's adapter."""
    s = settings or LoraSettings()
    if not pairs:
        raise DataError("the distillation set is empty")
    base = Path(base_hf_dir)
    if not (base / "config.json").is_file():
        raise ConfigError(f"{base} holds no HF weights (config.json)",
                          hint="run `routenlp models pull <model>` first")
    key: str | None = None
    if cache and distill_cache_enabled():
        ident = f"{base_identity or base.name}:{base_weights_digest(base)}"
        key = distill_key(ident, pairs, s, chat_format)
        hit = _cache_hit(key, Path(out_dir), label)
        if hit is not None:
            if progress is not None:
                progress.update(progress.add_task(f"{label}: cached adapter", total=1), advance=1)
            return hit
    result = _train_lora(base, pairs, Path(out_dir), s, chat_format, progress, label)
    if key is not None:
        _cache_store(key, Path(out_dir), result)
    return result


_THREADS_LOCK = threading.Lock()
_THREADS_STATE: dict[str, int] = {"active": 0, "saved": 0}


def _enter_threads(threads: int | None) -> None:
    """Set torch's (process-wide) intra-op thread count for a training run. Runs side by
    side (the loop's chains) share it: the count saved by the first is restored only when
    the last one ends, so a chain that finishes early never changes the thread count (and
    with it the float sums) under one still training."""
    import torch

    with _THREADS_LOCK:
        if _THREADS_STATE["active"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
        _THREADS_STATE["active"] += 1
        if threads:
            torch.set_num_threads(threads)


def _exit_threads() -> None:
    import torch

    with _THREADS_LOCK:
        _THREADS_STATE["active"] -= 1
        if _THREADS_STATE["active"] == 0:
            torch.set_num_threads(_THREADS_STATE["saved"])


def _train_lora(
    base: Path, pairs: Sequence[tuple[str, str]], out_dir: Path, s: LoraSettings,
    chat_format: str, progress: Any, label: str,
) -> DistillResult:
    import torch
    with HF_LOAD_LOCK:  # peft imports transformers: first import under the lock
        from peft import LoraConfig, get_peft_model
    AutoModelForCausalLM, AutoTokenizer = hf_classes("AutoModelForCausalLM", "AutoTokenizer")

    t0 = time.perf_counter()
    _enter_threads(s.threads)
    try:
        tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        end = _end_text(chat_format, tok)
        data = encode_examples(tok, [(p, t + end) for p, t in pairs], s.max_length)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        model = load_pretrained(AutoModelForCausalLM, str(base), dtype=torch.float32, local_files_only=True)
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = [m for m in s.target_modules if m in names]
        if not targets:
            raise ConfigError(f"{base}: none of the LoRA target modules {list(s.target_modules)} exist")
        with HF_LOAD_LOCK:  # the LoRA init draws from torch's global RNG: seed and draw as one step
            torch.manual_seed(s.seed)
            model = get_peft_model(model, LoraConfig(
                r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=targets, task_type="CAUSAL_LM",
            ))
        before = _mean_loss(model, data, s.batch_size, pad_id) if s.measure_loss else None
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr)
        rng = random.Random(s.seed)
        n_steps = s.epochs * math.ceil(len(data) / s.batch_size)
        task = progress.add_task(f"{label}: training", total=n_steps) if progress is not None else None
        losses: list[float] = []
        for _ in range(s.epochs):
            for b in _batches(data, s.batch_size, rng):
                model.train()
                loss, n_tok = _target_loss(model, _collate(b, pad_id))
                if n_tok:  # 0: every target of the batch was cut away, nothing to learn
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    losses.append(round(float(loss.detach()), 6))
                if task is not None:
                    progress.update(task, advance=1)
        after = _mean_loss(model, data, s.batch_size, pad_id) if s.measure_loss else None
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out))
        (out / "distill.json").write_text(json.dumps({
            "base": str(base), "n_examples": len(data), "loss_before": before, "loss_after": after,
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.__dict__.items()},
        }, indent=2, sort_keys=True) + "\n")
        del model
    finally:
        _exit_threads()
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
                           chat_format=adapters.local_chat_format(tier), progress=progress, label=tier_name,
                           base_identity=tier.model)
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
