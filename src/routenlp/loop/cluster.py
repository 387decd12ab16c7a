"""Failure clustering per task in the router's representation space.

Why the router's space: a cluster there is a region the router sends upwards, so the
cheap tier absorbing it moves traffic down. Text embedding (+ the router's learned task
embedding) -> PCA to min(128, n-1) dims -> k-means with k chosen by silhouette (seeded)
-> clusters ranked by priority:
  spend  (default) the sum over members of gap x the top tier's cost on that query: where
         the money goes. A cluster of long documents costs the top tier several times what
         a cluster of short queries does, and only traffic moved off the top tier lowers
         the bill. On a 100-per-task demo workload of another seed than the demo's, one
         targeted round changed cost at quality 0.97 by -0.091 under spend, -0.062 under
         gap, -0.049 for random rows (docs/benchmarks.md).
  gap    size x mean gap, the paper's priority: where the cheap tiers fall furthest short.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from routenlp.errors import DataError
from routenlp.loop.adapters import EmbedFn
from routenlp.loop.mining import Failure

MAX_DIMS = 128
PRIORITIES = ("gap", "spend")


def check_priority(priority: str) -> None:
    """Callers check before any work (a demo would otherwise fail after labelling)."""
    if priority not in PRIORITIES:
        raise DataError(f"--priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")


@dataclass
class Cluster:
    task: str
    index: int  # k-means label within the task
    ids: list[str]
    mean_gap: float
    failing_tiers: dict[str, int]
    examples: list[str]
    rank: int = 0
    spend: float = 0.0  # sum of gap x top-tier cost over the members
    priority: str = "spend"

    @property
    def key(self) -> str:
        return f"{self.task}#{self.index}"

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def size_gap(self) -> float:
        """The paper's priority: size x mean gap."""
        return self.size * self.mean_gap

    @property
    def score(self) -> float:
        """The ranking key under the report's priority."""
        return self.spend if self.priority == "spend" else self.size_gap

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "key": self.key, "task": self.task, "size": self.size,
            "mean_gap": round(self.mean_gap, 6), "spend": round(self.spend, 6),
            "priority": self.priority, "score": round(self.score, 6),
            "failing_tiers": self.failing_tiers, "examples": self.examples, "ids": self.ids,
        }


@dataclass
class TaskSpace:
    """The fitted projection and k-means of one task: assigns new queries to clusters."""

    task: str
    pca: PCA | None
    kmeans: KMeans | None
    task_vec: np.ndarray | None

    def features(self, emb: np.ndarray) -> np.ndarray:
        x = np.asarray(emb, dtype=np.float64)
        if self.task_vec is not None:
            x = np.hstack([x, np.tile(self.task_vec, (len(x), 1))])
        return self.pca.transform(x) if self.pca is not None else x

    def assign(self, emb: np.ndarray) -> np.ndarray:
        if self.kmeans is None:
            return np.zeros(len(emb), dtype=np.int64)
        return self.kmeans.predict(self.features(emb))

    def distances(self, emb: np.ndarray, label: int) -> np.ndarray:
        """Distance of each row to a cluster's centre (nearest-neighbour top-ups)."""
        f = self.features(emb)
        if self.kmeans is None:
            centre = self._centre
        else:
            centre = self.kmeans.cluster_centers_[label]
        return np.linalg.norm(f - centre, axis=1)

    _centre: np.ndarray = field(default_factory=lambda: np.zeros(1))


@dataclass
class ClusterReport:
    clusters: list[Cluster]  # ranked, best first
    spaces: dict[str, TaskSpace]
    k_by_task: dict[str, int]
    silhouette_by_task: dict[str, float | None]
    priority: str = "spend"

    def top(self, n: int) -> list[Cluster]:
        return self.clusters[:n]

    def to_json(self) -> dict[str, Any]:
        return {
            "n_failures": sum(c.size for c in self.clusters),
            "priority": self.priority,
            "k_by_task": self.k_by_task,
            "silhouette_by_task": self.silhouette_by_task,
            "clusters": [c.to_json() for c in self.clusters],
        }

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        return p


def _choose_k(x: np.ndarray, k_range: tuple[int, int], seed: int) -> tuple[KMeans, float]:
    n = len(x)
    lo, hi = max(2, k_range[0]), min(k_range[1], n - 1)
    best: tuple[float, KMeans] | None = None
    for k in range(lo, hi + 1):
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
        if len(set(km.labels_)) < 2:
            continue
        s = float(silhouette_score(x, km.labels_))
        if best is None or s > best[0] + 1e-12:
            best = (s, km)
    if best is None:
        km = KMeans(n_clusters=1, n_init=1, random_state=seed).fit(x)
        return km, float("nan")
    return best[1], best[0]


def cluster_failures(
    failures: Sequence[Failure],
    embed: EmbedFn,
    *,
    task_vectors: Mapping[str, np.ndarray] | None = None,
    k_range: tuple[int, int] = (2, 8),
    seed: int = 13,
    priority: str = "spend",
) -> ClusterReport:
    """Cluster each task's failures and rank all clusters by `priority` (see the module)."""
    if k_range[0] < 1 or k_range[1] < k_range[0]:
        raise DataError(f"k range must be 1 <= min <= max, got {k_range}")
    check_priority(priority)
    # a failure whose top-tier cost was not recorded counts at the mean of those that were
    known = [float(f.top_cost) for f in failures if f.top_cost is not None]
    fill = float(np.mean(known)) if known else 1.0
    by_task: dict[str, list[Failure]] = {}
    for f in failures:
        by_task.setdefault(f.task, []).append(f)
    clusters: list[Cluster] = []
    spaces: dict[str, TaskSpace] = {}
    ks: dict[str, int] = {}
    sils: dict[str, float | None] = {}
    for task, fs in sorted(by_task.items()):
        emb = np.asarray(embed([f.query for f in fs]), dtype=np.float64)
        tv = None if not task_vectors or task not in task_vectors else np.asarray(task_vectors[task], dtype=np.float64)
        x = emb if tv is None else np.hstack([emb, np.tile(tv, (len(emb), 1))])
        n = len(fs)
        pca = None
        if n >= 3:
            dims = min(MAX_DIMS, n - 1, x.shape[1])
            pca = PCA(n_components=dims, random_state=seed).fit(x)
            x = pca.transform(x)
        if n >= 4 and k_range[1] >= 2:
            km, sil = _choose_k(x, k_range, seed)
            labels = km.labels_
        else:
            km, sil, labels = None, float("nan"), np.zeros(n, dtype=np.int64)
        space = TaskSpace(task, pca, km, tv)
        if km is None:
            space._centre = x.mean(axis=0)
        spaces[task] = space
        ks[task] = int(labels.max()) + 1
        sils[task] = None if np.isnan(sil) else round(sil, 6)
        for lab in sorted(set(int(v) for v in labels)):
            members = [fs[i] for i in np.flatnonzero(labels == lab)]
            members.sort(key=lambda f: -f.gap)
            tiers = Counter(t for f in members for t in f.tiers)
            clusters.append(Cluster(
                task=task, index=lab, ids=[f.id for f in members],
                mean_gap=float(np.mean([f.gap for f in members])),
                failing_tiers=dict(sorted(tiers.items())),
                examples=[f.query for f in members[:3]],
                spend=float(sum(f.gap * (fill if f.top_cost is None else float(f.top_cost)) for f in members)),
                priority=priority,
            ))
    clusters.sort(key=lambda c: (-c.score, c.task, c.index))
    for i, c in enumerate(clusters, 1):
        c.rank = i
    return ClusterReport(clusters, spaces, ks, sils, priority)


def report_table(report: ClusterReport, limit: int = 10):  # noqa: ANN201 - rich Table
    from rich.table import Table

    t = Table(title=f"Failure clusters (top {min(limit, len(report.clusters))} of {len(report.clusters)})")
    numeric = ("rank", "size", "mean gap", "size x gap", "gap x top cost")
    for col in ("rank", "cluster", "size", "mean gap", "size x gap", "gap x top cost", "failing tiers",
                "example inputs"):
        t.add_column(col, justify="right" if col in numeric else "left")
    for c in report.clusters[:limit]:
        ex = " | ".join(e[:60].replace("\n", " ") for e in c.examples)
        tiers = ", ".join(f"{k}:{v}" for k, v in c.failing_tiers.items())
        t.add_row(str(c.rank), c.key, str(c.size), f"{c.mean_gap:.3f}", f"{c.size_gap:.2f}",
                  f"{c.spend:.4g}", tiers, ex)
    return t
