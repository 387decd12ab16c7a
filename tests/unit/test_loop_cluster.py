"""Failure clustering: planted clusters are recovered, k is chosen by silhouette, the
planted worst (size x gap) ranks first under the paper's priority and the most expensive
under `spend`, and the report is complete and saved as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from routenlp.loop.cluster import cluster_failures, report_table
from routenlp.loop.mining import Failure

DIM = 24
rng = np.random.default_rng(0)
CENTRES = {name: rng.normal(size=DIM) * 6 for name in ("worst", "wide", "mid", "other")}


def fake_embed(texts: Sequence[str]) -> np.ndarray:
    """Deterministic embeddings: each planted text sits near its cluster's centre."""
    out = []
    for t in texts:
        name, i = t.split("-")[0], int(t.split("-")[1])
        noise = np.random.default_rng(i * 7919 + len(name)).normal(size=DIM)
        out.append(CENTRES[name] + 0.3 * noise)
    return np.asarray(out)


def planted() -> list[Failure]:
    spec = {"worst": (10, 0.9), "wide": (14, 0.15), "mid": (6, 0.5)}  # scores 9.0, 2.1, 3.0
    fs = []
    for name, (n, gap) in spec.items():
        for i in range(n):
            fs.append(Failure(id=f"{name}{i}", task="t1", query=f"{name}-{i}", gap=gap, tiers=["T1", "T2"][: 1 + i % 2],
                              top_tier="T3"))
    for i in range(5):
        fs.append(Failure(id=f"o{i}", task="t2", query=f"other-{i}", gap=0.1, tiers=["T2"], top_tier="T3"))
    return fs


def test_planted_worst_cluster_ranks_first(tmp_path: Path) -> None:
    rep = cluster_failures(planted(), fake_embed, k_range=(2, 6), seed=3, priority="gap")
    assert rep.k_by_task["t1"] == 3
    first, second, third = rep.clusters[:3]
    assert first.task == "t1" and {i.rstrip("0123456789") for i in first.ids} == {"worst"} and first.size == 10
    assert {i.rstrip("0123456789") for i in second.ids} == {"mid"}
    assert {i.rstrip("0123456789") for i in third.ids} == {"wide"}
    assert first.rank == 1 and abs(first.score - 9.0) < 1e-9
    assert len(first.examples) == 3 and all(e.startswith("worst-") for e in first.examples)
    assert first.failing_tiers == {"T1": 10, "T2": 5}
    # clusters are per task: t2's failures never mix with t1's
    assert all(c.task == "t2" for c in rep.clusters if any(i.startswith("o") for i in c.ids))
    rep.save(tmp_path / "c.json")
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["clusters"][0]["size"] == 10 and doc["clusters"][0]["examples"] == first.examples
    assert doc["n_failures"] == 35
    assert report_table(rep).row_count == len(rep.clusters)


def test_clustering_is_seeded_and_assigns_new_queries() -> None:
    a = cluster_failures(planted(), fake_embed, k_range=(2, 6), seed=5)
    b = cluster_failures(planted(), fake_embed, k_range=(2, 6), seed=5)
    assert [c.ids for c in a.clusters] == [c.ids for c in b.clusters]
    worst = a.clusters[0]
    lab = a.spaces["t1"].assign(fake_embed([f"worst-{i}" for i in range(100, 104)]))
    assert set(lab.tolist()) == {worst.index}


def test_task_vector_and_tiny_tasks() -> None:
    fs = [Failure(id=f"x{i}", task="tiny", query=f"mid-{i}", gap=1.0, tiers=["T2"], top_tier="T3") for i in range(2)]
    rep = cluster_failures(fs, fake_embed, task_vectors={"tiny": np.ones(4)}, k_range=(2, 8))
    assert len(rep.clusters) == 1 and rep.clusters[0].size == 2  # too few rows to split


def test_spend_priority_ranks_where_the_money_goes() -> None:
    """Under `spend`, a cluster of cheap-to-serve queries with a big gap loses to one the top
    tier charges ten times as much for; an unrecorded cost counts at the mean of the known."""
    fs = planted()
    for f in fs:
        f.top_cost = 0.01 if f.id.startswith("worst") else 0.1  # 'worst': short, cheap queries
    fs[-1].top_cost = None  # one of t2's: not recorded
    gap = cluster_failures(fs, fake_embed, k_range=(2, 6), seed=3, priority="gap")
    spend = cluster_failures(fs, fake_embed, k_range=(2, 6), seed=3)  # the default
    assert {i.rstrip("0123456789") for i in gap.clusters[0].ids} == {"worst"}
    kinds = [{i.rstrip("0123456789") for i in c.ids} for c in spend.clusters]
    assert kinds[:3] == [{"mid"}, {"wide"}, {"worst"}]  # spends 0.30, 0.21, 0.09
    assert abs(spend.clusters[0].score - 6 * 0.5 * 0.1) < 1e-9
    known = [f.top_cost for f in fs if f.top_cost is not None]
    t2 = sum(c.spend for c in spend.clusters if c.task == "t2")
    assert abs(t2 - 0.1 * (4 * 0.1 + float(np.mean(known)))) < 1e-9
    assert spend.to_json()["priority"] == "spend" and spend.to_json()["clusters"][0]["spend"] > 0
    assert [c.ids for c in gap.clusters] != [c.ids for c in spend.clusters]


def test_unknown_priority_is_a_named_error() -> None:
    import pytest

    from routenlp.errors import DataError

    with pytest.raises(DataError, match="--priority"):
        cluster_failures(planted(), fake_embed, priority="size")
