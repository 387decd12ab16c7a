"""`routenlp demo --preset tiny` end to end with the real local models (slow: a few minutes).

Asserts structure and consistency, not quality: 12 rows per task are too few for a
certificate or a useful round. Checked: always-top costs exactly 1.0, every served cost is
the sum of the costs of every tier the cascade tried, the files a user is pointed at exist,
the report references every plot it wrote, and headless Chromium renders it non-blank.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routenlp.cli import app
from routenlp.matrix import read_matrix

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse cache switch is not on yet
        mp.setenv("ROUTENLP_LABEL_CACHE", "0")
        mp.setenv("ROUTENLP_DISTILL_CACHE", "0")
        result = _run_demo(out)
    assert result.exit_code == 0, result.output[-3000:]
    # --json: stdout is the summary object alone (tables and progress went to stderr)
    assert json.loads(result.stdout)["preset"] == "tiny"
    return out


def _run_demo(out: Path):  # noqa: ANN202 - click Result
    return CliRunner().invoke(
        app,
        ["demo", "--preset", "tiny", "--out", str(out), "--config", str(REPO / "examples/local-cpu.yaml"), "--json"],
        catch_exceptions=False,
    )


def _served_matrix(out: Path) -> dict[str, object]:
    meta = json.loads((out / "loop" / "serving.json").read_text())
    if meta["round"] == 0:
        path = out / "matrix_test.jsonl"
    else:
        path = out / "loop" / "rounds" / meta["strategy"] / f"round-{meta['round']}" / "matrices" / "test.jsonl"
    return {r.id: r for r in read_matrix(path)}


def test_files_a_user_is_pointed_at_exist(demo_out: Path) -> None:
    for name in ("results.json", "results_before.json", "rounds.json", "report.html", "summary.json",
                 "policy.json", "per_query.jsonl", "matrix.jsonl", "loop/loop.json"):
        assert (demo_out / name).is_file(), name
    summary = json.loads((demo_out / "summary.json").read_text())
    assert summary["preset"] == "tiny"
    assert summary["summary"].startswith("On ")
    assert summary["seconds"]["total"] > 0
    tasks = {m["task"] for m in summary["meets_tau"]}
    assert len(tasks) == 6
    assert all(0.0 <= m["meets_tau"] <= 1.0 for m in summary["meets_tau"])


def test_the_loops_pool_is_answered_by_the_top_tier_only(demo_out: Path) -> None:
    """The pool (workload train rows, never in the matrix) holds one answer per row, from the
    task's top tier; no cheap tier was paid for it."""
    pool = read_matrix(demo_out / "pool.jsonl")
    matrix_ids = {r.id for r in read_matrix(demo_out / "matrix.jsonl")}
    assert len(pool) == 12 * 6 and not {r.id for r in pool} & matrix_ids
    assert all(set(r.outcomes) == {"T4"} for r in pool)
    assert json.loads((demo_out / "summary.json").read_text())["seconds"]["pool"] >= 0


def test_always_top_costs_one_and_ratios_are_against_it(demo_out: Path) -> None:
    for name in ("results.json", "results_before.json"):
        res = json.loads((demo_out / name).read_text())
        top = res["tiers"][-1]
        assert res["reference"] == f"always-{top}"
        always_top = res["systems"][f"always-{top}"]
        assert always_top["cost_ratio"] == pytest.approx(1.0)
        assert always_top["quality_ratio"] == pytest.approx(1.0)
        for sys_name, m in res["systems"].items():
            assert 0.0 <= m["cost_ratio"] <= 1.0 + 1e-9 or sys_name.startswith("routenlp-all"), sys_name


def test_cascade_costs_include_every_tier_tried(demo_out: Path) -> None:
    matrix = _served_matrix(demo_out)
    rows = [json.loads(x) for x in (demo_out / "per_query.jsonl").read_text().splitlines()]
    served = [r for r in rows if r["system"] == "routenlp"]
    assert served and len(served) == len(matrix)
    escalated = 0
    for r in served:
        m = matrix[r["id"]]
        tried = r["tiers_tried"]
        assert tried[-1] == r["served_tier"]
        expected = sum(m.outcomes[t].cost or 0.0 for t in tried)
        assert r["cost"] == pytest.approx(expected, rel=1e-6, abs=1e-12), (r["id"], tried)
        escalated += len(tried) > 1
    # automix / frugalgpt cascades: same accounting
    for r in (x for x in rows if x["system"] == "frugalgpt"):
        m = matrix[r["id"]]
        assert r["cost"] == pytest.approx(sum(m.outcomes[t].cost or 0.0 for t in r["tiers_tried"]), rel=1e-6, abs=1e-12)


def test_rounds_json_has_both_strategies(demo_out: Path) -> None:
    rounds = json.loads((demo_out / "rounds.json").read_text())
    assert rounds[0]["strategy"] == "baseline" and rounds[0]["round"] == 0
    assert {r["strategy"] for r in rounds[1:]} == {"targeted", "random"}
    for r in rounds:
        assert r["status"] in ("accepted", "rejected", "stopped")
        assert r["quality_ratio"] is None or math.isfinite(r["quality_ratio"])


def test_loop_change_is_paired_and_matches_both_tables(demo_out: Path) -> None:
    """When a round was promoted, results.json carries its paired before/after change, and
    its before/after values are the two evaluations' own numbers."""
    after = json.loads((demo_out / "results.json").read_text())
    before = json.loads((demo_out / "results_before.json").read_text())
    serving = json.loads((demo_out / "loop" / "serving.json").read_text())
    change = after.get("loop_change")
    if serving.get("round", 0) == 0:
        assert change is None
        return
    assert change is not None and change["n_test"] == after["n_test"] == before["n_test"]
    m = change["metrics"]
    for key in ("cost_ratio", "quality_ratio"):
        assert m[key]["before"] == pytest.approx(before["systems"]["routenlp"][key])
        assert m[key]["after"] == pytest.approx(after["systems"]["routenlp"][key])
        assert m[key]["diff"] == pytest.approx(m[key]["after"] - m[key]["before"])
        lo, hi = m[key]["ci"]
        assert lo is not None and hi is not None and lo <= hi
        assert m[key]["excludes_zero"] == (lo > 0 or hi < 0)
    q97 = "cost_ratio_at_quality_0.97"
    for side, doc in (("before", before), ("after", after)):
        assert m[q97][side] == (pytest.approx(doc["matched"]["routenlp"][q97])
                                if doc["matched"]["routenlp"][q97] is not None else None)
    # every strategy's last accepted round, paired against the same before; the promoted first
    rounds = change["rounds"]
    assert rounds[0]["promoted"] and rounds[0]["metrics"] == m
    assert serving["strategy"] == rounds[0]["strategy"]
    for r in rounds[1:]:
        assert not r["promoted"] and r["strategy"] != rounds[0]["strategy"]
        assert r["metrics"][q97]["before"] == m[q97]["before"]
        assert r["metrics"]["cost_ratio"]["before"] == pytest.approx(m["cost_ratio"]["before"])
    page = (demo_out / "report.html").read_text()
    assert "What the rounds changed" in page and f"{rounds[0]['strategy']} round" in page


def test_report_references_every_plot(demo_out: Path) -> None:
    from routenlp.report import referenced_images

    html = (demo_out / "report.html").read_text()
    assert "Closed loop" in html and "simulated frontier" in html
    refs = referenced_images(demo_out / "report.html")
    assert refs, "the report references no plot"
    assert all(p.is_file() for p in refs)
    written = sorted((demo_out / "plots").glob("*.png"))
    assert sorted(p.resolve() for p in refs) == [p.resolve() for p in written]


def test_report_renders_non_blank_in_headless_chromium(demo_out: Path, tmp_path: Path) -> None:
    from routenlp.errors import RouteNLPError
    from routenlp.report import find_chromium, nonblank, screenshot

    try:
        find_chromium()
    except RouteNLPError as err:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no chromium ({err}); `make setup-browser` installs Debian's package")
    png = screenshot(demo_out / "report.html", tmp_path / "report.png")
    assert nonblank(png) > 0.02
