"""The label cache: generations of deterministic tiers keyed by tier content + request,
quality always re-scored, errors and remote tiers never cached, safe for two writers."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from routenlp import label_cache
from routenlp.config import EnsembleConfig, parse_config
from routenlp.label_cache import LabelCache, tier_fingerprint
from routenlp.labeling import label_rows
from routenlp.matrix import read_matrix
from routenlp.tiers.base import BaseTier, Generation, Request, Usage


@pytest.fixture(autouse=True)
def cache_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache switched on, in a temporary cache dir (conftest switches it off)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("ROUTENLP_CACHE_DIR", str(root))
    monkeypatch.delenv("ROUTENLP_LABEL_CACHE", raising=False)
    return root


def ensemble(
    *, adapter: str | None = None, prompt: str | None = None, price: float = 0.1,
    extra_tiers: Sequence[dict[str, Any]] = (), t1_options: dict[str, Any] | None = None,
) -> EnsembleConfig:
    task: dict[str, Any] = {"name": "intent", "kind": "intent_classification", "metric": "accuracy",
                            "labels": ["billing", "refund"], "fewshot": 0}
    if prompt is not None:
        task["prompt"] = prompt
    return parse_config({
        "tier_order": "given",
        "tiers": [{"name": "T1", "kind": "local", "model": "fake-model", "price_in": price,
                   "price_out": price, "adapter": adapter, "options": t1_options or {}},
                  *extra_tiers],
        "tasks": [task],
    })


class Scripted(BaseTier):
    """A local tier stand-in: answers `text` (or an error for queries in `fail`), counts calls."""

    def __init__(self, config: Any, text: str = "billing", fail: Sequence[str] = ()) -> None:
        super().__init__(config)
        self.text, self.fail, self.seen = text, set(fail), 0

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        self.seen += len(requests)
        out = []
        for r in requests:
            if r.query in self.fail:
                out.append(Generation(text="", error="boom"))
                continue
            gen = Generation(text=self.text, usage=Usage(len(r.query), 2), latency_s=0.25,
                             uncertainty=0.125)
            out.append(self.price(gen))
        return out


def rows(n: int = 4, reference: str = "billing") -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "task": "intent", "input": f"query {i}", "reference": reference}
            for i in range(n)]


def run(cfg: EnsembleConfig, tier: BaseTier, out: Path, data: list[dict[str, Any]] | None = None,
        **kw: Any) -> Any:
    return label_rows(cfg, data or rows(), out, tiers={"T1": tier}, **kw)


def test_second_run_is_served_from_the_cache(tmp_path: Path, cache_on: Path) -> None:
    cfg = ensemble()
    first_tier = Scripted(cfg.tier("T1"))
    first = run(cfg, first_tier, tmp_path / "a.jsonl")
    assert (first.cached, first.generated, first_tier.seen) == (0, 4, 4)
    assert (cache_on / label_cache.FILE_NAME).is_file()

    again_tier = Scripted(cfg.tier("T1"))
    progress: list[int] = []
    again = run(cfg, again_tier, tmp_path / "b.jsonl", on_progress=progress.append)
    assert (again.cached, again.generated, again_tier.seen) == (4, 0, 0)
    assert sum(progress) == 4  # hits still advance the progress bar
    a = [r.outcomes["T1"] for r in read_matrix(tmp_path / "a.jsonl")]
    b = [r.outcomes["T1"] for r in read_matrix(tmp_path / "b.jsonl")]
    assert a == b  # text, tokens, latency, risk, cost, quality: all as first recorded


def test_quality_is_rescored_against_the_current_reference(tmp_path: Path) -> None:
    cfg = ensemble()
    run(cfg, Scripted(cfg.tier("T1")), tmp_path / "a.jsonl", rows(reference="billing"))
    stats = run(cfg, Scripted(cfg.tier("T1")), tmp_path / "b.jsonl", rows(reference="refund"))
    assert stats.cached == 4
    assert {r.outcomes["T1"].quality for r in read_matrix(tmp_path / "a.jsonl")} == {1.0}
    assert {r.outcomes["T1"].quality for r in read_matrix(tmp_path / "b.jsonl")} == {0.0}


def test_cost_is_repriced_at_the_current_prices(tmp_path: Path) -> None:
    run(ensemble(price=0.1), Scripted(ensemble().tier("T1")), tmp_path / "a.jsonl")
    cfg = ensemble(price=1.0)
    stats = run(cfg, Scripted(cfg.tier("T1")), tmp_path / "b.jsonl")
    assert stats.cached == 4
    for r in read_matrix(tmp_path / "b.jsonl"):
        o = r.outcomes["T1"]
        assert o.cost == pytest.approx(cfg.tier("T1").cost(o.tokens_in or 0, o.tokens_out or 0))


def test_a_changed_prompt_is_a_miss(tmp_path: Path) -> None:
    cfg = ensemble()
    run(cfg, Scripted(cfg.tier("T1")), tmp_path / "a.jsonl")
    other = ensemble(prompt="Classify this request: {input}")
    assert run(other, Scripted(other.tier("T1")), tmp_path / "b.jsonl").cached == 0
    assert run(cfg, Scripted(cfg.tier("T1")), tmp_path / "c.jsonl",
               [{**r, "input": r["input"] + "!"} for r in rows()]).cached == 0


def _adapter(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8}')
    (path / "adapter_model.safetensors").write_bytes(weights)
    return path


def test_adapter_content_not_path_is_the_key(tmp_path: Path) -> None:
    a = _adapter(tmp_path / "round1" / "adapter", b"weights-1")
    cfg = ensemble(adapter=str(a))
    run(cfg, Scripted(cfg.tier("T1")), tmp_path / "a.jsonl")
    copy = _adapter(tmp_path / "round1-rerun" / "adapter", b"weights-1")
    same = ensemble(adapter=str(copy))
    assert run(same, Scripted(same.tier("T1")), tmp_path / "b.jsonl").cached == 4
    changed = ensemble(adapter=str(_adapter(tmp_path / "round2" / "adapter", b"weights-2")))
    assert run(changed, Scripted(changed.tier("T1")), tmp_path / "c.jsonl").cached == 0
    assert tier_fingerprint(ensemble(), "T1") != tier_fingerprint(cfg, "T1")


def test_threads_do_not_change_the_key_but_other_options_do() -> None:
    base = tier_fingerprint(ensemble(), "T1")
    assert tier_fingerprint(ensemble(t1_options={"threads": 2}), "T1") == base
    assert tier_fingerprint(ensemble(t1_options={"max_input_tokens": 512}), "T1") != base


def test_how_a_local_tier_computes_here_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 answers differ between CPUs with and without an int8 dot-product instruction;
    `auto` resolving to float32 is a different tier too; explicit float32 is the same
    tier on every CPU."""
    from routenlp.models import engine

    def keys(dot: bool | None) -> tuple[str | None, str | None]:
        monkeypatch.setattr(engine, "int8_dot_product", lambda: dot)
        return (tier_fingerprint(ensemble(), "T1"),
                tier_fingerprint(ensemble(t1_options={"compute_type": "float32"}), "T1"))

    vnni, avx2, unknown = keys(True), keys(False), keys(None)
    assert vnni[0] != avx2[0] and vnni[0] != unknown[0]
    assert avx2[0] == avx2[1]  # auto is float32 there: the same answers as explicit float32
    assert vnni[1] == avx2[1] == unknown[1]
    assert tier_fingerprint(ensemble(t1_options={"engine": "transformers"}), "T1") is not None


def test_classifier_head_content_is_the_key(tmp_path: Path) -> None:
    from routenlp.tiers.classifier import ClassifierHead

    def cfg_with(head_root: Path) -> EnsembleConfig:
        return ensemble(extra_tiers=[{"name": "T0", "kind": "classifier", "head": str(head_root),
                                      "price_in": 0.2, "price_out": 0.2}])

    def save(root: Path, coef: float, meta: dict[str, Any]) -> None:
        ClassifierHead(["billing", "refund"], np.full((2, 3), coef), np.zeros(2), "enc", meta
                       ).save(root / "intent")

    save(tmp_path / "h1", 0.5, {"trained_at": "2024-01-01"})
    save(tmp_path / "h2", 0.5, {"trained_at": "2025-06-30", "seconds": 9})  # a refit, same weights
    save(tmp_path / "h3", 0.7, {"trained_at": "2024-01-01"})
    fp = [tier_fingerprint(cfg_with(tmp_path / h), "T0") for h in ("h1", "h2", "h3")]
    assert fp[0] is not None and fp[0] == fp[1] != fp[2]


def test_errors_are_not_cached(tmp_path: Path) -> None:
    cfg = ensemble()
    first = run(cfg, Scripted(cfg.tier("T1"), fail=["query 1", "query 2"]), tmp_path / "a.jsonl")
    assert first.errors == 2
    retry = Scripted(cfg.tier("T1"))
    stats = run(cfg, retry, tmp_path / "b.jsonl")
    assert (stats.cached, stats.generated, retry.seen, stats.errors) == (2, 2, 2, 0)


@pytest.mark.parametrize("how", ["env", "argument"])
def test_switched_off(tmp_path: Path, cache_on: Path, monkeypatch: pytest.MonkeyPatch,
                      how: str) -> None:
    cfg = ensemble()
    kw: dict[str, Any] = {}
    if how == "env":
        monkeypatch.setenv("ROUTENLP_LABEL_CACHE", "0")
    else:
        kw["use_cache"] = False
    for name in ("a", "b"):
        tier = Scripted(cfg.tier("T1"))
        stats = run(cfg, tier, tmp_path / f"{name}.jsonl", **kw)
        assert (stats.cached, tier.seen) == (0, 4)
    assert not (cache_on / label_cache.FILE_NAME).exists()


def test_remote_and_replay_tiers_are_never_cached() -> None:
    cfg = ensemble(extra_tiers=[
        {"name": "R", "kind": "replay", "price_in": 0.5, "price_out": 0.5},
        {"name": "API", "kind": "openai_compat", "model": "m", "base_url": "http://127.0.0.1:9/v1",
         "price_in": 1.0, "price_out": 1.0},
    ])
    assert tier_fingerprint(cfg, "R") is None and tier_fingerprint(cfg, "API") is None


def test_reference_tier_key_covers_its_options_and_fallback(tmp_path: Path) -> None:
    def cfg(error_rate: float = 0.1, fb_options: dict[str, Any] | None = None,
            fb_kind: str = "local") -> EnsembleConfig:
        fb: dict[str, Any] = {"name": "T1", "kind": fb_kind, "model": "fake-model",
                              "price_in": 0.1, "price_out": 0.1, "options": fb_options or {}}
        if fb_kind == "openai_compat":
            fb["base_url"] = "http://127.0.0.1:9/v1"
        return parse_config({
            "tier_order": "given",
            "tiers": [fb, {"name": "T4", "kind": "reference", "price_in": 8, "price_out": 8,
                           "options": {"error_rate": error_rate, "fallback_tier": "T1"}}],
            "tasks": [{"name": "intent", "kind": "intent_classification", "fewshot": 0,
                       "labels": ["billing", "refund"]}],
        })

    base = tier_fingerprint(cfg(), "T4")
    assert base is not None
    assert tier_fingerprint(cfg(error_rate=0.2), "T4") != base
    assert tier_fingerprint(cfg(fb_options={"max_input_tokens": 512}), "T4") != base
    assert tier_fingerprint(cfg(fb_kind="openai_compat"), "T4") is None  # remote fallback

    c = cfg(error_rate=0.0)
    first = label_rows(c, rows(), tmp_path / "a.jsonl", tier_names=["T4"])
    again = label_rows(c, rows(), tmp_path / "b.jsonl", tier_names=["T4"])
    assert (first.generated, again.cached) == (4, 4)
    assert [r.outcomes for r in read_matrix(tmp_path / "a.jsonl")] == [
        r.outcomes for r in read_matrix(tmp_path / "b.jsonl")]
    # the simulated frontier answers with the reference: a new reference is a new request
    assert label_rows(c, rows(reference="refund"), tmp_path / "c.jsonl", tier_names=["T4"]).cached == 0


def test_two_connections_write_and_read_at_once(tmp_path: Path) -> None:
    cfg = ensemble().tier("T1")
    path = tmp_path / "shared.sqlite"
    a, b = LabelCache(path), LabelCache(path)
    errors: list[BaseException] = []

    def writer(cache: LabelCache, tag: str) -> None:
        try:
            for i in range(40):
                gen = Generation(text=f"{tag}{i}", usage=Usage(1, 1))
                cache.put_many({f"{tag}-{i}": (gen, 0.5)}, "local")
                assert cache.get_many([f"{tag}-{i}"], cfg)[f"{tag}-{i}"].text == f"{tag}{i}"
        except BaseException as err:  # noqa: BLE001 - re-raised by the test below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(c, t)) for c, t in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    got = b.get_many([f"a-{i}" for i in range(40)], cfg)  # one connection sees the other's rows
    assert len(got) == 40 and got["a-3"].uncertainty == 0.5 and len(a) == 80
    a.close()
    b.close()


def test_failed_generations_are_refused_by_the_store(tmp_path: Path) -> None:
    with LabelCache(tmp_path / "c.sqlite") as cache:
        n = cache.put_many({"k": (Generation(text="", error="timeout"), None)}, "local")
        assert n == 0 and cache.get_many(["k"], ensemble().tier("T1")) == {}


def test_an_unopenable_cache_is_one_clear_error(tmp_path: Path) -> None:
    from routenlp.errors import DataError

    bad = tmp_path / "not-a-db.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DataError, match="label cache .* cannot be opened"):
        LabelCache(bad)


def test_label_command_reports_hits_and_no_cache_skips_them(tmp_path: Path) -> None:
    import json

    import yaml
    from typer.testing import CliRunner

    from routenlp.cli import app

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(5)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "tiers": [{"name": "T4", "kind": "reference", "price_in": 8.0, "price_out": 8.0,
                   "options": {"error_rate": 0.0}}],
        "tasks": [{"name": "intent", "kind": "intent_classification", "fewshot": 0,
                   "labels": ["billing", "refund"]}],
    }))

    def label(out: str, *extra: str) -> dict[str, Any]:
        res = CliRunner().invoke(app, ["-q", "label", "--config", str(cfg), "--data", str(data),
                                       "--out", str(tmp_path / out), "--json", *extra])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    assert (label("a.jsonl")["cached"], label("b.jsonl")["cached"]) == (0, 5)
    off = label("c.jsonl", "--no-cache")
    assert (off["cached"], off["generated"]) == (0, 5)
