"""Evaluation reports: matplotlib plots, an HTML file, and a headless-Chromium screenshot check."""

from routenlp.report.html import referenced_images, render_html, write_html
from routenlp.report.screenshot import content_height, find_chromium, nonblank, screenshot

__all__ = ["content_height", "find_chromium", "nonblank", "referenced_images", "render_html", "screenshot",
           "write_html"]
