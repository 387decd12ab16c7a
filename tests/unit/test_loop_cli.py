"""`routenlp optimize` / `routenlp loop ...`: bad input is one clear line and exit code 2."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from routenlp.cli import app

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "builtin_matrix"
CFG = ROOT / "examples" / "local-cpu.yaml"


def _optimize(*extra: str, out: Path) -> list[str]:
    return ["optimize", "--config", str(CFG), "--train", str(DATA / "train.jsonl"), "--cal", str(DATA / "cal.jsonl"),
            "--test", str(DATA / "test.jsonl"), "--out", str(out), *extra]


def test_optimize_and_loop_are_listed() -> None:
    res = CliRunner().invoke(app, ["--help"])
    assert "optimize" in res.output and "loop" in res.output
    res = CliRunner().invoke(app, ["loop", "--help"])
    assert "rollback" in res.output and "clusters" in res.output


def test_bad_strategy_teacher_k_and_tier(tmp_path: Path) -> None:
    cases = [
        (["--strategy", "greedy"], "--strategy must be targeted, random or both"),
        (["--teacher", "oracle"], "--teacher must be one of top, accepted, reference"),
        (["--k", "two"], "--k must look like 2:8"),
        (["--tiers", "T9"], "unknown tier 'T9'"),
    ]
    for extra, msg in cases:
        res = CliRunner().invoke(app, _optimize(*extra, out=tmp_path / "o"))
        assert res.exit_code == 2, (extra, res.output)
        assert msg in res.output and "Traceback" not in res.output, (extra, res.output)


def test_missing_matrix_is_a_clear_error(tmp_path: Path) -> None:
    args = _optimize(out=tmp_path / "o")
    args[args.index("--cal") + 1] = str(tmp_path / "nope.jsonl")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "nope.jsonl" in res.output


def test_rollback_of_an_unknown_round(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["loop", "rollback", "3", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "round 3 has no artifacts" in res.output
