"""Evaluation reports: matplotlib plots and an HTML file (plots also as PNG files)."""

from routenlp.report.html import referenced_images, render_html, write_html

__all__ = ["referenced_images", "render_html", "write_html"]
