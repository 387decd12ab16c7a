"""Evaluation reports: matplotlib plots and a self-contained HTML file."""

from routenlp.report.html import render_html, write_html

__all__ = ["render_html", "write_html"]
