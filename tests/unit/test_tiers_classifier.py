"""Classifier tier mechanics with a tiny deterministic encoder (no model load): fitting,
the on-disk head format, probabilities, lazy loading and the unfitted-head error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from routenlp.config import TierConfig, parse_config
from routenlp.errors import ConfigError, DataError, TierError
from routenlp.tiers import classifier as clf
from routenlp.tiers.base import Request, build_tier
from routenlp.tiers.classifier import ClassifierHead, ClassifierTier, fit_classifier_head


class HashEncoder:
    """Bag of hashed words -> unit vector: separable enough for keyword-labelled toy data."""

    dim = 64
    max_length = 32

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                h = int(hashlib.md5(word.encode()).hexdigest(), 16)
                out[i, h % self.dim] += 1.0
            norm = np.linalg.norm(out[i])
            out[i] /= norm if norm else 1.0
        return out

    def tokenizer(self, texts: list[str], **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [[0] * (len(t.split()) + 2) for t in texts]}


@pytest.fixture
def encoder(monkeypatch: pytest.MonkeyPatch) -> HashEncoder:
    enc = HashEncoder()
    monkeypatch.setattr(clf, "get_encoder", lambda name=None: enc)
    return enc


WORDS = {
    "card_arrival": ["card", "arrive", "delivery", "mail"],
    "transfer": ["transfer", "send", "money", "account"],
    "pin": ["pin", "code", "forgot", "unlock"],
}


def write_rows(path: Path, labels: dict[str, list[str]] = WORDS, n: int = 12,
               task: str = "cs_intent") -> Path:
    rng = np.random.default_rng(0)
    with path.open("w") as fh:
        for label, words in labels.items():
            for i in range(n):
                text = " ".join(rng.choice(words, size=3)) + " please"
                fh.write(json.dumps({"id": f"{label}-{i}", "task": task, "input": text,
                                     "reference": label}) + "\n")
    return path


def tier_cfg(tmp_path: Path, **kw: Any) -> TierConfig:
    return TierConfig(name="T1", kind="classifier", head=str(tmp_path / "heads"),
                      price_in=0.01, price_out=0.01, tasks=["cs_intent", "legal_risk"], **kw)


def test_fit_writes_plain_arrays_and_meta(tmp_path: Path, encoder: HashEncoder) -> None:
    data = write_rows(tmp_path / "train.jsonl")
    result = fit_classifier_head(tier_cfg(tmp_path), data)
    assert result["task"] == "cs_intent" and result["labels"] == sorted(WORDS)
    assert result["n"] == 36 and result["n_train"] + result["n_val"] == 36 and result["n_val"] > 0
    assert result["train_accuracy"] > 0.9 and result["val_accuracy"] is not None
    head_dir = tmp_path / "heads" / "cs_intent"
    assert Path(result["head_dir"]) == head_dir
    meta = json.loads((head_dir / "meta.json").read_text())
    assert meta["labels"] == sorted(WORDS) and meta["dim"] == 64 and meta["format"] == 1
    with np.load(head_dir / "head.npz", allow_pickle=False) as arrays:  # no pickled objects
        assert arrays["coef"].shape == (3, 64) and arrays["intercept"].shape == (3,)


def test_generate_returns_label_probs_usage_and_cost(tmp_path: Path, encoder: HashEncoder) -> None:
    cfg = tier_cfg(tmp_path)
    fit_classifier_head(cfg, write_rows(tmp_path / "train.jsonl"))
    tier = ClassifierTier(cfg)
    gen = tier.generate(Request(task="cs_intent", prompt="rendered prompt",
                                query="forgot my pin code"))
    assert gen.ok and gen.text == "pin" and gen.tokens == ["pin"] and gen.logprobs is None
    assert gen.class_probs is not None and set(gen.class_probs) == set(WORDS)
    assert sum(gen.class_probs.values()) == pytest.approx(1.0)
    assert gen.class_probs["pin"] == max(gen.class_probs.values())
    assert gen.uncertainty == pytest.approx(1 - gen.class_probs["pin"])
    assert gen.usage.tokens_in == 4 + 2 and gen.usage.tokens_out == 1
    assert gen.cost == pytest.approx(cfg.cost(6, 1))


def test_batch_uses_one_encoder_call(tmp_path: Path, encoder: HashEncoder) -> None:
    cfg = tier_cfg(tmp_path)
    fit_classifier_head(cfg, write_rows(tmp_path / "train.jsonl"))
    tier = ClassifierTier(cfg)
    reqs = [Request(task="cs_intent", prompt=q) for q in
            ("card delivery mail", "send money transfer", "unlock pin")]
    reqs.append(Request(task="legal_risk", prompt="no head for this task"))
    before = encoder.calls
    gens = tier.generate_batch(reqs)
    assert encoder.calls == before + 1
    assert [g.text for g in gens[:3]] == ["card_arrival", "transfer", "pin"]
    assert gens[3].error is not None and "legal_risk" in gens[3].error
    for g in gens[:3]:
        assert g.class_probs is not None
        assert sum(g.class_probs.values()) == pytest.approx(1.0)


def test_unfitted_head_builds_then_answers_with_a_helpful_error(
    tmp_path: Path, encoder: HashEncoder
) -> None:
    ens = parse_config({"tiers": [tier_cfg(tmp_path).model_dump()],
                        "tasks": [{"name": "cs_intent"}, {"name": "legal_risk"}]})
    tier = build_tier(ens.tiers[0], ens)  # lazy: no head needed to build
    assert isinstance(tier, ClassifierTier)
    gen = tier.generate(Request(task="cs_intent", prompt="hello"))
    expected = ("tier T1 has no trained head for task cs_intent: "
                "run `routenlp tier fit T1 --config C --data train.jsonl`")
    assert gen.error == expected and gen.text == ""
    with pytest.raises(TierError, match="no trained head"):
        tier.require_head("cs_intent")
    assert "does not serve" in (tier.generate(Request(task="fin_ner", prompt="x")).error or "")
    assert encoder.calls == 0


def test_binary_head_matches_sigmoid(tmp_path: Path, encoder: HashEncoder) -> None:
    labels = {"fair": WORDS["transfer"], "unfair": WORDS["pin"]}
    cfg = tier_cfg(tmp_path)
    res = fit_classifier_head(cfg, write_rows(tmp_path / "bin.jsonl", labels, task="legal_risk"))
    assert res["labels"] == ["fair", "unfair"]
    head = ClassifierHead.load(tmp_path / "heads" / "legal_risk")
    assert head.coef.shape == (2, 64)
    gen = ClassifierTier(cfg).generate(Request(task="legal_risk", prompt="forgot pin code"))
    assert gen.text == "unfair" and gen.class_probs is not None
    assert sum(gen.class_probs.values()) == pytest.approx(1.0)


def test_reload_picks_up_a_refit(tmp_path: Path, encoder: HashEncoder) -> None:
    cfg = tier_cfg(tmp_path)
    fit_classifier_head(cfg, write_rows(tmp_path / "a.jsonl"))
    tier = ClassifierTier(cfg)
    assert len(tier.require_head("cs_intent").labels) == 3
    two = {k: WORDS[k] for k in ("pin", "transfer")}
    fit_classifier_head(cfg, write_rows(tmp_path / "b.jsonl", two))
    assert len(tier.require_head("cs_intent").labels) == 3  # cached
    tier.reload()
    assert tier.require_head("cs_intent").labels == ["pin", "transfer"]


def test_fit_input_errors(tmp_path: Path, encoder: HashEncoder) -> None:
    cfg = tier_cfg(tmp_path)
    with pytest.raises(DataError, match="not found"):
        fit_classifier_head(cfg, tmp_path / "missing.jsonl")
    other = write_rows(tmp_path / "other.jsonl", task="fin_ner")
    with pytest.raises(ConfigError, match="does not serve task 'fin_ner'"):
        fit_classifier_head(cfg, other)
    one = write_rows(tmp_path / "one.jsonl", {"pin": WORDS["pin"]})
    with pytest.raises(DataError, match="at least 2 distinct labels"):
        fit_classifier_head(cfg, one)
    lists = tmp_path / "lists.jsonl"
    lists.write_text(json.dumps({"id": "1", "task": "cs_intent", "input": "x",
                                 "reference": [{"text": "a"}]}) + "\n")
    with pytest.raises(DataError, match="classification task"):
        fit_classifier_head(cfg, lists)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text((tmp_path / "one.jsonl").read_text() + other.read_text())
    with pytest.raises(DataError, match="several tasks"):
        fit_classifier_head(cfg, mixed)
    local = TierConfig(name="T2", kind="local", price_in=1, price_out=1)
    with pytest.raises(ConfigError, match="only classifier tiers"):
        fit_classifier_head(local, write_rows(tmp_path / "ok.jsonl"))


def test_corrupt_head_is_a_generation_error(tmp_path: Path, encoder: HashEncoder) -> None:
    cfg = tier_cfg(tmp_path)
    fit_classifier_head(cfg, write_rows(tmp_path / "train.jsonl"))
    (tmp_path / "heads" / "cs_intent" / "head.npz").write_bytes(b"not an npz")
    gen = ClassifierTier(cfg).generate(Request(task="cs_intent", prompt="pin"))
    assert gen.error is not None and "unreadable" in gen.error
