"""Bad input from a new user's first session: every case exits 2 with one line naming the
option or file, and never prints a traceback (issue 12's CLI sweep)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from routenlp.cli import RouteNLPGroup, app, package_version
from routenlp.cli_utils import in_range, positive, probability, unit_interval
from routenlp.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    assert "Traceback" not in res.output, res.output
    return res.exit_code, res.output


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def config_file(tmp_path: Path, extra_tier: dict | None = None) -> Path:
    raw = {
        "tiers": [{"name": "a", "kind": "replay", "price_in": 1, "price_out": 1,
                   "options": {"matrix": str(tmp_path / "m.jsonl")}}],
        "tasks": [{"name": "t"}],
    }
    if extra_tier:
        raw["tiers"].append(extra_tier)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "1", "task": "t", "input": "x", "reference": "y"}\n')
    return path


def test_version_and_completion() -> None:
    code, out = run("--version")
    assert code == 0 and out.strip() == f"routenlp {package_version()}"
    code, out = run("--help")
    assert code == 0 and "--install-completion" in out and "--log-level" in out


def test_bogus_log_level(tmp_path: Path) -> None:
    code, out = run("--log-level", "bogus", "label", "--config", "c", "--data", "d", "--out", "o")
    assert code == 2 and "--log-level" in out and "bogus" in out
    assert len(error_lines(out)) == 1


def test_config_directory(tmp_path: Path) -> None:
    code, out = run("label", "--config", str(tmp_path), "--data", str(data_file(tmp_path)),
                    "--out", str(tmp_path / "m.jsonl"))
    assert code == 2 and f"--config {tmp_path} is a directory" in out


def test_label_on_empty_input_blames_the_input_before_loading_tiers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import routenlp.labeling as labeling

    def no_tiers(*_a: object, **_k: object) -> None:
        raise AssertionError("a tier was built for an empty input")

    monkeypatch.setattr(labeling, "build_tier", no_tiers)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    out = tmp_path / "m.jsonl"
    code, text = run("label", "--config", str(config_file(tmp_path)), "--data", str(empty),
                     "--out", str(out))
    assert code == 2 and f"--data {empty}: the input file has no rows" in text
    assert str(out) not in text.replace(str(empty), "") and not out.exists()


@pytest.mark.parametrize(
    ("outcome", "field"),
    [('{"quality": 5.0}', "quality: 5.0 is outside [0, 1]"),
     ('{"quality": 1.0, "uncertainty": NaN}', "uncertainty: nan is not a number")],
)
def test_matrix_rows_out_of_range(tmp_path: Path, outcome: str, field: str) -> None:
    matrix = tmp_path / "cal.jsonl"
    matrix.write_text('{"id": "q1", "task": "t", "prompt": "p", "outcomes": {"a": ' + outcome + "}}\n")
    code, out = run("calibrate", "--matrix", str(matrix), "--out", str(tmp_path / "th.json"),
                    "--config", str(config_file(tmp_path)))
    assert code == 2 and f"{matrix}:1: row 'q1', outcomes.a.{field}" in " ".join(out.split())


def test_typo_in_a_tier_switched_off_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROUTENLP_TEST_GATE", raising=False)
    cfg = config_file(tmp_path, {"name": "b", "kind": "openai_compat", "price_in": 2,
                                 "price_out": 2, "enabled_if_env": "ROUTENLP_TEST_GATE",
                                 "base_url": "${ROUTENLP_TEST_GATE}", "max_tokenz": 5})
    code, out = run("label", "--config", str(cfg), "--data", str(data_file(tmp_path)),
                    "--out", str(tmp_path / "m.jsonl"))
    assert code == 2 and "tiers.1.max_tokenz: unknown key" in out


def test_unset_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTENLP_TEST_URL", raising=False)
    cfg = config_file(tmp_path, {"name": "b", "kind": "openai_compat", "price_in": 2,
                                 "price_out": 2, "base_url": "${ROUTENLP_TEST_URL}"})
    code, out = run("label", "--config", str(cfg), "--data", str(data_file(tmp_path)),
                    "--out", str(tmp_path / "m.jsonl"))
    assert code == 2 and "tiers.1.base_url: environment variable ROUTENLP_TEST_URL is not set" in out
    cfg.write_text(cfg.read_text().replace("${ROUTENLP_TEST_URL}", "${ROUTENLP_TEST_URL:?your endpoint}"))
    code, out = run("label", "--config", str(cfg), "--data", str(data_file(tmp_path)),
                    "--out", str(tmp_path / "m.jsonl"))
    assert code == 2 and "ROUTENLP_TEST_URL is not set: your endpoint" in out


@pytest.mark.parametrize(
    ("args", "option"),
    [(["label", "--limit", "0"], "--limit"), (["label", "--batch-size", "-1"], "--batch-size"),
     (["workload", "generate", "--out", "x", "--n-test", "-5"], "--n-test"),
     (["demo", "--n-per-task", "0"], "--n-per-task"),
     (["serve-tier", "T1", "--config", "c.yaml", "--log-level", "loud"], "--log-level")],
)
def test_option_ranges_of_owned_commands(tmp_path: Path, args: list[str], option: str) -> None:
    base = ["--config", str(config_file(tmp_path)), "--data", str(data_file(tmp_path)),
            "--out", str(tmp_path / "m.jsonl")] if args[0] == "label" else []
    code, out = run(*args, *base)
    assert code == 2 and option in out


def test_malformed_inputs_name_the_file(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("tiers: [unclosed")
    code, out = run("label", "--config", str(bad_yaml), "--data", "d", "--out", "o")
    assert code == 2 and f"config {bad_yaml} is not valid YAML" in out
    assert len(error_lines(out)) == 1
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_text("{not json\n")
    code, out = run("label", "--config", str(config_file(tmp_path)), "--data", str(bad_data),
                    "--out", str(tmp_path / "m.jsonl"))
    assert code == 2 and f"{bad_data}:1: not valid JSON" in out


# -- the central policy applies to any command, decorated or not --------------------------
class _Model(BaseModel):
    n: int


def _policy_app() -> typer.Typer:
    demo = typer.Typer(cls=RouteNLPGroup)
    sub = typer.Typer()
    demo.add_typer(sub, name="sub")
    raises = {
        "config": lambda: (_ for _ in ()).throw(ConfigError("bad key x", hint="fix x")),
        "missing": lambda: open("/nonexistent/routenlp-file"),  # noqa: SIM115
        "isdir": lambda: open("/"),  # noqa: SIM115
        "json": lambda: json.loads("{oops"),
        "yaml": lambda: yaml.safe_load("a: [b"),
        "pydantic": lambda: _Model.model_validate({"n": "many"}),
        "perm": lambda: (_ for _ in ()).throw(PermissionError(13, "denied", "/root/x")),
        "interrupt": lambda: (_ for _ in ()).throw(KeyboardInterrupt()),
        "bug": lambda: (_ for _ in ()).throw(RuntimeError("a real bug")),
        "extra": lambda: (_ for _ in ()).throw(ModuleNotFoundError("No module named 'torch'", name="torch")),
        "nomod": lambda: (_ for _ in ()).throw(ModuleNotFoundError("No module named 'zzz'", name="zzz")),
    }
    for name, fn in raises.items():
        sub.command(name)(lambda fn=fn: fn())
    demo.command("alpha")(_alpha_cmd)
    return demo


def _alpha_cmd(
    alpha: float = typer.Option(0.05, "--alpha", callback=probability),
    tau: float = typer.Option(1.0, "--tau", callback=unit_interval),
    sla_ms: float = typer.Option(100.0, "--sla-ms", callback=positive),
    k: int = typer.Option(1, "--k", callback=in_range(1, 10)),
) -> None:
    typer.echo(f"ok {alpha} {tau} {sla_ms} {k}")


@pytest.mark.parametrize(
    ("name", "code", "text"),
    [("config", 2, "error: bad key x"), ("missing", 2, "file not found: /nonexistent/routenlp-file"),
     ("isdir", 2, "/ is a directory"), ("json", 2, "not valid JSON"), ("yaml", 2, "not valid YAML"),
     ("pydantic", 2, "n: Input should be a valid integer"), ("perm", 2, "permission denied: /root/x"),
     ("interrupt", 130, "interrupted"),
     ("extra", 2, "optional dependency 'torch' is not installed; it comes with the 'local' extra")],
)
def test_every_expected_error_is_one_line(name: str, code: int, text: str) -> None:
    res = runner.invoke(_policy_app(), ["sub", name])
    assert res.exit_code == code, res.output
    assert text in res.output and "Traceback" not in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) <= 2  # message (+ hint)


def test_a_real_bug_keeps_its_traceback() -> None:
    res = runner.invoke(_policy_app(), ["sub", "bug"])
    assert isinstance(res.exception, RuntimeError)
    res = runner.invoke(_policy_app(), ["sub", "nomod"])  # not an optional dependency: a bug
    assert isinstance(res.exception, ModuleNotFoundError)


def test_require_names_the_extra() -> None:
    from routenlp.extras import MissingExtraError, require

    assert require("json").__name__ == "json"
    with pytest.raises(MissingExtraError, match="'ray' extra") as info:
        require("ray._routenlp_no_such_module_", purpose="distributed labelling")
    assert "pip install 'routenlp[ray]'" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("args", "option", "span"),
    [(["--alpha", "2"], "--alpha", "(0, 1)"), (["--alpha", "0"], "--alpha", "(0, 1)"),
     (["--tau", "3"], "--tau", "[0, 1]"), (["--sla-ms", "-5"], "--sla-ms", "(0, inf)"),
     (["--k", "11"], "--k", "[1, 10]"), (["--alpha", "nan"], "--alpha", "(0, 1)")],
)
def test_range_validator_names_option_and_range(args: list[str], option: str, span: str) -> None:
    res = runner.invoke(_policy_app(), ["alpha", *args])
    assert res.exit_code == 2
    assert option in res.output and span in res.output and "Traceback" not in res.output


def test_range_validator_accepts_edges() -> None:
    res = runner.invoke(_policy_app(), ["alpha", "--alpha", "0.5", "--tau", "1", "--k", "10"])
    assert res.exit_code == 0 and res.output.strip() == "ok 0.5 1.0 100.0 10"
