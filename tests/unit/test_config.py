"""Config validation: every mistake names the key that is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from routenlp.config import config_from_models_json, load_config, parse_config
from routenlp.errors import ConfigError, UnknownTaskError

ROOT = Path(__file__).resolve().parents[2]


def base() -> dict:
    return {
        "tiers": [
            {"name": "small", "kind": "replay", "price_in": 0.1, "price_out": 0.1, "tasks": ["qa"]},
            {"name": "big", "kind": "replay", "price_in": 1.0, "price_out": 2.0},
        ],
        "tasks": [{"name": "qa", "kind": "generic", "metric": "accuracy", "tau": 1.0}],
    }


def test_valid_config_and_lookups() -> None:
    cfg = parse_config(base())
    assert cfg.tier_names == ["small", "big"]
    assert [t.name for t in cfg.tiers_for("qa")] == ["small", "big"]
    assert cfg.tier("big").cost(1000, 500) == pytest.approx(1.0 + 1.0)
    assert cfg.router.lambda_c == 0.3 and cfg.router.lambda_q == 0.5
    assert len(cfg.hash()) == 16


def test_unknown_key_is_named() -> None:
    raw = base()
    raw["tiers"][0]["prise_in"] = 3
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert "tiers.0.prise_in" in str(err.value) and "unknown key" in str(err.value)


def test_missing_field_is_named() -> None:
    raw = base()
    del raw["tiers"][1]["price_out"]
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert "tiers.1.price_out" in str(err.value) and "missing" in str(err.value)


def test_unknown_task_in_tier() -> None:
    raw = base()
    raw["tiers"][0]["tasks"] = ["qa", "nope"]
    with pytest.raises(ConfigError, match="unknown task"):
        parse_config(raw)


def test_tiers_must_be_sorted_by_cost() -> None:
    raw = base()
    raw["tiers"].reverse()
    with pytest.raises(ConfigError, match="not sorted by cost"):
        parse_config(raw)


def test_unknown_metric_and_kind() -> None:
    raw = base()
    raw["tasks"][0]["metric"] = "bleu"
    with pytest.raises(ConfigError, match="tasks.0.metric"):
        parse_config(raw)
    raw = base()
    raw["tasks"][0]["kind"] = "poetry"
    with pytest.raises(ConfigError, match="tasks.0.kind"):
        parse_config(raw)


def test_task_lookup_error() -> None:
    cfg = parse_config(base())
    with pytest.raises(UnknownTaskError, match="known tasks"):
        cfg.task("translation")
    with pytest.raises(ConfigError, match="unknown tier"):
        cfg.tier("T9")


def test_env_expansion_and_optional_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = base()
    raw["tiers"].append(
        {
            "name": "remote",
            "kind": "openai_compat",
            "base_url": "${MY_URL}",
            "api_key": "${MY_KEY:-none}",
            "price_in": 8,
            "price_out": 8,
            "enabled_if_env": "MY_URL",
        }
    )
    monkeypatch.delenv("MY_URL", raising=False)
    assert parse_config(raw).tier_names == ["small", "big"]
    monkeypatch.setenv("MY_URL", "http://127.0.0.1:9/v1")
    cfg = parse_config(raw)
    assert cfg.tier("remote").base_url == "http://127.0.0.1:9/v1"
    assert cfg.tier("remote").api_key == "none"


def test_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("name", ["local-cpu.yaml", "openai-endpoints.yaml"])
def test_shipped_examples_load(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in range(1, 5):
        monkeypatch.setenv(f"ROUTENLP_T{k}_BASE_URL", f"http://127.0.0.1:81{k}/v1")
        monkeypatch.setenv(f"ROUTENLP_T{k}_MODEL", f"model-{k}")
    cfg = load_config(ROOT / "examples" / name)
    assert len(cfg.tasks) == 6
    assert cfg.tiers[0].name == "T1"


def test_openai_example_names_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in range(1, 5):
        monkeypatch.delenv(f"ROUTENLP_T{k}_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match=r"tiers\.0\.base_url: environment variable "
                       r"ROUTENLP_T1_BASE_URL is not set: the T1 endpoint"):
        load_config(ROOT / "examples" / "openai-endpoints.yaml")


def test_unset_variable_without_default_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = base()
    raw["tiers"][0]["model"] = "${ROUTENLP_TEST_UNSET}"
    monkeypatch.delenv("ROUTENLP_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match=r"tiers\.0\.model: environment variable "
                       r"ROUTENLP_TEST_UNSET is not set") as info:
        parse_config(raw)
    assert "ROUTENLP_TEST_UNSET:-default" in (info.value.hint or "")
    monkeypatch.setenv("ROUTENLP_TEST_UNSET", "")  # set but empty: "" as in a shell
    assert parse_config(raw).tiers[0].model == ""
    raw["tiers"][0]["model"] = "${ROUTENLP_TEST_UNSET:-fallback}"
    assert parse_config(raw).tiers[0].model == "fallback"
    raw["tiers"][0]["model"] = "${ROUTENLP_TEST_UNSET:?set it to the model id}"
    with pytest.raises(ConfigError, match="ROUTENLP_TEST_UNSET is not set: set it to the model id"):
        parse_config(raw)
    monkeypatch.setenv("ROUTENLP_TEST_UNSET", "m1")
    assert parse_config(raw).tiers[0].model == "m1"


def test_typo_in_a_gated_tier_fails_even_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = base()
    raw["tiers"].append(
        {"name": "remote", "kind": "openai_compat", "base_url": "${MY_URL}", "price_in": 8,
         "price_out": 8, "enabled_if_env": "MY_URL", "timeuot_s": 5}
    )
    monkeypatch.delenv("MY_URL", raising=False)
    with pytest.raises(ConfigError, match=r"tiers\.2\.timeuot_s: unknown key"):
        parse_config(raw)
    raw["tiers"][-1].pop("timeuot_s")
    raw["tiers"][-1]["price_in"] = -1
    with pytest.raises(ConfigError, match=r"tiers\.2\.price_in"):
        parse_config(raw)


def test_config_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_reference_tier_options_are_checked() -> None:
    raw = base()
    raw["tiers"].append({"name": "ref", "kind": "reference", "price_in": 8, "price_out": 8,
                         "options": {"error_rate": 0.1, "fallback_tier": "big"}})
    cfg = parse_config(raw)
    assert cfg.tier("ref").reference_options.error_rate == 0.1
    assert cfg.tier("ref").display_name == "ref (simulated frontier (reference answers))"
    raw["tiers"][-1]["options"] = {"eror_rate": 0.1}
    with pytest.raises(ConfigError, match="options.eror_rate: unknown key"):
        parse_config(raw)
    raw["tiers"][-1]["options"] = {"error_rate": 1.5}
    with pytest.raises(ConfigError, match="options.error_rate"):
        parse_config(raw)
    raw["tiers"][-1]["options"] = {"fallback_tier": "T9"}
    with pytest.raises(ConfigError, match="fallback_tier: unknown tier 'T9'"):
        parse_config(raw)


def test_openai_example_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in range(1, 5):
        monkeypatch.setenv(f"ROUTENLP_T{k}_BASE_URL", f"http://127.0.0.1:81{k}/v1")
        monkeypatch.setenv(f"ROUTENLP_T{k}_MODEL", f"model-{k}")
    cfg = load_config(ROOT / "examples" / "openai-endpoints.yaml")
    assert [t.model for t in cfg.tiers] == ["model-1", "model-2", "model-3", "model-4"]
    assert cfg.tier("T3").base_url == "http://127.0.0.1:813/v1"


def test_models_json(tmp_path: Path) -> None:
    models = [
        {"name": "a", "price_in_per_1m": 0.2, "price_out_per_1m": 0.2},
        {"name": "b", "price_in_per_1m": 0.8, "price_out_per_1m": 2.4},
        {"name": "c", "price_in_per_1m": 0.9, "price_out_per_1m": 0.9},
    ]
    p = tmp_path / "models.json"
    p.write_text(json.dumps(models))
    cfg = config_from_models_json(p, ["t1", "t2"], sla_ms=500)
    assert cfg.tier_names == ["a", "b", "c"]  # file order = measured cost order is kept
    assert cfg.tier("b").price_out == pytest.approx(0.0024)
    assert cfg.task("t1").tau == 1.0 and cfg.task("t2").sla_ms == 500
    p.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        config_from_models_json(p, ["t1"])


def test_local_cpu_yaml_is_plain_yaml() -> None:
    raw = yaml.safe_load((ROOT / "examples" / "local-cpu.yaml").read_text())
    assert [t["price_in"] for t in raw["tiers"]] == [0.01, 0.10, 0.80, 8.00, 8.00]
    # the two T4 entries exclude each other: the simulated frontier unless a real one is set
    t4s = [t for t in raw["tiers"] if t["name"] == "T4"]
    assert [t["kind"] for t in t4s] == ["reference", "openai_compat"]
    assert t4s[0]["disabled_if_env"] == t4s[1]["enabled_if_env"] == "ROUTENLP_T4_BASE_URL"


def test_config_for_matrix_choice(tmp_path: Path) -> None:
    from routenlp.config import config_for_matrix

    models = tmp_path / "models.json"
    models.write_text(json.dumps([{"name": "a", "price_in_per_1m": 1, "price_out_per_1m": 1},
                                  {"name": "b", "price_in_per_1m": 2, "price_out_per_1m": 2}]))
    with pytest.raises(ConfigError, match="exactly one of --config"):
        config_for_matrix(None, None, ["t"])
    cfg = config_for_matrix(None, models, ["t"], tau=0.5, sla_ms=300)
    assert cfg.task("t").tau == 0.5 and cfg.task("t").sla_ms == 300
    yml = tmp_path / "c.yaml"
    yml.write_text(yaml.safe_dump(base()))
    cfg = config_for_matrix(yml, None, ["qa"], tau=0.7)
    assert cfg.task("qa").tau == 0.7
