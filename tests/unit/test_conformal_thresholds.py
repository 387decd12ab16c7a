"""Calibration from quality-matrix rows and the thresholds file contract."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from routenlp.config import EnsembleConfig, parse_config
from routenlp.conformal.crc import crc_threshold
from routenlp.conformal.estimator import QualityEstimator, train_estimator
from routenlp.conformal.thresholds import Thresholds, calibrate
from routenlp.errors import DataError
from routenlp.matrix import MatrixRow, Outcome

ALPHA = 0.1


def make_config(**tier_extra: object) -> EnsembleConfig:
    return parse_config(
        {
            "tiers": [
                {"name": "T1", "kind": "replay", "price_in": 0.01, "price_out": 0.01, **tier_extra},
                {"name": "T2", "kind": "replay", "price_in": 0.1, "price_out": 0.1, "tasks": ["a"]},
                {"name": "T3", "kind": "replay", "price_in": 1.0, "price_out": 1.0},
            ],
            "tasks": [{"name": "a", "tau": 0.5}, {"name": "b", "tau": 1.0}],
        }
    )


def make_rows(n: int, seed: int = 0, *, signal: bool = True, prefix: str = "r") -> list[MatrixRow]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        task = "a" if i % 2 == 0 else "b"
        outs = {}
        for tier in ("T1", "T2", "T3"):
            u = float(rng.random())
            good = rng.random() > 0.05 + 0.5 * u
            outs[tier] = Outcome(
                quality=1.0 if good else 0.0,
                uncertainty=u if signal else None,
                response="fine answer" if good else "bad answer",
                cost=0.001,
            )
        rows.append(MatrixRow(id=f"{prefix}{i}", task=task, prompt=f"question {i}", outcomes=outs))
    return rows


def pair_arrays(rows: list[MatrixRow], task: str, tier: str, tau: float) -> tuple[list[float], list[bool]]:
    sel = [r for r in rows if r.task == task]
    return [r.outcomes[tier].uncertainty for r in sel], [r.outcomes[tier].quality < tau for r in sel]  # type: ignore[misc]


def test_calibrate_matches_crc_per_pair_and_skips_top_tier() -> None:
    cfg = make_config()
    rows = make_rows(400)
    th = calibrate(cfg, rows, alpha=ALPHA)
    assert set(th.thresholds) == {"a", "b"}
    assert set(th.thresholds["a"]) == {"T1", "T2"}  # T3 is top: always accepts
    assert set(th.thresholds["b"]) == {"T1"}  # T2 does not serve b
    u, bad = pair_arrays(rows, "a", "T1", 0.5)
    ref = crc_threshold(u, bad, ALPHA)
    e = th.entry("a", "T1")
    assert e is not None and e.delta == pytest.approx(ref.delta) and e.n == 200
    assert e.bound is not None and e.bound <= ALPHA
    assert e.signal == "recorded"
    assert th.delta("a", "T3") is None and th.delta("zzz", "T1") is None


def test_save_load_roundtrip_and_format(tmp_path: Path) -> None:
    th = calibrate(make_config(), make_rows(300), alpha=ALPHA, method="ltt", delta_conf=0.2)
    out = th.save(tmp_path / "T.json")
    raw = json.loads(out.read_text())
    assert raw["alpha"] == ALPHA and raw["method"] == "ltt" and raw["delta_conf"] == 0.2
    for tiers in raw["thresholds"].values():
        for e in tiers.values():
            assert {"delta", "n", "risk", "bound"} <= set(e)
    back = Thresholds.load(out)
    assert back.delta("a", "T1") == th.delta("a", "T1")
    (tmp_path / "bad.json").write_text('{"alpha": 2}')
    with pytest.raises(DataError, match="alpha"):
        Thresholds.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="not found"):
        Thresholds.load(tmp_path / "missing.json")


def test_failed_outcomes_are_bad_and_never_accepted() -> None:
    rows = make_rows(200)
    for r in rows[:40]:
        r.outcomes["T1"] = Outcome(error="timeout")
    th = calibrate(make_config(), rows, alpha=ALPHA)
    e = th.entry("a", "T1")
    assert e is not None and e.n == 100
    assert e.reason and "failed outcome" in e.reason


def test_no_signal_says_so_and_never_accepts() -> None:
    th = calibrate(make_config(), make_rows(200, signal=False), alpha=ALPHA)
    for _task, _tier, e in th.pairs():
        assert e.delta is None
        assert e.signal == "none"
        assert e.reason and "no uncertainty signal" in e.reason and "--estimator" in e.reason


def test_partial_signal_rows_count_as_never_accepted() -> None:
    rows = make_rows(200)
    for r in rows[:20]:
        r.outcomes["T1"].uncertainty = None
    th = calibrate(make_config(), rows, alpha=ALPHA)
    e = th.entry("a", "T1")
    assert e is not None and e.reason and "without an uncertainty signal" in e.reason


def test_too_few_samples_reason() -> None:
    th = calibrate(make_config(), make_rows(12), alpha=0.05)
    e = th.entry("a", "T1")
    assert e is not None and e.delta is None and e.reason and "need n >= 19" in e.reason


def test_unknown_tasks_are_reported() -> None:
    rows = make_rows(60) + [MatrixRow(id="x", task="zzz", prompt="p", outcomes={})]
    th = calibrate(make_config(), rows, alpha=ALPHA)
    assert (th.model_extra or {}).get("skipped_tasks") == ["zzz"]
    with pytest.raises(DataError, match="none of the matrix tasks"):
        calibrate(make_config(), rows[-1:], alpha=ALPHA)


class FakeEncoder:
    """Deterministic stand-in for MiniLM: dim 0 says whether the text contains 'bad'."""

    name = "fake"

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), 8), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int(hashlib.md5(t.encode()).hexdigest()[:8], 16)
            out[i, 1:] = np.random.default_rng(seed).normal(0, 0.1, 7)
            out[i, 0] = 1.0 if "bad" in t else -1.0
        return out


def test_estimator_train_save_load_and_calibrate(tmp_path: Path) -> None:
    cfg = make_config()
    train = make_rows(300, seed=1, signal=False, prefix="train")
    cal = make_rows(300, seed=2, signal=False, prefix="cal")
    est = train_estimator(cfg, train, tiers=["T1", "T2"], encoder=FakeEncoder())
    u = est.uncertainty("T1", ["q", "q"], ["a bad answer", "a fine answer"])
    assert u[0] > 0.5 > u[1]
    est.save(tmp_path / "est")
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "est").iterdir())
    back = QualityEstimator.load(tmp_path / "est", encoder=FakeEncoder())
    assert back.uncertainty("T1", ["q"], ["bad"]) == pytest.approx(est.uncertainty("T1", ["q"], ["bad"]))
    assert len(back.train_ids) == 300

    th = calibrate(cfg, cal, alpha=ALPHA, estimator=back)
    e = th.entry("a", "T1")
    assert e is not None and e.signal == "estimator" and e.delta is not None
    assert e.accept_rate is not None and e.accept_rate > 0.3
    with pytest.raises(DataError, match="disjoint"):
        calibrate(cfg, train, alpha=ALPHA, estimator=back)
    with pytest.raises(DataError, match="no quality estimator"):
        QualityEstimator.load(tmp_path / "nothing")


def test_estimator_embeds_the_text_replay_serves() -> None:
    from routenlp.conformal.estimator import answer_text
    from routenlp.tiers.replay import response_text

    for resp in (None, "C", ["a", "b"], [{"text": "Apple", "type": "ORG"}], {"x": "é"}):
        assert answer_text(resp) == response_text(resp)


def test_query_only_estimator_ignores_the_answer(tmp_path: Path) -> None:
    cfg = make_config()
    train = make_rows(300, seed=1, signal=False, prefix="train")
    full = train_estimator(cfg, train, tiers=["T1"], encoder=FakeEncoder())
    assert not full.answer_free("T1")
    qo = train_estimator(cfg, train, tiers=["T1"], encoder=FakeEncoder(), query_only=True)
    assert qo.answer_free("T1") and not qo.answer_free("T9")
    a, b = qo.uncertainty("T1", ["q1", "q1"], ["a bad answer", "a fine answer"])
    assert a == pytest.approx(b)  # u is known before the tier is called
    qo.save(tmp_path / "qo")
    assert QualityEstimator.load(tmp_path / "qo", encoder=FakeEncoder()).answer_free("T1")
