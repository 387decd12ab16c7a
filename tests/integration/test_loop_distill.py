"""LoRA distillation for real: a tiny randomly initialised Llama learns its set (loss
falls, greedy outputs on those inputs change); the slow test does the same on SmolLM2."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from routenlp.loop.distill import LoraSettings, encode_examples, lora_distill
from tiny_llama import build_tiny_llama, greedy

PAIRS = [
    (f"<|im_start|>user\nclassify request {i}: my card {w}<|im_end|>\n<|im_start|>assistant\n", lab)
    for i, (w, lab) in enumerate([
        ("was stolen", "lost_or_stolen_card"), ("is lost", "lost_or_stolen_card"),
        ("pin is wrong", "change_pin"), ("pin reset", "change_pin"),
        ("refund please", "request_refund"), ("money back", "request_refund"),
        ("top up failed", "top_up_failed"), ("top up declined", "top_up_failed"),
    ])
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = [p + t for p, t in PAIRS] * 4
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "hf", corpus)


def test_labels_mask_the_prompt_and_keep_the_target(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    prompt, target = PAIRS[0]
    (ids, labels), = encode_examples(tok, [(prompt * 20, target)], max_length=48)
    assert len(ids) == len(labels) == 48  # the long prompt was cut from the left
    n_t = len(tok.encode(target, add_special_tokens=False))
    assert labels[-n_t:] == ids[-n_t:] and set(labels[:-n_t]) == {-100}


def test_lora_on_tiny_llama_lowers_loss_and_changes_outputs(tiny: Path, tmp_path: Path) -> None:
    prompts = [p for p, _ in PAIRS]
    before = greedy(tiny, prompts)
    res = lora_distill(tiny, PAIRS, tmp_path / "adapter", chat_format="chatml",
                       settings=LoraSettings(r=4, alpha=16, lr=2e-2, epochs=25, batch_size=4, seed=1))
    assert res.status == "trained" and res.steps == 25 * 2
    assert res.loss_after < 0.5 * res.loss_before, (res.loss_before, res.loss_after)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    meta = json.loads((tmp_path / "adapter" / "distill.json").read_text())
    assert meta["n_examples"] == len(PAIRS)
    after = greedy(tiny, prompts, adapter=tmp_path / "adapter")
    assert sum(a != b for a, b in zip(after, before)) >= len(PAIRS) // 2, (before, after)
    # the student now produces its targets' text on most of its set
    hits = sum(t[:6] in a for a, (_, t) in zip(after, PAIRS))
    assert hits >= len(PAIRS) // 2, after


def test_adapter_merges_with_the_local_tiers_merge_path(tiny: Path, tmp_path: Path) -> None:
    from routenlp.models.convert import merge_lora

    lora_distill(tiny, PAIRS[:4], tmp_path / "adapter", settings=LoraSettings(r=2, epochs=1, batch_size=4))
    merged = merge_lora(tiny, tmp_path / "adapter", tmp_path / "merged")
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))


@pytest.mark.slow
def test_lora_on_smollm2_lowers_loss_on_eight_examples(tmp_path: Path) -> None:
    from routenlp.config import load_config
    from routenlp.loop import adapters

    cfg = load_config(Path(__file__).resolve().parents[2] / "examples" / "local-cpu.yaml")
    hf = adapters.local_hf_dir(cfg.tier("T2"))
    if not (hf / "config.json").is_file():
        pytest.skip("SmolLM2 not converted (routenlp models pull smollm2-135m-instruct)")
    tier = cfg.tier("T2")
    pairs = [(adapters.render_prompt(cfg, tier, "cs_intent", q, "chatml"), lab) for q, lab in [
        ("My card was stolen yesterday.", "lost_or_stolen_card"), ("I forgot my PIN.", "change_pin"),
        ("I want my money back for this order.", "request_refund"), ("My top-up failed.", "top_up_failed"),
        ("Someone took my wallet with the card.", "lost_or_stolen_card"), ("How do I change my PIN?", "change_pin"),
        ("Please refund the purchase.", "request_refund"), ("The top up did not go through.", "top_up_failed"),
    ]]
    res = lora_distill(hf, pairs, tmp_path / "adapter", settings=LoraSettings(epochs=2, batch_size=8, lr=2e-3))
    assert res.loss_after < res.loss_before


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_training_is_deterministic_and_cached_by_content(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = LoraSettings(r=2, epochs=2, batch_size=2, lr=1e-2, seed=3)
    pairs = PAIRS[:4]
    # cache off (conftest): two trainings on the same input save the same bytes
    a = lora_distill(tiny, pairs, tmp_path / "a", settings=settings)
    b = lora_distill(tiny, pairs, tmp_path / "b", settings=settings)
    assert not a.cached and not b.cached
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert (a.losses, a.loss_after) == (b.losses, b.loss_after)

    monkeypatch.setenv("ROUTENLP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ROUTENLP_DISTILL_CACHE")
    first = lora_distill(tiny, pairs, tmp_path / "c", settings=settings)
    assert not first.cached
    t0 = time.perf_counter()
    hit = lora_distill(tiny, pairs, tmp_path / "fresh" / "d", settings=settings)
    assert hit.cached and time.perf_counter() - t0 < 5
    assert _files(tmp_path / "fresh" / "d") == _files(tmp_path / "c") == _files(tmp_path / "a")
    same = ("n_examples", "loss_before", "loss_after", "steps", "losses", "seconds")
    assert {k: getattr(hit, k) for k in same} == {k: getattr(first, k) for k in same}
    assert hit.artifact == str(tmp_path / "fresh" / "d")
    # a damaged cache entry is trained again (and replaced), never served
    (weights,) = (tmp_path / "cache" / "distill").glob("*/adapter/adapter_model.safetensors")
    weights.write_bytes(b"truncated")
    assert not lora_distill(tiny, pairs, tmp_path / "h", settings=settings).cached
    assert lora_distill(tiny, pairs, tmp_path / "i", settings=settings).cached
    assert _files(tmp_path / "i") == _files(tmp_path / "a")
    # threads are not part of the key; the pairs, their order and the seed are
    assert lora_distill(tiny, pairs, tmp_path / "e", settings=dataclasses.replace(settings, threads=1)).cached
    assert not lora_distill(tiny, pairs[::-1], tmp_path / "f", settings=settings).cached
    assert not lora_distill(tiny, pairs, tmp_path / "g", settings=dataclasses.replace(settings, seed=4)).cached
