"""Prompt formatting, stop handling and the local tier's batching/error paths, with a fake
engine and tokenizer (no model weights needed)."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace
from typing import Any, Sequence

import pytest

from routenlp.config import TierConfig, parse_config
from routenlp.errors import ConfigError
from routenlp.models.engine import CT2Engine, RawGeneration, find_stop, finish
from routenlp.tiers.base import Request, build_tier
from routenlp.tiers.hf_local import (
    LocalTier,
    format_chatml,
    render_prompt,
    resolve_chat_format,
    stop_strings_for,
)

# A toy vocabulary: one token per string piece.
VOCAB = ["<eos>", "<|im_end|>", "Hello", " world", ".", "\n", "\n\n", "Input", ":", " Paris", " x"]


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids if VOCAB[i] not in ("<eos>", "<|im_end|>"))


# -- prompt formats -------------------------------------------------------------------------
def test_format_chatml_no_system_prompt_added() -> None:
    text = format_chatml([{"role": "user", "content": "What is 2+2?"}])
    assert text == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_format_chatml_keeps_given_roles() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    text = format_chatml(msgs)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi")
    assert text.count("<|im_start|>") == 5 and text.endswith("<|im_start|>assistant\n")


def test_render_prompt_formats() -> None:
    r = Request(task="t", prompt="Input: a\nOutput:", messages=[{"role": "user", "content": "q"}])
    assert render_prompt(r, "completion") == "Input: a\nOutput:"
    assert render_prompt(r, "chatml") == format_chatml([{"role": "user", "content": "q"}])
    # no messages: the prompt becomes the single user turn
    r2 = Request(task="t", prompt="plain")
    assert "<|im_start|>user\nplain<|im_end|>" in render_prompt(r2, "chatml")
    with pytest.raises(ConfigError):
        render_prompt(r, "jinja")


def test_resolve_chat_format_auto() -> None:
    assert resolve_chat_format("auto", True) == "chatml"
    assert resolve_chat_format("auto", False) == "completion"
    assert resolve_chat_format("completion", True) == "completion"
    assert stop_strings_for("completion") == ["\n\n", "\nInput:", "\nOutput:"]
    assert stop_strings_for("chatml") == []
    assert stop_strings_for("chatml", ["###"]) == ["###"]


# -- stop handling ----------------------------------------------------------------------------
def test_find_stop_earliest() -> None:
    assert find_stop("a\nInput: b\n\n", ["\n\n", "\nInput:"]) == 1
    assert find_stop("abc", ["\n\n"]) == -1
    assert find_stop("a\n\nb\n\n", ["\n\n"], start=3) == 4


def test_finish_cuts_at_stop_and_keeps_alignment() -> None:
    raw = RawGeneration([9, 4, 6, 7, 8], [-0.1, -0.2, -0.3, -0.4, -0.5], "length")
    done = finish(raw, decode, ["\n\n"])
    assert done.text == " Paris." and done.token_ids == [9, 4] and done.logprobs == [-0.1, -0.2]
    assert done.finish_reason == "stop"


def test_finish_without_stop_is_unchanged() -> None:
    raw = RawGeneration([2, 3], [-0.5, -0.25], "length")
    done = finish(raw, decode, ["\n\n"])
    assert (done.text, done.token_ids, done.finish_reason) == ("Hello world", [2, 3], "length")


# -- CTranslate2 step callback (fake generator) ----------------------------------------------
class FakeGenerator:
    """Replays scripted tokens through the step callback like ctranslate2.Generator."""

    def __init__(self, scripts: list[list[int]], delay: float = 0.0) -> None:
        self.scripts = scripts
        self.delay = delay
        self.kwargs: dict[str, Any] = {}

    def generate_batch(self, tokens: list[list[str]], **kw: Any) -> list[Any]:
        self.kwargs = kw
        cb = kw["callback"]
        stopped = [False] * len(tokens)
        for step in range(max(len(s) for s in self.scripts)):
            for b, script in enumerate(self.scripts):
                if stopped[b] or step >= len(script) or step >= kw["max_length"]:
                    continue
                time.sleep(self.delay)
                tid = script[step]
                res = SimpleNamespace(batch_id=b, step=step, token_id=tid, token=VOCAB[tid],
                                      log_prob=-0.1 * (step + 1), is_last=False)
                if cb(res):
                    stopped[b] = True
        return []


def _ct2(scripts: list[list[int]], delay: float = 0.0) -> CT2Engine:
    eng = CT2Engine.__new__(CT2Engine)
    eng.generator = FakeGenerator(scripts, delay)
    eng._id_to_token = lambda ids: [VOCAB[i] for i in ids]
    eng.threads = 1
    return eng


def test_ct2_engine_stops_on_end_token_and_stop_string() -> None:
    eng = _ct2([[2, 3, 1, 4], [9, 4, 6, 7, 8], [2, 3, 3, 3, 3]])
    outs = eng.generate([[2], [2], [2]], max_new_tokens=4, end_ids=[0, 1],
                        stop_strings=["\n\n"], decode=decode)
    assert outs[0].token_ids == [2, 3] and outs[0].finish_reason == "stop"  # end token dropped
    assert outs[1].token_ids == [9, 4, 6] and outs[1].finish_reason == "stop"  # stopped in decode
    assert outs[2].token_ids == [2, 3, 3, 3] and outs[2].finish_reason == "length"
    assert outs[0].logprobs == pytest.approx([-0.1, -0.2])
    kw = eng.generator.kwargs
    assert kw["include_prompt_in_result"] is False and kw["return_scores"] is True
    assert sorted(kw["end_token"]) == [0, 1]


def test_ct2_engine_deadline() -> None:
    eng = _ct2([[2, 3, 3, 3, 3, 3, 3, 3]], delay=0.02)
    outs = eng.generate([[2]], max_new_tokens=8, end_ids=[0], deadline=time.monotonic() + 0.05)
    assert outs[0].finish_reason == "timeout" and 1 <= len(outs[0].token_ids) < 8


# -- the tier with a fake engine -------------------------------------------------------------
class FakeTokenizer:
    bos_token_id = None
    eos_token_ids = {0}

    def get_vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(VOCAB)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [2] * max(1, len(text) // 10)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return decode(ids) if skip_special_tokens else "".join(VOCAB[i] for i in ids)


class FakeEngine:
    name = "fake"

    def __init__(self, script: list[int] | None = None, fail: bool = False) -> None:
        self.script = script or [9, 4, 6, 7]
        self.fail = fail
        self.batches: list[int] = []
        self.deadlines: list[float | None] = []  # seconds left at the call
        self.prompt_lens: list[list[int]] = []

    def generate(self, prompts: Sequence[list[int]], *, max_new_tokens: int, end_ids: Sequence[int],
                 stop_strings: Sequence[str] = (), decode: Any = None, deadline: float | None = None,
                 min_new_tokens: int = 0) -> list[RawGeneration]:
        if self.fail:
            raise RuntimeError("kaboom")
        self.batches.append(len(prompts))
        self.prompt_lens.append([len(p) for p in prompts])
        self.deadlines.append(None if deadline is None else deadline - time.monotonic())
        toks = self.script[:max_new_tokens]
        return [RawGeneration(list(toks), [math.log(0.5)] * len(toks), "length") for _ in prompts]


def _tier(engine: FakeEngine, **cfg: Any) -> LocalTier:
    base = dict(name="T2", kind="local", model="smollm2-135m-instruct", price_in=1.0, price_out=2.0,
                batch_size=2, max_tokens=3, chat_format="completion")
    base.update(cfg)
    tier = LocalTier(TierConfig(**base))
    tier._tokenizer = FakeTokenizer()
    tier._chat_format = base["chat_format"] if base["chat_format"] != "auto" else "chatml"
    tier._end_ids = [0, 1]
    tier._engine = engine  # type: ignore[assignment]
    return tier


def test_tier_generation_fields_and_cost() -> None:
    tier = _tier(FakeEngine())
    g = tier.generate(Request(task="t", prompt="Input: capital of France?\nOutput:"))
    assert g.ok and g.text == "Paris."
    assert g.tokens == [" Paris", "."] and len(g.logprobs) == len(g.tokens) == g.usage.tokens_out == 2
    assert all(lp <= 0 for lp in g.logprobs)
    assert g.usage.tokens_in > 0
    assert g.cost == pytest.approx(g.usage.tokens_in / 1000 * 1.0 + 2 / 1000 * 2.0)
    assert g.uncertainty == pytest.approx(0.5) and g.meta["finish_reason"] == "stop"


def test_tier_batches_by_batch_size_and_keeps_order() -> None:
    eng = FakeEngine(script=[2, 3, 3, 3, 3])
    tier = _tier(eng, chat_format="chatml")
    reqs = [Request(task="t", prompt="x" * n, max_tokens=m) for n, m in [(300, 2), (10, 4), (100, 4), (20, 2), (50, 4)]]
    gens = tier.generate_batch(reqs)
    assert eng.batches == [2, 2, 1]
    assert [g.usage.tokens_out for g in gens] == [2, 4, 4, 2, 4]  # per-request max_tokens kept
    assert gens[0].usage.tokens_in > gens[1].usage.tokens_in  # results in request order
    for lens in eng.prompt_lens:  # similar lengths batched together
        assert lens == sorted(lens)


def test_batch_deadline_is_timeout_per_request() -> None:
    """A single request gets timeout_s; a batch of n gets n x timeout_s (what its requests
    get one after another): a fixed per-batch deadline timed out whole batches on a slow CPU."""
    eng = FakeEngine()
    tier = _tier(eng, timeout_s=10.0, batch_size=3)
    tier.generate(Request(task="t", prompt="q"))
    tier.generate_batch([Request(task="t", prompt=f"q{i}") for i in range(5)])
    left = [d for d in eng.deadlines if d is not None]
    assert eng.batches == [1, 3, 2]
    assert 9.0 < left[0] <= 10.0 and 29.0 < left[1] <= 30.0 and 19.0 < left[2] <= 20.0


def test_batched_latency_is_each_requests_share_of_the_batch() -> None:
    """Each of n answers of one batch records batch time / n (the batch's own time is in
    meta): recording the whole batch time per answer made T2 look 16x slower to the
    SLA-aware cascade."""
    class SlowEngine(FakeEngine):
        def generate(self, prompts, **kw):  # noqa: ANN001, ANN003, ANN201
            time.sleep(0.2)
            return super().generate(prompts, **kw)

    tier = _tier(SlowEngine(), batch_size=4)
    gens = tier.generate_batch([Request(task="t", prompt=f"q{i}") for i in range(4)])
    for g in gens:
        assert g.meta["batch_size"] == 4 and g.meta["batch_seconds"] >= 0.2
        assert g.latency_s == pytest.approx(g.meta["batch_seconds"] / 4)


def test_tier_default_max_tokens_from_config() -> None:
    tier = _tier(FakeEngine(script=[2, 3, 3, 3, 3, 3]), max_tokens=3, chat_format="chatml")
    assert tier.generate(Request(task="t", prompt="q")).usage.tokens_out == 3


def test_tier_engine_failure_becomes_error_generation() -> None:
    tier = _tier(FakeEngine(fail=True))
    gens = tier.generate_batch([Request(task="t", prompt="a"), Request(task="t", prompt="b")])
    assert all(not g.ok and "kaboom" in (g.error or "") for g in gens)
    assert all(g.text == "" for g in gens)


def test_tier_load_failure_becomes_error_generation(tmp_path: Any) -> None:
    tier = LocalTier(TierConfig(name="T", kind="local", model=str(tmp_path / "nowhere"),
                                price_in=0, price_out=0))
    g = tier.generate(Request(task="t", prompt="hi"))
    assert not g.ok and "failed to load" in (g.error or "")


def test_tier_config_validation() -> None:
    with pytest.raises(ConfigError, match="needs `model`"):
        LocalTier(TierConfig(name="T", kind="local", price_in=0, price_out=0))
    with pytest.raises(ConfigError, match="options.engine"):
        LocalTier(TierConfig(name="T", kind="local", model="x", price_in=0, price_out=0,
                             options={"engine": "vllm"}))


def test_build_tier_registers_local_kind() -> None:
    cfg = parse_config({
        "tiers": [{"name": "T2", "kind": "local", "model": "smollm2-135m-instruct",
                   "price_in": 0.1, "price_out": 0.1}],
        "tasks": [{"name": "t"}],
    })
    tier = build_tier(cfg.tiers[0], cfg)
    assert isinstance(tier, LocalTier) and tier._engine is None  # nothing loaded yet
