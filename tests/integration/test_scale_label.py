"""`routenlp label --ray` on a local Ray instance (2 CPUs) against the single-machine
command on the same real Banking77 slice: byte-identical output, resumable, CLI errors."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import need
from routenlp.cli import app
from routenlp.config import load_config
from routenlp.labeling import label_rows
from routenlp.matrix import read_matrix


pytestmark = pytest.mark.ray

N_LABELS, N_QUERIES = 6, 23


def _ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance for this module (2 CPUs), shut down afterwards."""
    need(_ray_available(), "ray[data] (pip install 'routenlp[ray]')")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def slice_files(require_shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two intent tasks over real Banking77 queries and three replay tiers with different
    batch sizes: T1 wrong on every third query, T2 right, T3 (task A only) an error on
    every fifth query, so outcomes, scores and errors all differ per row."""
    rng = random.Random(7)
    rows = read_jsonl(require_shared_data / "tasks" / "cs_intent" / "test.jsonl")
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_label[r["reference"]].append(r)
    labels = sorted(rng.sample(sorted(by_label), N_LABELS))
    picked = [r for r in rows if r["reference"] in labels][:N_QUERIES]
    data = []
    matrix = []
    for k, r in enumerate(picked):
        task = "intent_a" if k % 3 else "intent_b"  # interleaved: grouping is exercised
        rid = f"q{k:03d}"
        data.append({"id": rid, "task": task, "input": r["input"], "reference": r["reference"]})
        wrong = labels[(labels.index(r["reference"]) + 1) % len(labels)]
        outcomes = {
            "T1": {"response": wrong if k % 3 == 0 else r["reference"], "cost": 0.0001,
                   "latency_s": 0.01 + k / 1000, "confidence": 0.5 + (k % 5) / 10},
            "T2": {"response": r["reference"], "cost": 0.002, "latency_s": 0.2,
                   "tokens_in": 40 + k, "tokens_out": 3},
        }
        if task == "intent_a":
            outcomes["T3"] = (
                {"response": None, "error": "T3: upstream 503"} if k % 5 == 0
                else {"response": r["reference"], "cost": 0.01, "latency_s": 0.5}
            )
        matrix.append({"id": rid, "task": task, "prompt": r["input"], "outcomes": outcomes})
    out = tmp_path_factory.mktemp("scale_label")
    (out / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    (out / "recorded.jsonl").write_text("".join(json.dumps(r) + "\n" for r in matrix))
    replay = {"matrix": str(out / "recorded.jsonl")}
    task = {"kind": "intent_classification", "metric": "accuracy", "labels": labels, "fewshot": 0}
    cfg = {
        "tiers": [
            {"name": "T1", "kind": "replay", "price_in": 0.01, "price_out": 0.01,
             "batch_size": 4, "options": replay},
            {"name": "T2", "kind": "replay", "price_in": 1, "price_out": 1,
             "batch_size": 5, "options": replay},
            {"name": "T3", "kind": "replay", "price_in": 8, "price_out": 8,
             "batch_size": 3, "tasks": ["intent_a"], "options": replay},
        ],
        "tasks": [{"name": "intent_a", **task}, {"name": "intent_b", **task}],
    }
    (out / "ensemble.yaml").write_text(yaml.safe_dump(cfg))
    return {"dir": out, "config": out / "ensemble.yaml", "data": out / "data.jsonl"}


def test_ray_labelling_equals_single_machine_and_resumes(
    local_ray: Any, slice_files: dict[str, Path]
) -> None:
    from routenlp.scale.label import label_rows_ray

    cfg = load_config(slice_files["config"])
    data = read_jsonl(slice_files["data"])
    single = slice_files["dir"] / "single.jsonl"
    stats1 = label_rows(cfg, data, single)
    assert stats1.written == N_QUERIES and stats1.errors > 0

    # Resume from the same interrupted file (7 rows done + a torn half line): the Ray run
    # appends exactly what a resumed single-machine run appends.
    head = single.read_text().splitlines(keepends=True)
    interrupted = "".join(head[:7]) + head[7][:25]
    resumed_single = slice_files["dir"] / "resumed_single.jsonl"
    distributed = slice_files["dir"] / "ray.jsonl"
    resumed_single.write_text(interrupted)
    distributed.write_text(interrupted)
    label_rows(cfg, data, resumed_single)
    stats2 = label_rows_ray(cfg, data, distributed)
    assert stats2.skipped == 7 and stats2.written == N_QUERIES - 7
    assert distributed.read_bytes() == resumed_single.read_bytes()
    assert sorted(distributed.read_text().splitlines()) == sorted(single.read_text().splitlines())

    # Fresh run, whole slice: identical file, identical error count.
    fresh = slice_files["dir"] / "ray_fresh.jsonl"
    stats3 = label_rows_ray(cfg, data, fresh)
    assert (stats3.written, stats3.errors) == (stats1.written, stats1.errors)
    assert fresh.read_bytes() == single.read_bytes()
    rows = read_matrix(fresh)
    first = data[0]["task"]  # task groups in first-seen order, input order inside
    assert [r.id for r in rows][:3] == [d["id"] for d in data if d["task"] == first][:3]
    t3 = [r.outcomes["T3"] for r in rows if "T3" in r.outcomes]
    assert len(t3) == sum(d["task"] == "intent_a" for d in data) and any(o.error for o in t3)
    assert all("T3" not in r.outcomes for r in rows if r.task == "intent_b")

    # Nothing left: a rerun is a no-op.
    assert label_rows_ray(cfg, data, fresh).written == 0


def test_label_cli_with_ray(local_ray: Any, slice_files: dict[str, Path]) -> None:
    runner = CliRunner()
    out = slice_files["dir"] / "cli.jsonl"
    res = runner.invoke(app, ["label", "--ray", "--config", str(slice_files["config"]),
                              "--data", str(slice_files["data"]), "--out", str(out),
                              "--tiers", "T1,T2", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    rows = read_matrix(out)
    assert len(rows) == N_QUERIES and all(set(r.outcomes) == {"T1", "T2"} for r in rows)
    bad = runner.invoke(app, ["label", "--address", "auto", "--config",
                              str(slice_files["config"]), "--data", str(slice_files["data"]),
                              "--out", str(out)])
    assert bad.exit_code == 2 and "--address is only used with --ray" in bad.output
