"""The Ray extra stays optional: clear one-line errors (exit 2) without it or with bad
options, and the scale config / deployment options derived from the config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from routenlp.cli import app
from routenlp.config import parse_config
from routenlp.errors import ConfigError

CFG = {
    "tiers": [
        {"name": "T1", "kind": "classifier", "model": "m", "price_in": 0.01, "price_out": 0.01},
        {"name": "T2", "kind": "openai_compat", "model": "x", "base_url": "http://127.0.0.1:9/v1",
         "price_in": 1, "price_out": 1},
        {"name": "T3", "kind": "replay", "price_in": 2, "price_out": 2},
    ],
    "tasks": [{"name": "t", "kind": "generic", "metric": "score"}],
}


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import ray` fail as it does where the extra is not installed."""
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "1", "task": "t", "input": "q", "reference": "a"}\n')
    return cfg, data


def test_missing_ray_is_one_clear_error(no_ray: None, tmp_path: Path) -> None:
    from routenlp.scale import RayUnavailableError, require_ray

    with pytest.raises(RayUnavailableError, match=r"needs ray\[serve\]"):
        require_ray("serve")
    cfg, data = _files(tmp_path)
    res = CliRunner().invoke(app, ["label", "--ray", "-c", str(cfg), "-d", str(data),
                                   "-o", str(tmp_path / "m.jsonl")])
    assert res.exit_code == 2
    assert "pip install 'routenlp[ray]'" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["serve", "--ray", "-c", str(cfg)])
    assert res.exit_code == 2 and "routenlp[ray]" in res.output


def test_serve_ray_option_errors(tmp_path: Path) -> None:
    cfg, _ = _files(tmp_path)
    res = CliRunner().invoke(app, ["serve", "--address", "auto", "-c", str(cfg)])
    assert res.exit_code == 2 and "--address is only used with --ray" in res.output
    res = CliRunner().invoke(app, ["serve", "--ray", "--workers", "2", "-c", str(cfg)])
    assert res.exit_code == 2 and "scale.gateway.replicas" in res.output


def test_scale_config_and_deployment_options() -> None:
    from routenlp.scale.serve import deployed_tiers, deployment_options

    cfg = parse_config({**CFG, "scale": {
        "gateway": {"autoscaling": {"min_replicas": 2, "max_replicas": 8}},
        "tiers": {"T3": {"replicas": 3, "num_cpus": 0.5}}}}, "x")
    assert deployed_tiers(cfg) == ["T1", "T3"]  # classifier by kind, replay by name
    gw = deployment_options(cfg.scale.gateway, cfg)
    assert gw["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 8,
                                        "target_ongoing_requests": 16.0}
    assert "num_replicas" not in gw
    t3 = deployment_options(cfg.scale.tiers["T3"], cfg)
    assert t3["num_replicas"] == 3 and t3["ray_actor_options"] == {"num_cpus": 0.5}
    with pytest.raises(ConfigError, match=r"scale.tiers: unknown tier\(s\) \['T9'\]"):
        parse_config({**CFG, "scale": {"tiers": {"T9": {}}}}, "x")
    with pytest.raises(ConfigError, match="max_replicas"):
        parse_config({**CFG, "scale": {"gateway": {"autoscaling": {
            "min_replicas": 5, "max_replicas": 2}}}}, "x")


def test_replicas_option_parsing() -> None:
    from routenlp.scale.bench import parse_replicas

    assert parse_replicas("2,1, 2") == [1, 2]
    for bad in ("", "a", "0,1"):
        with pytest.raises(ConfigError, match="--replicas"):
            parse_replicas(bad)


def test_stage_resources_share_the_cluster() -> None:
    from routenlp.scale.label import _stage_resources

    assert _stage_resources(2, 3) == (1, pytest.approx(2 / 3))  # still schedulable
    assert _stage_resources(8, 2) == (4, 1.0)
