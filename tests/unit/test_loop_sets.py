"""Failure mining (matrix and store) and distillation sets on the labelled built-in matrix:
gaps and pseudo-references, teachers, random volume, and held-out rows never entering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from routenlp.config import load_config
from routenlp.matrix import matrix_tiers
from routenlp.loop.cluster import cluster_failures
from routenlp.loop.mining import mine_matrix, mine_store
from routenlp.loop.sets import HeldOut, export_chat_jsonl, random_set, targeted_set
from routenlp.matrix import read_matrix

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "builtin_matrix"


@pytest.fixture(scope="module")
def data():  # noqa: ANN201
    rows = [read_matrix(DATA / f"{s}.jsonl") for s in ("train", "cal", "test")]
    # the committed matrix was labelled with T1-T3, before the simulated frontier T4 joined
    cfg = load_config(ROOT / "examples" / "local-cpu.yaml").restricted_to(matrix_tiers(rows[0]))
    # and scored against the bars of that time (rougeL 0.3 for fin_summ and cs_reply): at
    # the example's stricter bars today the per-tier rule never tries T2 on this matrix
    bars = {"fin_summ": 0.3, "cs_reply": 0.3}
    cfg = cfg.model_copy(update={"tasks": [t.model_copy(update={"tau": bars.get(t.name, t.tau)}) for t in cfg.tasks]})
    return cfg, *rows


def hash_embed(texts):  # noqa: ANN001, ANN201 - a cheap deterministic stand-in for the encoder
    out = np.zeros((len(texts), 32))
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, sum(map(ord, w)) % 32] += 1.0
    return out


def test_mining_walks_the_ladder_and_measures_the_gap(data) -> None:  # noqa: ANN001
    cfg, train, _, _ = data
    fs = mine_matrix(cfg, train, tiers=["T2"])
    by_id = {r.id: r for r in train}
    assert fs
    for f in fs:
        row = by_id[f.id]
        tau = cfg.task(f.task).tau
        assert f.tiers == ["T2"] and row.quality("T2") < tau
        # T1 meets tau -> the query never reaches T2: not a T2 failure
        assert not (row.quality("T1") is not None and row.quality("T1") >= tau)
        assert f.gap == pytest.approx(max(0.0, row.quality("T3") - row.quality("T2")))
        assert f.top_output == str(row.outcomes["T3"].response)
    assert not [f for f in fs if f.task in ("cs_intent", "legal_clause", "legal_risk")]


def test_without_reference_the_top_answer_is_the_pseudo_reference(data) -> None:  # noqa: ANN001
    cfg, train, _, _ = data
    rows = [r.model_copy(update={"reference": None}) for r in train if r.task == "cs_reply"]
    (same,) = [r.model_copy(deep=True) for r in rows[:1]]
    same.outcomes["T2"].response = same.outcomes["T3"].response  # identical to the teacher
    fs = {f.id: f for f in mine_matrix(cfg, [same, *rows[1:]])}
    assert same.id not in fs  # scored 1.0 against the top tier's answer
    tau = cfg.task("cs_reply").tau
    assert all(0.0 <= f.gap <= 1.0 and f.qualities["T2"] < tau for f in fs.values())


def test_sets_never_take_held_out_rows(data, tmp_path: Path) -> None:  # noqa: ANN001
    cfg, train, cal, test = data
    # a leaked copy of a test row in the train pool (same text, new id) must be refused too
    leak = test[0].model_copy(update={"id": "leak-1"})
    pool = [*train, leak, *cal]
    fs = mine_matrix(cfg, pool, tiers=["T2"])
    rep = cluster_failures(fs, hash_embed, k_range=(2, 4))
    held = HeldOut([*cal, *test])
    tgt = targeted_set(cfg, rep, fs, pool, held, tiers=["T2"], top_clusters=5, min_cluster=8, embed=hash_embed)
    rnd = random_set(cfg, pool, held, tgt.volume(), seed=1)
    bad_ids = {r.id for r in cal + test} | {"leak-1"}
    for s in (tgt, rnd):
        assert s.examples and not {e.id for e in s.examples} & bad_ids
        assert all(e.tier == "T2" and e.target for e in s.examples)
    assert rnd.volume() == tgt.volume()
    top5 = {c.key for c in rep.top(5)}
    assert {e.source.split(":", 1)[1] for e in tgt.examples} <= top5
    assert any(e.source.startswith("neighbour:") for e in tgt.examples)  # small clusters topped up
    path = export_chat_jsonl(cfg, tgt.examples[:3], tmp_path / "T4.chat.jsonl")
    msgs = [json.loads(line)["messages"] for line in path.read_text().splitlines()]
    assert len(msgs) == 3 and msgs[0][-1] == {"role": "assistant", "content": tgt.examples[0].target}


def test_teachers_pick_different_targets(data) -> None:  # noqa: ANN001
    cfg, train, cal, test = data
    fs = mine_matrix(cfg, train, tiers=["T2"])
    rep = cluster_failures(fs, hash_embed, k_range=(2, 3))
    held = HeldOut([*cal, *test])
    by_id = {r.id: r for r in train}
    ref = targeted_set(cfg, rep, fs, train, held, tiers=["T2"], teacher="reference", min_cluster=0)
    acc = targeted_set(cfg, rep, fs, train, held, tiers=["T2"], teacher="accepted", min_cluster=0)
    top = targeted_set(cfg, rep, fs, train, held, tiers=["T2"], teacher="top", min_cluster=0)
    assert all(e.target == str(by_id[e.id].outcomes["T3"].response) for e in top.examples)
    tau = {t: cfg.task(t).tau for t in cfg.task_names}
    for e in acc.examples:  # only answers known to be good
        assert any(o.quality is not None and o.quality >= tau[e.task] and str(o.response) == e.target
                   for o in by_id[e.id].outcomes.values())
    assert len(acc.examples) < len(top.examples)
    assert all(e.target for e in ref.examples) and len(ref.examples) == len(top.examples)


def test_from_store_mines_the_gateways_request_log(data, tmp_path: Path) -> None:  # noqa: ANN001
    from routenlp.cascade import Cascade
    from routenlp.conformal import calibrate
    from routenlp.store import Store
    from routenlp.tiers.replay import build_replay_tiers

    cfg, _, cal, test = data
    rows = [r for r in test if r.task in ("fin_summ", "cs_reply")]
    cascade = Cascade(cfg, build_replay_tiers(cfg, rows), thresholds=calibrate(cfg, cal, alpha=0.05), ladder="all")
    with Store(f"sqlite:///{tmp_path / 'gw.db'}") as store:
        logged = []
        for r in rows:
            res = cascade.run(r.task, r.prompt, id=r.id)
            rec = res.to_record()
            store.log_request({**rec, "query": r.prompt, "response": rec["output"]})  # as the gateway logs
            logged.append(res)
        accepted_low = next(res for res in logged if res.tier == "T2") if any(res.tier == "T2" for res in logged) else None
        if accepted_low is not None:
            store.add_feedback(accepted_low.id, 0.0, reference="the corrected answer", source="audit")
        fs = mine_store(cfg, store)
    escalated = {res.id for res in logged if res.escalated}
    assert escalated and escalated <= {f.id for f in fs}
    for f in fs:
        assert f.source == "store" and f.tiers and "T3" not in f.tiers
        if f.id in escalated:
            assert f.top_output  # the served top-tier answer is the teacher target
    if accepted_low is not None:
        (fb,) = [f for f in fs if f.id == accepted_low.id]
        assert fb.reference == "the corrected answer" and fb.tiers == ["T2"]


def test_classifier_tier_distils_by_refitting_the_head_with_added_labels(data, tmp_path: Path) -> None:  # noqa: ANN001
    from routenlp.loop.distill import distill_tier, with_artifact
    from routenlp.loop.sets import Example
    from routenlp.tiers.classifier import ClassifierHead

    cfg, train, _, _ = data
    cfg = cfg.model_copy(update={"tiers": [t.model_copy(update={"head": str(tmp_path / "none")})
                                           if t.name == "T1" else t for t in cfg.tiers]})
    rows = [r for r in train if r.task == "cs_intent"]
    added = [Example(f"new{i}", "cs_intent", "T1", f"please cancel my card order number {i} now", "cancel_order", "cluster:x")
             for i in range(6)]
    res = distill_tier(cfg, "T1", added, tmp_path / "round", base_rows=rows)
    assert res.status == "trained" and res.kind == "classifier"
    head = ClassifierHead.load(Path(res.artifact) / "cs_intent")
    assert "cancel_order" in head.labels and set(head.labels) >= {str(r.reference) for r in rows}
    assert head.meta["n"] == len(rows) + len(added)
    assert with_artifact(cfg, "T1", res).tier("T1").head == res.artifact


def test_pool_rows_answered_by_the_top_tier_only_fill_clusters(data) -> None:  # noqa: ANN001
    """Logged traffic outside the matrices (LoopOptions.pool) carries only the top tier's
    answer: targeted sets fill small clusters from it, random sets draw from it, and a
    pool row with a held-out query is refused."""
    cfg, train, cal, test = data
    top = cfg.tiers_for("cs_reply")[-1].name
    logged = [
        r.model_copy(update={"id": f"log-{i}-{k}", "prompt": r.prompt + f" (order {i}-{k})",
                             "outcomes": {top: r.outcomes[top]}})
        for i, r in enumerate(train) for k in range(2)
    ]
    leak = test[0].model_copy(update={"id": "log-leak", "outcomes": {top: test[0].outcomes[top]}})
    pool = [*train, *logged, leak]
    fs = mine_matrix(cfg, pool, tiers=["T2"])
    assert not [f for f in fs if f.id.startswith("log-")]  # no cheap answer: never a failure
    fs = mine_matrix(cfg, train, tiers=["T2"])
    rep = cluster_failures(fs, hash_embed, k_range=(2, 4))
    held = HeldOut([*cal, *test])
    tgt = targeted_set(cfg, rep, fs, pool, held, tiers=["T2"], top_clusters=5, min_cluster=30, embed=hash_embed)
    from_pool = [e for e in tgt.examples if e.id.startswith("log-")]
    assert from_pool and all(e.source.startswith("neighbour:") for e in from_pool)
    by_id = {r.id: r for r in logged}
    assert all(e.target == str(by_id[e.id].outcomes[top].response) for e in from_pool)
    rnd = random_set(cfg, pool, held, tgt.volume(), seed=1)
    assert any(e.id.startswith("log-") for e in rnd.examples)
    assert "log-leak" not in {e.id for e in [*tgt.examples, *rnd.examples]}
