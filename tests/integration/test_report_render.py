"""The written report as a real browser draws it: headless Chromium screenshots a
synthetic report (every section, plots as files under plots/) and the picture must show
content down the page, not a blank or broken page. Needs Debian's chromium
(`make setup-browser`); skips without it, fails under CI=true."""

from __future__ import annotations

from pathlib import Path

from conftest import need
from report_samples import cluster_report, gains, loop_doc, results

from routenlp.errors import BrowserError
from routenlp.report import content_height, find_chromium, nonblank, referenced_images, screenshot, write_html

WIDTH, HEIGHT = 1280, 2400


def _chromium() -> str:
    try:
        return find_chromium()
    except BrowserError as err:
        need(False, f"headless Chromium ({err.message}; `make setup-browser`)")
        raise AssertionError("unreachable") from err


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    _chromium()
    page = write_html(results(), tmp_path / "report.html", summary="Routing kept quality and cut cost by 76%.",
                      loop=loop_doc(), clusters=cluster_report(), gains=gains())
    assert all(p.is_file() for p in referenced_images(page))
    png = screenshot(page, tmp_path / "shot.png", width=WIDTH, height=HEIGHT)
    from matplotlib import image

    assert image.imread(png).shape[:2] == (HEIGHT, WIDTH)
    assert nonblank(png) > 0.02, f"only {nonblank(png):.2%} of {png} differs from the background"
    # the tables and the plots (loaded from plots/) run well down the page
    assert content_height(png) > HEIGHT // 2


def test_a_blank_page_reads_as_blank(tmp_path: Path) -> None:
    _chromium()
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><body></body></html>")
    png = screenshot(blank, tmp_path / "blank.png", width=400, height=300)
    assert nonblank(png) < 0.001 and content_height(png) == 0
