"""End to end over HTTP: `routenlp serve-tier` runs in a separate process serving a
classifier tier whose head is fitted here; the `openai_compat` tier and the raw `openai`
client talk to it (non-stream and stream) and the label's log-prob comes through."""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI

from routenlp.config import load_config
from routenlp.tiers.base import Request, build_tier
from routenlp.tiers.classifier import fit_classifier_head
from routenlp.tiers.openai_compat import OpenAICompatTier

N_LABELS, PER_LABEL = 6, 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def banking_slice(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "tasks" / "cs_intent" / "train.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_label[r["reference"]].append(r)
    rng = random.Random(3)
    labels = rng.sample(sorted(by_label), N_LABELS)
    return [r for lab in labels for r in rng.sample(by_label[lab], PER_LABEL)]


@pytest.fixture(scope="module")
def served(require_shared_data: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, Any]]:
    """Start serve-tier (it loads the encoder) while the head is fitted here, in parallel."""
    tmp = tmp_path_factory.mktemp("serve_tier")
    port = free_port()
    config = tmp / "ensemble.yaml"
    config.write_text(yaml.safe_dump({
        "tiers": [
            {"name": "T1", "kind": "classifier", "head": str(tmp / "heads"),
             "price_in": 0.01, "price_out": 0.01, "tasks": ["cs_intent", "legal_risk"]},
            {"name": "T4", "kind": "openai_compat", "base_url": f"http://127.0.0.1:{port}/v1",
             "model": "T1", "price_in": 8, "price_out": 8, "timeout_s": 30, "max_retries": 0},
        ],
        "tasks": [{"name": "cs_intent", "kind": "intent_classification"},
                  {"name": "legal_risk", "kind": "risk_classification"}],
    }))
    log = (tmp / "server.log").open("w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "routenlp.cli", "serve-tier", "T1", "--config", str(config),
         "--port", str(port)],
        cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        ens = load_config(config)
        rows = banking_slice(require_shared_data)
        data = tmp / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        fit = fit_classifier_head(ens.tier("T1"), data)
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve-tier exited with {proc.returncode}:\n"
                            + (tmp / "server.log").read_text()[-3000:])
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail("serve-tier did not become healthy in 120 s:\n"
                            + (tmp / "server.log").read_text()[-3000:])
            time.sleep(0.2)
        yield {"port": port, "config": ens, "rows": rows, "fit": fit}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_openai_compat_tier_gets_label_logprob_and_class_probs(served: dict[str, Any]) -> None:
    ens = served["config"]
    tier = build_tier(ens.tier("T4"), ens)
    assert isinstance(tier, OpenAICompatTier)
    rows = served["rows"][::PER_LABEL][:4]
    gens = tier.generate_batch(
        [Request(task="cs_intent", prompt=r["input"], id=r["id"]) for r in rows]
    )
    for gen, row in zip(gens, rows):
        assert gen.ok, gen.error
        assert gen.text in served["fit"]["labels"] and gen.tokens == [gen.text]
        assert gen.class_probs is not None and len(gen.class_probs) == N_LABELS
        assert sum(gen.class_probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert gen.logprobs is not None and len(gen.logprobs) == 1
        assert gen.logprobs[0] == pytest.approx(math.log(gen.class_probs[gen.text]), abs=1e-6)
        assert gen.uncertainty == pytest.approx(1 - max(gen.class_probs.values()), abs=1e-6)
        assert gen.usage.tokens_in > 2 and gen.usage.tokens_out == 1
        assert gen.cost == pytest.approx(ens.tier("T4").cost(gen.usage.tokens_in, 1))
        assert "estimated_usage" not in gen.meta
    # training rows come back with their own label (the head fits them)
    assert sum(g.text == r["reference"] for g, r in zip(gens, rows)) >= 3
    tier.close()


def test_unfitted_task_is_a_502_tier_error(served: dict[str, Any]) -> None:
    ens = served["config"]
    tier = build_tier(ens.tier("T4"), ens)
    gen = tier.generate(Request(task="legal_risk", prompt="We may end your account at will."))
    assert gen.error is not None
    assert "HTTP 502" in gen.error and "no trained head for task legal_risk" in gen.error
    tier.close()


def test_raw_openai_client_streams_with_logprobs(served: dict[str, Any]) -> None:
    client = OpenAI(base_url=f"http://127.0.0.1:{served['port']}/v1", api_key="none",
                    max_retries=0, timeout=30)
    assert [m.id for m in client.models.list().data] == ["T1"]
    query = served["rows"][0]["input"]
    stream = client.chat.completions.create(
        model="T1", messages=[{"role": "user", "content": query}], stream=True,
        logprobs=True, top_logprobs=3, stream_options={"include_usage": True},
        extra_headers={"X-RouteNLP-Task": "cs_intent"},
    )
    text, lps, finish, usage = "", [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                lps.extend(choice.logprobs.content)
            finish = choice.finish_reason or finish
    assert text in served["fit"]["labels"] and finish == "stop"
    assert len(lps) == 1 and lps[0].token == text and lps[0].logprob <= 0
    assert len(lps[0].top_logprobs) == 3 and lps[0].top_logprobs[0].token == text
    assert usage is not None and usage.completion_tokens == 1

    plain = client.chat.completions.create(
        model="T1", messages=[{"role": "user", "content": query}], logprobs=True,
        extra_headers={"X-RouteNLP-Task": "cs_intent"},
    )
    assert plain.choices[0].message.content == text
    assert plain.choices[0].logprobs is not None
    assert plain.choices[0].logprobs.content[0].logprob == pytest.approx(lps[0].logprob)
    extension = (plain.model_extra or {})["routenlp"]
    assert extension["tier"] == "T1" and extension["task"] == "cs_intent"
    assert math.isclose(sum(extension["class_probs"].values()), 1.0, abs_tol=1e-6)
