"""`routenlp bench gateway` end to end on a tiny run: real upstream and gateway processes,
the JSON keys of ARCHITECTURE.md, added latency = gateway p50 - direct p50."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routenlp.cli import app as cli_app


@pytest.mark.slow
def test_bench_gateway_small_run(tmp_path: Path) -> None:
    out = tmp_path / "gw.json"
    r = CliRunner().invoke(cli_app, ["bench", "gateway", "--requests", "50", "--concurrency",
                                     "1,4", "--json", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert set(data["rps"]) == {"1", "4"} and all(v > 0 for v in data["rps"].values())
    assert data["runs"]["1"]["errors"] == 0 and data["runs"]["1"]["n"] >= 50
    assert data["added_p50_ms"] == pytest.approx(
        data["runs"]["1"]["p50_ms"] - data["upstream"]["p50_ms"])
