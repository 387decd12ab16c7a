"""CPU generation engines for local tiers: CTranslate2 (default) and transformers.

Both take token-id prompts and return, per prompt, the greedy continuation with the
natural-log probability of every chosen token under the model's full distribution (the
cascade's uncertainty signal), stopping at end tokens, stop strings, `max_new_tokens` or
a deadline. Stop strings are checked while decoding (CTranslate2 lets a step callback
end one sequence of a batch), so a few-shot prompt does not pay for tokens past "\\n\\n".

Why CTranslate2 int8: on 2 CPU cores it decodes SmolLM2-135M ~3-5x faster than
transformers fp32 (numbers in the models README / `routenlp bench tiers --baseline`),
installs from a wheel in seconds and gives per-token log-probs through its step callback.
On x86 CPUs without an int8 dot-product instruction the default (`auto`) is float32
instead: there int8 costs SmolLM2 real answer quality (`resolve_compute_type`).
"""

from __future__ import annotations

import atexit
import functools
import os
import platform
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from routenlp.models.loading import load_pretrained

Decode = Callable[[list[int]], str]


@dataclass
class RawGeneration:
    """One prompt's continuation, before text post-processing."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" (end token / stop string), "length", "timeout"


@dataclass
class Finished:
    """A continuation cut at its first stop string, with tokens kept consistent."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str


def default_threads() -> int:
    """CPU threads to decode with: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


# oneDNN `ONEDNN_MAX_CPU_ISA` caps whose int8 kernels have no dot-product instruction
_NO_VNNI_CAPS = frozenset({"SSE41", "AVX", "AVX2", "AVX512_CORE"})
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.lru_cache(maxsize=None)
def int8_dot_product(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether CTranslate2's int8 GEMM runs on a dot-product instruction here (AVX-512
    VNNI, AVX-VNNI or AMX on x86; any 64-bit ARM): True, False, or None when it cannot tell.

    Why it matters: without one, SmolLM2-135M's int8 answers get measurably worse
    (docs/benchmarks.md; likely 16-bit saturating sums in oneDNN's vpmaddubsw kernels).
    oneDNN's own `ONEDNN_MAX_CPU_ISA` cap is honoured, so a capped run is judged as it runs."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return True
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return None
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if cap in _NO_VNNI_CAPS:
        return False
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_VNNI_FLAGS & set(line.partition(":")[2].split()))
    return None


def resolve_compute_type(requested: str) -> tuple[str, str]:
    """The CTranslate2 compute type to load with, and why. `auto` is int8 where int8 runs
    on a dot-product instruction (or where that cannot be told), float32 elsewhere:
    correct answers first, at 1.4x SmolLM2's labelling time there (docs/benchmarks.md)."""
    if requested != "auto":
        return requested, "set in the tier's options"
    dot = int8_dot_product()
    if dot is False:
        return "float32", "this CPU has no int8 dot-product instruction (AVX-512 VNNI / AVX-VNNI), where int8 answers worse"
    if dot is None:
        return "int8", "could not read this CPU's instruction set"
    return "int8", "this CPU has an int8 dot-product instruction"


def find_stop(text: str, stop_strings: Sequence[str], start: int = 0) -> int:
    """Index of the earliest stop string in `text` at or after `start` (-1 if none)."""
    best = -1
    for s in stop_strings:
        if not s:
            continue
        i = text.find(s, start)
        if i != -1 and (best == -1 or i < best):
            best = i
    return best


def finish(raw: RawGeneration, decode: Decode, stop_strings: Sequence[str]) -> Finished:
    """Cut a continuation at its first stop string; keep tokens/logprobs aligned.

    The text is everything before the stop string. Tokens are kept up to the one in which
    the text before the stop ends (a token such as ".\\n\\n" that straddles the stop is
    kept: it carries content), so len(token_ids) == len(logprobs) always holds.
    """
    ids, lps = list(raw.token_ids), list(raw.logprobs)
    text = decode(ids)
    cut = find_stop(text, stop_strings)
    if cut == -1:
        return Finished(ids, lps, text, raw.finish_reason)
    keep = 0
    for i in range(len(ids)):
        prefix_len = len(decode(ids[:i]))
        if prefix_len >= cut:
            break
        keep = i + 1
    return Finished(ids[:keep], lps[:keep], text[:cut], "stop")


class Engine(Protocol):
    """What a local tier calls to decode a batch."""

    name: str

    def generate(
        self,
        prompts: Sequence[list[int]],
        *,
        max_new_tokens: int,
        end_ids: Sequence[int],
        stop_strings: Sequence[str] = (),
        decode: Decode | None = None,
        deadline: float | None = None,
        min_new_tokens: int = 0,
    ) -> list[RawGeneration]: ...


_LIVE_CT2: weakref.WeakSet[CT2Engine] = weakref.WeakSet()


@atexit.register
def _close_ct2_engines() -> None:
    """Free CTranslate2 generators while Python is still whole: one destroyed during
    interpreter teardown can abort the process ("terminate called ...")."""
    for engine in list(_LIVE_CT2):
        engine.close()


class CT2Engine:
    """CTranslate2 `Generator` on CPU, int8 or float32 (see `resolve_compute_type`; thread-safe)."""

    name = "ctranslate2"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        id_to_token: Callable[[list[int]], list[str]],
        threads: int | None = None,
        compute_type: str = "auto",
    ) -> None:
        import ctranslate2

        self.threads = threads or default_threads()
        self.compute_type, self.compute_reason = resolve_compute_type(compute_type)
        compute_type = self.compute_type
        self.generator = ctranslate2.Generator(
            str(model_dir),
            device="cpu",
            compute_type=compute_type,
            intra_threads=self.threads,
            inter_threads=1,
        )
        self._id_to_token = id_to_token
        _LIVE_CT2.add(self)

    def close(self) -> None:
        """Release the model (the engine cannot generate afterwards)."""
        gen = getattr(self, "generator", None)
        if gen is not None:
            self.generator = None
            del gen

    def generate(
        self,
        prompts: Sequence[list[int]],
        *,
        max_new_tokens: int,
        end_ids: Sequence[int],
        stop_strings: Sequence[str] = (),
        decode: Decode | None = None,
        deadline: float | None = None,
        min_new_tokens: int = 0,
    ) -> list[RawGeneration]:
        if not prompts:
            return []
        if self.generator is None:
            raise RuntimeError("engine is closed")
        outs = [RawGeneration() for _ in prompts]
        ends = set(end_ids)
        checked = [0] * len(prompts)  # text length already searched for stop strings
        max_stop = max((len(s) for s in stop_strings), default=0)

        def on_step(step: Any) -> bool:
            out = outs[step.batch_id]
            if out.finish_reason != "length":
                return True  # already finished (stop string / timeout)
            if step.token_id in ends:
                out.finish_reason = "stop"
                return True
            out.token_ids.append(int(step.token_id))
            out.logprobs.append(float(step.log_prob))
            if stop_strings and decode is not None:
                text = decode(out.token_ids)
                if find_stop(text, stop_strings, max(0, checked[step.batch_id] - max_stop)) != -1:
                    out.finish_reason = "stop"
                    return True
                checked[step.batch_id] = len(text)
            if deadline is not None and time.monotonic() > deadline:
                out.finish_reason = "timeout"
                return True
            return False

        self.generator.generate_batch(
            [self._id_to_token(list(p)) for p in prompts],
            max_length=max_new_tokens,
            min_length=min_new_tokens,
            end_token=list(ends) or None,
            include_prompt_in_result=False,
            beam_size=1,
            sampling_topk=1,
            return_scores=True,  # without it the step callback gets log_prob=None
            callback=on_step,
        )
        return outs


class TorchEngine:
    """transformers `generate` (greedy, KV cache, left-padded batches): the fallback for
    architectures CTranslate2 cannot convert and the baseline for benchmarks."""

    name = "transformers"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        pad_id: int,
        threads: int | None = None,
        dynamic_int8: bool = False,
    ) -> None:
        import torch
        from routenlp.models.loading import hf_classes

        (AutoModelForCausalLM,) = hf_classes("AutoModelForCausalLM")

        self.threads = threads or default_threads()
        torch.set_num_threads(self.threads)
        model = load_pretrained(
            AutoModelForCausalLM, str(model_dir), dtype=torch.float32, local_files_only=True
        ).eval()
        if dynamic_int8:
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model
        self.pad_id = pad_id
        self._lock = threading.Lock()  # torch modules are not safe to share mid-generate

    def generate(
        self,
        prompts: Sequence[list[int]],
        *,
        max_new_tokens: int,
        end_ids: Sequence[int],
        stop_strings: Sequence[str] = (),
        decode: Decode | None = None,
        deadline: float | None = None,
        min_new_tokens: int = 0,
    ) -> list[RawGeneration]:
        import torch
        # transformers was first imported under the load lock in __init__; a plain import is
        # safe here and keeps the lock off the per-batch path
        from transformers import StoppingCriteria, StoppingCriteriaList

        if not prompts:
            return []
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1

        timed_out = {"flag": False}

        class _Deadline(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                hit = deadline is not None and time.monotonic() > deadline
                if hit:
                    timed_out["flag"] = True
                return torch.full((input_ids.shape[0],), hit, dtype=torch.bool)

        with self._lock, torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens or None,
                do_sample=False,
                eos_token_id=list(end_ids) or None,
                pad_token_id=self.pad_id,
                output_logits=True,
                return_dict_in_generate=True,
                stopping_criteria=StoppingCriteriaList([_Deadline()]),
            )
        seqs = out.sequences[:, width:]
        logits = torch.stack(out.logits, dim=1) if out.logits else None
        results: list[RawGeneration] = []
        ends = set(end_ids)
        for i in range(len(prompts)):
            r = RawGeneration(finish_reason="length")
            for t in range(seqs.shape[1]):
                tid = int(seqs[i, t])
                if tid in ends:
                    r.finish_reason = "stop"
                    break
                lp = torch.log_softmax(logits[i, t].float(), dim=-1)[tid] if logits is not None else 0.0
                r.token_ids.append(tid)
                r.logprobs.append(float(lp))
            if r.finish_reason == "length" and timed_out["flag"] and len(r.token_ids) < max_new_tokens:
                r.finish_reason = "timeout"
            results.append(r)
        return results
