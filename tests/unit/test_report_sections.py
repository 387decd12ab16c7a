"""The HTML report's summary, closed-loop and failure-cluster sections, escaping, the
"not run" fallbacks, and the plots written beside the HTML file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from report_samples import cluster_report, gains, loop_doc, results

from routenlp.errors import BrowserError, DataError
from routenlp.report import find_chromium, nonblank, referenced_images, render_html, screenshot, write_html
from routenlp.report.html import PLOT_FILES, clusters_html, loop_html


def _section(page: str, heading: str) -> str:
    """The page text from <h2>heading</h2> to the next <h2>."""
    start = page.index(f"<h2>{heading}</h2>")
    end = page.find("<h2>", start + 1)
    return page[start:end if end > 0 else None]


def test_all_sections_render() -> None:
    page = render_html(results(), summary="Routing saved 76% of the cost.\n\nSecond paragraph.",
                       loop=loop_doc(), clusters=cluster_report(), gains=gains())
    assert page.index("<h2>Summary</h2>") < page.index("<h2>Systems</h2>")
    assert page.count('<p class="summary">') == 2
    loop = _section(page, "Closed loop")
    assert loop.count("<tr") == 1 + 5  # header + baseline, 2 targeted, 2 random
    assert "0.240" in loop and "T2 48" in loop and "42.5" in loop  # test cost ratio, distilled, seconds
    assert '<tr class="rejected">' in loop and "below the target" in loop
    assert "cost-ratio gain 0.0020" in loop  # an accepted round that stopped the chain says why
    assert 'alt="cost and quality ratio per loop round" src="data:image/png;base64,' in loop
    cl = _section(page, "Failure clusters")
    assert cl.count("<tr>") == 1 + 3
    assert "60.0%" in cl and "T1 12, T2 7" in cl  # share of failures, failing tiers
    assert "0.410 → 0.630 (+0.220), n 9" in cl and "(-0.020)" in cl
    assert "fourth query" not in cl  # at most three examples
    assert "not run" not in page


def test_text_is_escaped() -> None:
    page = render_html(results(), title="A <b>title</b>", summary="cost < 1 & <i>quality</i>",
                       loop=loop_doc(), clusters=cluster_report())
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "A &lt;b&gt;title&lt;/b&gt;" in page and "cost &lt; 1 &amp; &lt;i&gt;quality&lt;/i&gt;" in page
    assert "RouteNLP evaluation: synthetic &lt;matrix&gt;" in render_html(results())
    assert "0.9700 &lt;b&gt;&amp;" in page  # a rejection reason is text, not markup


def test_long_examples_are_cut() -> None:
    cl = clusters_html(cluster_report())
    cell = re.search(r"How many widgets[^<]*", cl)
    assert cell and cell.group(0).endswith("…") and len(cell.group(0)) <= 90
    assert "No per-cluster gains given" in cl


def test_missing_sections_say_not_run() -> None:
    page = render_html(results())
    assert "<h2>Summary</h2>" not in page
    assert "<h2>Closed loop</h2>" + '<p class="note">not run.</p>' in page
    assert "<h2>Failure clusters</h2>" + '<p class="note">not run.</p>' in page
    page = render_html(results(), summary="  ", loop={"rounds": []}, clusters={"clusters": []})
    assert page.count("not run.") == 2 and "<h2>Summary</h2>" not in page
    assert "not run." in loop_html({"primary": "targeted"}, lambda _s, _p: "")
    assert "not run." in clusters_html({"n_failures": 0}, gains())


def test_a_baseline_only_loop_renders() -> None:
    doc = {"primary": "targeted", "target_quality": 0.97, "rounds": loop_doc()["rounds"][:1]}
    sec = _section(render_html(results(), loop=doc), "Closed loop")
    assert sec.count("<tr") == 2 and "src=\"data:image/png;base64," in sec


def test_write_html_writes_plot_files(tmp_path: Path) -> None:
    out = write_html(results(), tmp_path / "report" / "index.html", loop=loop_doc(), clusters=cluster_report(),
                     gains=gains(), summary="s")
    page = out.read_text()
    assert "data:image/png" not in page
    refs = referenced_images(out)
    plots = sorted((out.parent / "plots").glob("*.png"))
    assert sorted(refs) == plots and len(plots) == len(PLOT_FILES)
    assert [r.relative_to(out.parent).as_posix() for r in refs] == [f"plots/{s}.png" for s in PLOT_FILES]
    for p in plots:
        assert p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_write_html_drops_stale_plots(tmp_path: Path) -> None:
    write_html(results(), tmp_path / "r.html", loop=loop_doc())
    assert (tmp_path / "plots" / "loop_rounds.png").is_file()
    res = results()
    res["latency_quantiles_ms"] = {}
    out = write_html(res, tmp_path / "r.html")  # no loop, no latency this time
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == ["cost_quality.png", "tier_shares.png"]
    assert sorted(referenced_images(out)) == sorted((tmp_path / "plots").glob("*.png"))
    assert "latency CDF: not available." in out.read_text()


def test_referenced_images_skips_inline_and_remote(tmp_path: Path) -> None:
    page = tmp_path / "p.html"
    page.write_text('<p><img src="data:image/png;base64,AAAA"><IMG alt="x" SRC="a/b.png">'
                    '<img src="https://example.org/c.png"><img alt="no src"></p>')
    assert referenced_images(page) == [tmp_path / "a" / "b.png"]


def test_no_browser_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "p.html"
    page.write_text("<p>x</p>")
    monkeypatch.setenv("ROUTENLP_CHROMIUM", str(tmp_path / "no-such-chromium"))
    with pytest.raises(BrowserError, match="ROUTENLP_CHROMIUM") as err:
        screenshot(page, tmp_path / "p.png")
    assert "make setup-browser" in str(err.value)
    monkeypatch.delenv("ROUTENLP_CHROMIUM")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(BrowserError, match="no headless browser found"):
        find_chromium()


def test_chromium_override_and_missing_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "my-chrome"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("ROUTENLP_CHROMIUM", str(fake))
    assert find_chromium() == str(fake)
    page = tmp_path / "p.html"
    page.write_text("<p>x</p>")
    with pytest.raises(BrowserError, match="exited 3 without writing"):
        screenshot(page, tmp_path / "p.png")
    with pytest.raises(DataError, match="no HTML file"):
        screenshot(tmp_path / "missing.html", tmp_path / "p.png")


def test_nonblank_counts_pixels_off_the_background(tmp_path: Path) -> None:
    import numpy as np
    from matplotlib import image

    from routenlp.report import content_height

    img = np.ones((100, 50, 3))
    img[10:20, :25] = [0.2, 0.4, 0.6]  # 250 of 5000 pixels
    image.imsave(tmp_path / "p.png", img)
    assert nonblank(tmp_path / "p.png") == pytest.approx(0.05)
    assert content_height(tmp_path / "p.png") == 20
    image.imsave(tmp_path / "w.png", np.ones((10, 10, 3)))
    assert nonblank(tmp_path / "w.png") == 0.0 and content_height(tmp_path / "w.png") == 0



def test_change_html_puts_the_ablation_beside_the_promoted_round() -> None:
    from routenlp.report.html import change_html

    def metrics(diff: float, lo: float, hi: float) -> dict[str, object]:
        return {"cost_ratio_at_quality_0.97": {"before": 0.42, "after": 0.42 + diff, "diff": diff,
                                               "ci": [lo, hi], "excludes_zero": hi < 0 or lo > 0}}

    change = {"system": "routenlp", "n_test": 60, "paired_resamples": 1000, "metrics": metrics(-0.02, -0.15, 0.03),
              "rounds": [{"strategy": "targeted", "round": 1, "promoted": True, "metrics": metrics(-0.02, -0.15, 0.03)},
                         {"strategy": "random", "round": 1, "promoted": False, "metrics": metrics(-0.05, -0.11, -0.01)}]}
    page = change_html(change)
    assert "targeted round 1 (promoted): after" in page and "random round 1: after" in page
    assert page.count("<tr>") == 2  # header + the one metric both rounds have
    assert page.count('class="sig"') == 2  # the random change (excludes 0) and the legend
    legacy = change_html({"system": "routenlp", "n_test": 60, "metrics": metrics(-0.02, -0.15, 0.03)})
    assert "What the rounds changed" in legacy and "0.420" in legacy
    assert change_html(None) == "" and change_html({"metrics": {}}) == ""
