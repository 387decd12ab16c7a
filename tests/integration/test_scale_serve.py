"""`routenlp serve --ray` on a local Ray instance (2 CPUs): two gateway replicas plus a
tier deployment, the `openai` client, one PostgreSQL store; every request logged once,
a killed replica does not stop the service, artifacts reload on every replica."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from conftest import need, with_search_path
from routenlp.config import load_config

pytestmark = [pytest.mark.ray, pytest.mark.postgres]

LABELS = ["card_arrival", "card_linking", "exchange_rate", "lost_or_stolen_card"]
QUERIES = [
    ("How long until my new card arrives?", "card_arrival"),
    ("How do I link my card in the app?", "card_linking"),
    ("What exchange rate do you use?", "exchange_rate"),
    ("Someone stole my card, help", "lost_or_stolen_card"),
]


def _ray_serve_available() -> bool:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pg_schema_url(pg_server_url: str) -> Iterator[str]:
    schema = f"routenlp_ray_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(pg_server_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield with_search_path(pg_server_url, schema)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="module")
def deployed(pg_schema_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Deploy on a local Ray: gateway x2 (0.5 CPU each) and tier T1 as its own deployment;
    T1 fails for the ids ending in 7 (the cascade escalates to T2, in-process)."""
    need(_ray_serve_available(), "ray[serve] (pip install 'routenlp[ray]')")
    import ray
    from ray import serve

    from routenlp.scale.serve import deploy

    out = tmp_path_factory.mktemp("scale_serve")
    rows = []
    for k in range(60):
        query, label = QUERIES[k % len(QUERIES)]
        rid = f"req-{k:03d}"
        t1 = ({"response": None, "error": "T1: overloaded"} if k % 10 == 7
              else {"response": label, "cost": 0.0001, "latency_s": 0.001, "confidence": 0.9})
        rows.append({"id": rid, "task": "cs_intent", "prompt": query,
                     "outcomes": {"T1": t1, "T2": {"response": label, "cost": 0.002,
                                                   "latency_s": 0.002}}})
    (out / "recorded.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    replay = {"matrix": str(out / "recorded.jsonl")}
    cfg = {
        "tiers": [
            {"name": "T1", "kind": "replay", "price_in": 0.01, "price_out": 0.01,
             "options": replay},
            {"name": "T2", "kind": "replay", "price_in": 1, "price_out": 1, "options": replay},
        ],
        "tasks": [{"name": "cs_intent", "kind": "intent_classification", "metric": "accuracy",
                   "labels": LABELS, "fewshot": 0}],
        "store": {"url": pg_schema_url},
        "scale": {"gateway": {"replicas": 2, "num_cpus": 0.5},
                  "tiers": {"T1": {"replicas": 1, "num_cpus": 0.25}},
                  "health_check_period_s": 1, "graceful_shutdown_timeout_s": 2},
    }
    (out / "ensemble.yaml").write_text(yaml.safe_dump(cfg))
    config = load_config(out / "ensemble.yaml")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        url = deploy(config, port=free_port())
        yield {"url": url, "config": config, "dir": out, "pg": pg_schema_url}
    finally:
        serve.shutdown()
        ray.shutdown()


def _client(url: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=url, api_key="unused", max_retries=3, timeout=30)


def _ask(client: Any, k: int) -> Any:
    query, _ = QUERIES[k % len(QUERIES)]
    return client.chat.completions.create(
        model="routenlp", messages=[{"role": "user", "content": query}],
        metadata={"request_id": f"req-{k:03d}"},
    )


def _logged(pg: str) -> dict[str, int]:
    engine = sa.create_engine(pg)
    try:
        with engine.connect() as conn:
            got = conn.execute(sa.text("SELECT id, count(*) FROM requests GROUP BY id"))
            return {str(rid): int(n) for rid, n in got}
    finally:
        engine.dispose()


def _gateway_replicas() -> list[str]:
    import ray.util

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and "#gateway#" in a["name"])


def test_two_replicas_answer_and_log_every_request_once(deployed: dict[str, Any]) -> None:
    client = _client(deployed["url"])
    assert len(_gateway_replicas()) == 2
    for k in range(20):
        resp = _ask(client, k)
        assert resp.choices[0].message.content == QUERIES[k % len(QUERIES)][1]
    # a client retry of a request id already answered: no second row
    assert _ask(client, 3).choices[0].message.content == QUERIES[3][1]
    logged = _logged(deployed["pg"])
    assert logged == {f"req-{k:03d}": 1 for k in range(20)}
    # both replicas served (the proxy spreads requests), the tier deployment was used and
    # T1's failures escalated to T2
    from routenlp.store import Store

    with Store(deployed["pg"]) as store:
        recs = [store.get_request(f"req-{k:03d}") for k in range(20)]
    assert all(r is not None and r.status == "ok" for r in recs)
    tiers = {r.id: r.final_tier for r in recs if r is not None}
    paths = {r.id: r.path for r in recs if r is not None}
    assert tiers["req-001"] == "T1", paths["req-001"]
    assert tiers["req-007"] == "T2" and tiers["req-017"] == "T2"
    assert "T1" in (paths["req-007"][0].error or "")


def test_killing_a_replica_keeps_the_service_answering(deployed: dict[str, Any]) -> None:
    import ray

    client = _client(deployed["url"])
    victim = _gateway_replicas()[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    answered = 0
    for k in range(20, 40):
        resp = _ask(client, k)
        answered += resp.choices[0].message.content == QUERIES[k % len(QUERIES)][1]
    assert answered == 20
    logged = _logged(deployed["pg"])
    assert all(logged.get(f"req-{k:03d}") == 1 for k in range(40))
    assert max(logged.values()) == 1
    # Serve replaces the dead replica
    deadline = time.time() + 60
    while time.time() < deadline:
        names = _gateway_replicas()
        if len(names) == 2 and victim not in names:
            break
        time.sleep(1)
    assert len(_gateway_replicas()) == 2 and victim not in _gateway_replicas()


def test_redeploy_reloads_thresholds_on_every_replica(deployed: dict[str, Any]) -> None:
    """New thresholds (accept nothing below the top tier) reach every replica (Serve's
    user_config, rolled out replica by replica) and the service keeps two replicas."""
    from routenlp.conformal.thresholds import Thresholds
    from routenlp.scale.serve import deploy

    thr = deployed["dir"] / "thresholds.json"
    Thresholds(alpha=0.1, method="test", thresholds={}).save(thr)
    deploy(deployed["config"], thresholds=thr, port=int(deployed["url"].split(":")[2][:-3]))
    client = _client(deployed["url"])
    finals = set()
    from routenlp.store import Store

    for k in range(40, 50):
        _ask(client, k)
    with Store(deployed["pg"]) as store:
        for k in range(40, 50):
            rec = store.get_request(f"req-{k:03d}")
            assert rec is not None
            finals.add(rec.final_tier)
    assert finals == {"T2"}  # no thresholds for T1 -> never accepted there
    assert len(_gateway_replicas()) == 2
